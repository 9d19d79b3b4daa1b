//! The state building block: get, save, delete, bulk get and transactions against the store a
//! snapshot names, with Dapr's ETag, concurrency and TTL rules. Every request is checked in
//! full before the store is asked, so a malformed save or transaction writes nothing.
//!
//! Status codes follow daprd: 409 for an ETag mismatch, 400 for malformed input, an invalid
//! ETag or an unknown store, 500 `ERR_STATE_*` naming the store when the backend fails.

use std::sync::Arc;

use bytes::Bytes;
use outrigger_state::{
    Concurrency, DeleteRequest, Operation, Precondition, SetRequest, StateEntry, StateError, Ttl,
};

use super::BlockError;
use crate::components::StateComponent;
use crate::shared::Shared;

pub(crate) const ERR_STATE_GET: &str = "ERR_STATE_GET";
pub(crate) const ERR_STATE_SAVE: &str = "ERR_STATE_SAVE";
pub(crate) const ERR_STATE_DELETE: &str = "ERR_STATE_DELETE";
pub(crate) const ERR_STATE_BULK_GET: &str = "ERR_STATE_BULK_GET";
pub(crate) const ERR_STATE_TRANSACTION: &str = "ERR_STATE_TRANSACTION";
const ERR_STATE_STORE_NOT_FOUND: &str = "ERR_STATE_STORE_NOT_FOUND";
const ERR_STATE_STORES_NOT_CONFIGURED: &str = "ERR_STATE_STORES_NOT_CONFIGURED";
pub(crate) const ERR_NOT_SUPPORTED_STATE_OPERATION: &str = "ERR_NOT_SUPPORTED_STATE_OPERATION";

/// Items one save, bulk get or transaction may carry.
pub(crate) const MAX_ITEMS: usize = 10_000;
/// Keys a bulk get asks the store for at a time, so that an answer over its limit is noticed
/// before it is all in memory.
const BULK_BATCH: usize = 100;
/// What an answer's framing costs per item beyond its key and value (JSON punctuation, the
/// ETag, an expiry), for the bulk-get size bound.
const BULK_ITEM_OVERHEAD: usize = 96;

/// One item to save (or, in a transaction, to delete), as the app sent it.
#[derive(Debug, Default)]
pub(crate) struct Item {
    pub(crate) key: Option<String>,
    /// The value's bytes as stored (a JSON text over HTTP).
    pub(crate) value: Option<Bytes>,
    pub(crate) etag: Option<String>,
    pub(crate) concurrency: Option<String>,
    pub(crate) consistency: Option<String>,
    pub(crate) ttl_in_seconds: Option<String>,
}

/// One operation of a transaction.
#[derive(Debug)]
pub(crate) struct TxOperation {
    /// `upsert` or `delete`.
    pub(crate) operation: String,
    pub(crate) request: Option<Item>,
}

/// Which store a call is for: unknown store → 400, no state store at all → 500 (as daprd).
pub(crate) fn store(shared: &Shared, name: &str) -> Result<Arc<StateComponent>, BlockError> {
    let active = shared.config.load();
    if let Some(store) = active.state_stores.get(name) {
        return Ok(store.clone());
    }
    if active.state_stores.is_empty() {
        return Err(BlockError::new(
            500,
            ERR_STATE_STORES_NOT_CONFIGURED,
            "state store is not configured",
        ));
    }
    Err(BlockError::new(
        400,
        ERR_STATE_STORE_NOT_FOUND,
        format!("state store {name} is not found"),
    ))
}

pub(crate) async fn get(
    store: &StateComponent,
    key: &str,
) -> Result<Option<StateEntry>, BlockError> {
    check_key(key).map_err(BlockError::malformed)?;
    let storage_key = store.opened.key_prefix.storage_key(key);
    store
        .guarded(|| store.opened.store.get(&storage_key))
        .await
        .map_err(|e| {
            state_error(
                store,
                e,
                ERR_STATE_GET,
                format!("fail to get {key} from state store {}", store.name()),
            )
        })
}

