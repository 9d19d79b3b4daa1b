//! `/v1.0/state/{store}…` over HTTP: the JSON bodies and query strings of Dapr's state API
//! decoded into the state block's typed calls, and its results encoded back (200 with the
//! value and `ETag`, 204 for a missing key or an empty success).

use std::collections::BTreeMap;

use bytes::Bytes;
use outrigger_state::StateEntry;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::target::{StateCall, StateOp};
use crate::answer::Answer;
use crate::blocks::state::{self, check_consistency, Item, TxOperation};
use crate::blocks::BlockError;
use crate::listeners::Downstream;
use crate::shared::Shared;

pub(super) async fn serve<D: Downstream>(
    shared: &Shared,
    call: StateCall,
    request: &mut D,
) -> Result<Answer, BlockError> {
    // The body is read first so that an error answer leaves the connection usable.
    let body = if takes_body(&call.op) {
        request.read_body(shared.options.max_body_bytes).await?
    } else {
        Bytes::new()
    };
    let store = state::store(shared, &call.store)?;
    let query = Query::parse(request.query())?;
    match call.op {
        StateOp::Get(key) => Ok(match state::get(&store, &decode_key(&key)?).await? {
            Some(entry) => found(entry),
            None => Answer::no_content(),
        }),
        StateOp::Delete(key) => {
            let key = decode_key(&key)?;
            let if_match = request.header_str("if-match");
            state::delete(&store, &key, if_match, &query.concurrency).await?;
            Ok(Answer::no_content())
        }
        StateOp::Save => {
            let items: Vec<SaveItem> = parse_json(&body)?;
            state::save(&store, items.into_iter().map(SaveItem::into_item).collect()).await?;
            Ok(Answer::no_content())
        }
        StateOp::BulkGet => {
            let bulk: BulkBody = parse_json(&body)?;
            let entries = state::bulk_get(&store, &bulk.keys).await?;
            Ok(Answer::json(200, bulk_json(&bulk.keys, entries)))
        }
        StateOp::Transaction => {
            let tx: TransactionBody = parse_json(&body)?;
            let operations = tx
                .operations
                .into_iter()
                .map(|op| TxOperation {
                    operation: op.operation,
                    request: op.request.map(SaveItem::into_item),
                })
                .collect();
            state::transact(&store, operations).await?;
            Ok(Answer::no_content())
        }
        StateOp::MethodNotAllowed(allowed) => Err(BlockError::new(
            405,
            crate::blocks::ERR_MALFORMED_REQUEST,
            format!("this state API path takes {allowed}"),
        )),
    }
}

/// Whether the call reads a request body (save, bulk get, transaction).
fn takes_body(op: &StateOp) -> bool {
    matches!(op, StateOp::Save | StateOp::BulkGet | StateOp::Transaction)
}

/// A found item: its bytes as saved, its ETag, its expiry.
fn found(entry: StateEntry) -> Answer {
    let content_type = match serde_json::from_slice::<serde::de::IgnoredAny>(&entry.value) {
        Ok(_) => "application/json",
        Err(_) => "application/octet-stream",
    };
    let mut headers = vec![
        ("content-type", content_type.to_string()),
        ("etag", entry.etag),
    ];
    if let Some(at) = entry.expires_at {
        headers.push((
            "metadata.ttlexpiretime",
            humantime::format_rfc3339_seconds(at).to_string(),
        ));
    }
    Answer {
        status: 200,
        headers,
        body: entry.value,
        close: false,
    }
}

fn bulk_json(keys: &[String], entries: Vec<Option<StateEntry>>) -> String {
    let items: Vec<serde_json::Value> = keys
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
    serde_json::Value::from(items).to_string()
}

/// A stored value inside a JSON answer: as JSON when it is JSON, else as a string.
fn json_or_text(value: &[u8]) -> serde_json::Value {
    serde_json::from_slice(value)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(value).into_owned()))
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

impl SaveItem {
    /// The value is stored as the JSON text sent (a string keeps its quotes), as daprd does
    /// over HTTP.
    fn into_item(self) -> Item {
        let options = self.options.unwrap_or_default();
        Item {
            key: self.key,
            value: self
                .value
                .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes())),
            etag: self.etag,
            concurrency: options.concurrency,
            consistency: options.consistency,
            ttl_in_seconds: self.metadata.get("ttlInSeconds").and_then(Scalar::text),
        }
    }
}

#[derive(Deserialize, Default)]
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

// === query, keys ===

#[derive(Default)]
struct Query {
    concurrency: String,
}

impl Query {
    /// `consistency` and `concurrency` are checked; `metadata.*` is accepted (no store here
    /// reads request metadata on get or delete).
    fn parse(query: Option<&str>) -> Result<Self, BlockError> {
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
                    .map_err(|e| BlockError::malformed(format!("query consistency: {e}")))?,
                "concurrency" => parsed.concurrency = value.into_owned(),
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// A key from the URL, percent-decoded.
fn decode_key(raw: &str) -> Result<String, BlockError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| {
            BlockError::malformed(format!("key {raw:?} is not UTF-8 once percent-decoded"))
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BlockError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            BlockError::malformed(format!("request body is not valid: {inner}"))
        } else {
            BlockError::malformed(format!("request body is not valid at {path}: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| BlockError::malformed(format!("request body is not valid: {e}")))?;
    Ok(value)
}
