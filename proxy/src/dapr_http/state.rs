//! The state API filter: `/v1.0/state/{store}…` answered here, against the store the
//! snapshot names. Every request is parsed and checked in full before the store is asked, so
//! a malformed save or transaction is refused (400) with nothing written.
//!
//! Status codes follow daprd: 200 with the value and `ETag`, 204 for a missing key or an empty
//! success, 409 for an ETag mismatch, 400 for malformed input, an invalid ETag or an unknown
//! store, 500 `ERR_STATE_*` naming the store when the backend fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use outrigger_state::{
    Concurrency, DeleteRequest, Operation, Precondition, SetRequest, StateEntry, StateError, Ttl,
};
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::target::{StateCall, StateOp};
use super::Answer;
use crate::components::StateComponent;
use crate::errors::{self, ApiError, ERR_MALFORMED_REQUEST};
use crate::sidecar::Sidecar;

const ERR_STATE_GET: &str = "ERR_STATE_GET";
const ERR_STATE_SAVE: &str = "ERR_STATE_SAVE";
const ERR_STATE_DELETE: &str = "ERR_STATE_DELETE";
const ERR_STATE_BULK_GET: &str = "ERR_STATE_BULK_GET";
const ERR_STATE_TRANSACTION: &str = "ERR_STATE_TRANSACTION";
const ERR_STATE_STORE_NOT_FOUND: &str = "ERR_STATE_STORE_NOT_FOUND";
const ERR_STATE_STORES_NOT_CONFIGURED: &str = "ERR_STATE_STORES_NOT_CONFIGURED";
const ERR_NOT_SUPPORTED_STATE_OPERATION: &str = "ERR_NOT_SUPPORTED_STATE_OPERATION";

/// The parts of the request the state API reads; the body is read only when the call has one.
pub(super) struct StateRequest<'a> {
    pub(super) query: Option<&'a str>,
    pub(super) if_match: Option<&'a str>,
}

/// Which store a call is for, before anything else is read: unknown store → 400, no state
/// store at all → 500 (as daprd answers).
pub(super) fn store_for(
    sidecar: &Sidecar,
    call: &StateCall,
) -> Result<Arc<StateComponent>, ApiError> {
    let active = sidecar.active();
    if let Some(store) = active.state_stores.get(&call.store) {
        return Ok(store.clone());
    }
    if active.state_stores.is_empty() {
        return Err(ApiError::new(
            500,
            ERR_STATE_STORES_NOT_CONFIGURED,
            "state store is not configured",
        ));
    }
    Err(ApiError::new(
        400,
        ERR_STATE_STORE_NOT_FOUND,
        format!("state store {} is not found", call.store),
    ))
}

/// Whether the call reads a request body (save, bulk get, transaction).
pub(super) fn takes_body(op: &StateOp) -> bool {
    matches!(op, StateOp::Save | StateOp::BulkGet | StateOp::Transaction)
}

pub(super) async fn serve(
    store: &StateComponent,
    op: StateOp,
    request: StateRequest<'_>,
    body: Bytes,
) -> Result<Answer, ApiError> {
    let query = Query::parse(request.query)?;
    match op {
        StateOp::Get(key) => get(store, &decode_key(&key)?).await,
        StateOp::Delete(key) => {
            let key = decode_key(&key)?;
            let concurrency = Concurrency::parse(&query.concurrency).map_err(malformed)?;
            let precondition = delete_precondition(request.if_match, concurrency).map_err(|e| {
                state_error(store, e, ERR_STATE_DELETE, delete_context(store, &key))
            })?;
            let delete = DeleteRequest {
                key: store.opened.key_prefix.storage_key(&key),
                precondition,
            };
            store.opened.store.delete(delete).await.map_err(|e| {
                state_error(store, e, ERR_STATE_DELETE, delete_context(store, &key))
            })?;
            Ok(Answer::NoContent)
        }
        StateOp::Save => {
            let items: Vec<SaveItem> = parse_json(&body)?;
            let context = || format!("failed saving state in state store {}", store.name());
            let mut requests = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                requests.push(
                    item.into_set(store, &format!("[{i}]"))
                        .map_err(|e| e.into_api(store, ERR_STATE_SAVE, context()))?,
                );
            }
            for request in requests {
                store
                    .opened
                    .store
                    .set(request)
                    .await
                    .map_err(|e| state_error(store, e, ERR_STATE_SAVE, context()))?;
            }
            Ok(Answer::NoContent)
        }
        StateOp::BulkGet => bulk_get(store, parse_json(&body)?).await,
        StateOp::Transaction => {
            let tx: TransactionBody = parse_json(&body)?;
            let context = || {
                format!(
                    "error while executing state transaction in state store {}",
                    store.name()
                )
            };
            let mut operations = Vec::with_capacity(tx.operations.len());
            for (i, op) in tx.operations.into_iter().enumerate() {
                let at = format!("operations[{i}]");
                let item = op.request.ok_or_else(|| {
                    malformed(format!(
                        "{at}.request: required (the item to upsert or delete)"
                    ))
                })?;
                let operation = match op.operation.as_str() {
                    "upsert" => item.into_set(store, &format!("{at}.request")).map(Operation::Set),
                    "delete" => item.into_delete(store, &format!("{at}.request")).map(Operation::Delete),
                    other => {
                        return Err(ApiError::new(
                            400,
                            ERR_NOT_SUPPORTED_STATE_OPERATION,
                            format!("{at}.operation: {other:?} is not supported; use \"upsert\" or \"delete\""),
                        ))
                    }
                };
                operations.push(
                    operation.map_err(|e| e.into_api(store, ERR_STATE_TRANSACTION, context()))?,
                );
            }
            store
                .opened
                .store
                .transact(operations)
                .await
                .map_err(|e| state_error(store, e, ERR_STATE_TRANSACTION, context()))?;
            Ok(Answer::NoContent)
        }
        StateOp::MethodNotAllowed(allowed) => Err(ApiError::new(
            405,
            ERR_MALFORMED_REQUEST,
            format!("this state API path takes {allowed}"),
        )),
    }
}