/// Deletes `key`, checking `etag` as `concurrency` says.
pub(crate) async fn delete(
    store: &StateComponent,
    key: &str,
    etag: Option<&str>,
    concurrency: &str,
) -> Result<(), BlockError> {
    check_key(key).map_err(BlockError::malformed)?;
    let concurrency = Concurrency::parse(concurrency).map_err(BlockError::malformed)?;
    let context = || {
        format!(
            "failed deleting state with key {key} in state store {}",
            store.name()
        )
    };
    let precondition = delete_precondition(etag, concurrency)
        .map_err(|e| state_error(store, e, ERR_STATE_DELETE, context()))?;
    let delete = DeleteRequest {
        key: store.opened.key_prefix.storage_key(key),
        precondition,
    };
    store
        .guarded(|| store.opened.store.delete(delete.clone()))
        .await
        .map_err(|e| state_error(store, e, ERR_STATE_DELETE, context()))
}

/// Saves every item, in order (not atomically, as daprd), after checking them all.
pub(crate) async fn save(store: &StateComponent, items: Vec<Item>) -> Result<(), BlockError> {
    check_count("a save", "items", items.len())?;
    let context = || format!("failed saving state in state store {}", store.name());
    let mut requests = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        requests.push(
            item.into_set(store, &format!("[{i}]"))
                .map_err(|e| e.into_block(store, ERR_STATE_SAVE, context()))?,
        );
    }
    for request in requests {
        store
            .guarded(|| store.opened.store.set(request.clone()))
            .await
            .map_err(|e| state_error(store, e, ERR_STATE_SAVE, context()))?;
    }
    Ok(())
}

/// Reads `keys`, each distinct key once (a repeated key is the same item): the distinct keys
/// in the order first asked for, each with its entry (`None` when missing). The answer is
/// bounded: once the items read exceed `max_bytes` the call stops and answers 413 naming the
/// limit, without reading the rest.
pub(crate) async fn bulk_get(
    store: &StateComponent,
    keys: &[String],
    max_bytes: usize,
) -> Result<Vec<(String, Option<StateEntry>)>, BlockError> {
    check_count("a bulk get", "keys", keys.len())?;
    for (i, key) in keys.iter().enumerate() {
        check_key(key).map_err(|e| BlockError::malformed(format!("keys[{i}]: {e}")))?;
    }
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    let distinct: Vec<&String> = keys.iter().filter(|k| seen.insert(k.as_str())).collect();
    let mut out = Vec::with_capacity(distinct.len());
    let mut size = 2;
    for batch in distinct.chunks(BULK_BATCH) {
        let storage_keys: Vec<String> = batch
            .iter()
            .map(|k| store.opened.key_prefix.storage_key(k))
            .collect();
        let entries = store
            .guarded(|| store.opened.store.bulk_get(&storage_keys))
            .await
            .map_err(|e| {
                state_error(
                    store,
                    e,
                    ERR_STATE_BULK_GET,
                    format!(
                        "failed getting state in bulk from state store {}",
                        store.name()
                    ),
                )
            })?;
        for (key, entry) in batch.iter().zip(entries) {
            size += key.len() + BULK_ITEM_OVERHEAD + entry.as_ref().map_or(0, |e| e.value.len());
            if size > max_bytes {
                return Err(BlockError::new(
                    413,
                    ERR_STATE_BULK_GET,
                    format!(
                        "the bulk answer would be larger than the {max_bytes}-byte limit (--max-body-size); ask for fewer or smaller items"
                    ),
                ));
            }
            out.push(((*key).clone(), entry));
        }
    }
    Ok(out)
}

fn check_count(call: &str, what: &str, count: usize) -> Result<(), BlockError> {
    if count > MAX_ITEMS {
        return Err(BlockError::malformed(format!(
            "{call} takes at most {MAX_ITEMS} {what}; this one has {count}"
        )));
    }
    Ok(())
}

/// Applies every operation or none.
pub(crate) async fn transact(
    store: &StateComponent,
    operations: Vec<TxOperation>,
) -> Result<(), BlockError> {
    check_count("a transaction", "operations", operations.len())?;
    let context = || {
        format!(
            "error while executing state transaction in state store {}",
            store.name()
        )
    };
    let mut checked = Vec::with_capacity(operations.len());
    for (i, op) in operations.into_iter().enumerate() {
        let at = format!("operations[{i}]");
        let item = op.request.ok_or_else(|| {
            BlockError::malformed(format!(
                "{at}.request: required (the item to upsert or delete)"
            ))
        })?;
        let operation = match op.operation.as_str() {
            "upsert" => item
                .into_set(store, &format!("{at}.request"))
                .map(Operation::Set),
            "delete" => item
                .into_delete(store, &format!("{at}.request"))
                .map(Operation::Delete),
            other => {
                return Err(BlockError::new(
                    400,
                    ERR_NOT_SUPPORTED_STATE_OPERATION,
                    format!(
                        "{at}.operation: {other:?} is not supported; use \"upsert\" or \"delete\""
                    ),
                ))
            }
        };
        checked.push(operation.map_err(|e| e.into_block(store, ERR_STATE_TRANSACTION, context()))?);
    }
    store
        .guarded(|| store.opened.store.transact(checked.clone()))
        .await
        .map_err(|e| state_error(store, e, ERR_STATE_TRANSACTION, context()))
}