async fn get(store: &StateComponent, key: &str) -> Result<Answer, ApiError> {
    let entry = store
        .opened
        .store
        .get(&store.opened.key_prefix.storage_key(key))
        .await
        .map_err(|e| {
            state_error(
                store,
                e,
                ERR_STATE_GET,
                format!("fail to get {key} from state store {}", store.name()),
            )
        })?;
    Ok(match entry {
        Some(entry) => Answer::State(entry),
        None => Answer::NoContent,
    })
}

async fn bulk_get(store: &StateComponent, body: BulkBody) -> Result<Answer, ApiError> {
    for (i, key) in body.keys.iter().enumerate() {
        check_key(key).map_err(|e| malformed(format!("keys[{i}]: {e}")))?;
    }
    let storage_keys: Vec<String> = body
        .keys
        .iter()
        .map(|k| store.opened.key_prefix.storage_key(k))
        .collect();
    let entries = store
        .opened
        .store
        .bulk_get(&storage_keys)
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
    let items: Vec<serde_json::Value> = body
        .keys
        .iter()
        .zip(entries)
        .map(|(key, entry)| {
            let mut item = serde_json::json!({ "key": key });
            if let Some(entry) = entry {
                item["data"] = json_or_text(&entry.value);
                item["etag"] = entry.etag.into();
                if let Some(at) = entry.expires_at {
                    item["metadata"] = serde_json::json!({
                        "ttlExpireTime": humantime::format_rfc3339_seconds(at).to_string()
                    });
                }
            }
            item
        })
        .collect();
    Ok(Answer::Json(Bytes::from(
        serde_json::Value::from(items).to_string(),
    )))
}

/// A stored value inside a JSON answer: as JSON when it is JSON, else as a string.
fn json_or_text(value: &[u8]) -> serde_json::Value {
    serde_json::from_slice(value)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(value).into_owned()))
}

/// Answers a `GET` of a found item: the bytes as saved, the ETag, and the expiry.
pub(super) async fn send_found(session: &mut Session, entry: StateEntry) -> pingora::Result<()> {
    let content_type = match serde_json::from_slice::<serde::de::IgnoredAny>(&entry.value) {
        Ok(_) => "application/json",
        Err(_) => "application/octet-stream",
    };
    let expiry = entry
        .expires_at
        .map(|at| humantime::format_rfc3339_seconds(at).to_string());
    let mut headers = [
        ("content-type", content_type),
        ("etag", entry.etag.as_str()),
        ("metadata.ttlexpiretime", ""),
    ];
    let count = match &expiry {
        Some(expiry) => {
            headers[2].1 = expiry.as_str();
            3
        }
        None => 2,
    };
    errors::send_body(session, &headers[..count], entry.value).await
}

// === request bodies ===

#[derive(Deserialize)]
struct SaveItem {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: BTreeMap<String, Scalar>,
    #[serde(default)]
    options: Option<ItemOptions>,
}

#[derive(Deserialize)]
struct ItemOptions {
    #[serde(default)]
    concurrency: Option<String>,
    #[serde(default)]
    consistency: Option<String>,
}

#[derive(Deserialize)]
struct BulkBody {
    keys: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // Accepted as daprd does; every store here reads the keys in one call.
    parallelism: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[allow(dead_code)] // Accepted for compatibility; no store here reads bulk metadata.
    metadata: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
struct TransactionBody {
    #[serde(default, deserialize_with = "null_as_default")]
    operations: Vec<TransactionOperation>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[allow(dead_code)]
    // Accepted for compatibility; no store here reads transaction metadata.
    metadata: BTreeMap<String, Scalar>,
}

#[derive(Deserialize)]
struct TransactionOperation {
    operation: String,
    #[serde(default)]
    request: Option<SaveItem>,
}

/// The SDKs send `null` for an absent map or list (the JS SDK's `"metadata": null`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Metadata values: Dapr's are strings, but clients send numbers, booleans and nulls too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
    Null,
}