// === items ===

/// A problem with one item, before it is known which call's error code it belongs under.
enum ItemError {
    Malformed(String),
    Store(StateError),
}

impl ItemError {
    fn into_block(self, store: &StateComponent, code: &'static str, context: String) -> BlockError {
        match self {
            ItemError::Malformed(message) => BlockError::malformed(message),
            ItemError::Store(e) => state_error(store, e, code, context),
        }
    }
}

impl Item {
    fn key(&self, at: &str) -> Result<&str, ItemError> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| ItemError::Malformed(format!("{at}.key: required")))?;
        check_key(key).map_err(|e| ItemError::Malformed(format!("{at}.key: {e}")))?;
        Ok(key)
    }

    fn concurrency(&self, at: &str) -> Result<Concurrency, ItemError> {
        if let Some(consistency) = self.consistency.as_deref() {
            check_consistency(consistency)
                .map_err(|e| ItemError::Malformed(format!("{at}.options.consistency: {e}")))?;
        }
        Concurrency::parse(self.concurrency.as_deref().unwrap_or(""))
            .map_err(|e| ItemError::Malformed(format!("{at}.options.concurrency: {e}")))
    }

    fn into_set(self, store: &StateComponent, at: &str) -> Result<SetRequest, ItemError> {
        let key = self.key(at)?;
        let concurrency = self.concurrency(at)?;
        let precondition = Precondition::from_request(self.etag.as_deref(), concurrency)
            .map_err(ItemError::Store)?;
        let ttl = match &self.ttl_in_seconds {
            Some(ttl) => Ttl::parse(ttl).map_err(|e| ItemError::Malformed(format!("{at}.{e}")))?,
            None => Ttl::Never,
        };
        Ok(SetRequest {
            key: store.opened.key_prefix.storage_key(key),
            value: self.value.unwrap_or_else(|| Bytes::from_static(b"null")),
            precondition,
            ttl,
        })
    }

    fn into_delete(self, store: &StateComponent, at: &str) -> Result<DeleteRequest, ItemError> {
        let key = self.key(at)?;
        let concurrency = self.concurrency(at)?;
        let precondition =
            delete_precondition(self.etag.as_deref(), concurrency).map_err(ItemError::Store)?;
        Ok(DeleteRequest {
            key: store.opened.key_prefix.storage_key(key),
            precondition,
        })
    }
}

/// A delete checks an ETag when one is given; first-write without one deletes regardless (there
/// is nothing to be first to).
fn delete_precondition(
    etag: Option<&str>,
    concurrency: Concurrency,
) -> Result<Precondition, StateError> {
    Ok(match Precondition::from_request(etag, concurrency)? {
        Precondition::Absent => Precondition::None,
        other => other,
    })
}

pub(crate) fn check_consistency(value: &str) -> Result<(), String> {
    match value {
        "" | "strong" | "eventual" => Ok(()),
        other => Err(format!(
            "unknown consistency {other:?}; expected \"strong\" or \"eventual\""
        )),
    }
}

/// Keys are stored as `<appId>||<key>`, so `||` is reserved.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".to_string());
    }
    if key.contains("||") {
        return Err(format!("input key {key:?} can't contain '||'"));
    }
    Ok(())
}

/// 409 for an ETag mismatch, 400 for an invalid ETag, 500 for a backend failure. A mismatch
/// names the key as the app knows it, without the backend's prefix.
fn state_error(
    store: &StateComponent,
    e: StateError,
    code: &'static str,
    context: String,
) -> BlockError {
    let (status, e) = match e {
        StateError::EtagMismatch { key, detail } => {
            let prefix = store.opened.key_prefix.storage_key("");
            let key = key.strip_prefix(&prefix).map(str::to_string).unwrap_or(key);
            (409, StateError::EtagMismatch { key, detail })
        }
        e @ StateError::InvalidEtag { .. } => (400, e),
        e @ StateError::Backend(_) => (500, e),
    };
    BlockError::new(status, code, format!("{context}: {e}"))
}