impl Scalar {
    /// The value as text; `None` for `null` (as if the entry were absent).
    fn text(&self) -> Option<String> {
        match self {
            Scalar::Text(t) => Some(t.clone()),
            Scalar::Number(n) => Some(n.to_string()),
            Scalar::Bool(b) => Some(b.to_string()),
            Scalar::Null => None,
        }
    }
}

/// A problem with one item, before it is known which call's error code it belongs under.
enum ItemError {
    Malformed(String),
    Store(StateError),
}

impl ItemError {
    fn into_api(self, store: &StateComponent, code: &'static str, context: String) -> ApiError {
        match self {
            ItemError::Malformed(message) => malformed(message),
            ItemError::Store(e) => state_error(store, e, code, context),
        }
    }
}

impl SaveItem {
    fn key(&self, at: &str) -> Result<&str, ItemError> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| ItemError::Malformed(format!("{at}.key: required")))?;
        check_key(key).map_err(|e| ItemError::Malformed(format!("{at}.key: {e}")))?;
        Ok(key)
    }

    fn concurrency(&self, at: &str) -> Result<Concurrency, ItemError> {
        let options = self.options.as_ref();
        if let Some(consistency) = options.and_then(|o| o.consistency.as_deref()) {
            check_consistency(consistency)
                .map_err(|e| ItemError::Malformed(format!("{at}.options.consistency: {e}")))?;
        }
        Concurrency::parse(options.and_then(|o| o.concurrency.as_deref()).unwrap_or(""))
            .map_err(|e| ItemError::Malformed(format!("{at}.options.concurrency: {e}")))
    }

    fn into_set(self, store: &StateComponent, at: &str) -> Result<SetRequest, ItemError> {
        let key = self.key(at)?;
        let concurrency = self.concurrency(at)?;
        let precondition = Precondition::from_request(self.etag.as_deref(), concurrency)
            .map_err(ItemError::Store)?;
        let ttl = match self.metadata.get("ttlInSeconds").and_then(Scalar::text) {
            Some(ttl) => Ttl::parse(&ttl).map_err(|e| ItemError::Malformed(format!("{at}.{e}")))?,
            None => Ttl::Never,
        };
        let value = match &self.value {
            Some(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
            None => Bytes::from_static(b"null"),
        };
        Ok(SetRequest {
            key: store.opened.key_prefix.storage_key(key),
            value,
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

// === query, keys, errors ===

#[derive(Default)]
struct Query {
    concurrency: String,
}

impl Query {
    /// `consistency` and `concurrency` are checked; `metadata.*` is accepted (no store here
    /// reads request metadata on get or delete).
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut parsed = Query::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            match name {
                "consistency" => check_consistency(&value)
                    .map_err(|e| malformed(format!("query consistency: {e}")))?,
                "concurrency" => parsed.concurrency = value.into_owned(),
                _ => {}
            }
        }
        Ok(parsed)
    }
}

fn check_consistency(value: &str) -> Result<(), String> {
    match value {
        "" | "strong" | "eventual" => Ok(()),
        other => Err(format!(
            "unknown consistency {other:?}; expected \"strong\" or \"eventual\""
        )),
    }
}

/// A key from the URL, percent-decoded.
fn decode_key(raw: &str) -> Result<String, ApiError> {
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| malformed(format!("key {raw:?} is not UTF-8 once percent-decoded")))?;
    check_key(&key).map_err(malformed)?;
    Ok(key.into_owned())
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

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            malformed(format!("request body is not valid: {inner}"))
        } else {
            malformed(format!("request body is not valid at {path}: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| malformed(format!("request body is not valid: {e}")))?;
    Ok(value)
}

fn malformed(message: impl Into<String>) -> ApiError {
    ApiError::new(400, ERR_MALFORMED_REQUEST, message)
}

fn delete_context(store: &StateComponent, key: &str) -> String {
    format!(
        "failed deleting state with key {key} in state store {}",
        store.name()
    )
}

/// 409 for an ETag mismatch, 400 for an invalid ETag, 500 for a backend failure. A mismatch
/// names the key as the app knows it, without the backend's prefix.
fn state_error(
    store: &StateComponent,
    e: StateError,
    code: &'static str,
    context: String,
) -> ApiError {
    let (status, e) = match e {
        StateError::EtagMismatch { key, detail } => {
            let prefix = store.opened.key_prefix.storage_key("");
            let key = key.strip_prefix(&prefix).map(str::to_string).unwrap_or(key);
            (409, StateError::EtagMismatch { key, detail })
        }
        e @ StateError::InvalidEtag { .. } => (400, e),
        e @ StateError::Backend(_) => (500, e),
    };
    ApiError::new(status, code, format!("{context}: {e}"))
}
