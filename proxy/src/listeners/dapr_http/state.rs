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
            let items = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| item.into_item(&format!("[{i}]")))
                .collect::<Result<_, _>>()?;
            state::save(&store, items).await?;
            Ok(Answer::no_content())
        }
        StateOp::BulkGet => {
            let bulk: BulkBody = parse_json(&body)?;
            let items = state::bulk_get(&store, &bulk.keys, shared.options.max_body_bytes).await?;
            Ok(Answer::json(200, bulk_json(items)))
        }
        StateOp::Transaction => {
            let tx: TransactionBody = parse_json(&body)?;
            let operations = tx
                .operations
                .into_iter()
                .enumerate()
                .map(|(i, op)| {
                    let request = op
                        .request
                        .map(|item| item.into_item(&format!("operations[{i}].request")))
                        .transpose()?;
                    Ok(TxOperation {
                        operation: op.operation,
                        request,
                    })
                })
                .collect::<Result<_, BlockError>>()?;
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

/// Whether stored bytes are a JSON text (checked without building a value, so numbers such
/// as `1e999999` and deep nesting within the save limit are JSON here as they were on save).
fn is_json(value: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(value).is_ok()
}

/// A found item: its bytes as saved, its ETag, its expiry.
fn found(entry: StateEntry) -> Answer {
    let content_type = if is_json(&entry.value) {
        "application/json"
    } else {
        "application/octet-stream"
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

/// The bulk answer: `[{"key","data","etag","metadata"}…]`, each value exactly as stored — a
/// JSON value inline, anything else as a JSON string — so a value reads back the same through
/// GET and bulk get.
fn bulk_json(items: Vec<(String, Option<StateEntry>)>) -> Vec<u8> {
    let capacity = items
        .iter()
        .map(|(k, e)| k.len() + 64 + e.as_ref().map_or(0, |e| e.value.len()))
        .sum::<usize>();
    let mut out = Vec::with_capacity(capacity + 2);
    out.push(b'[');
    for (i, (key, entry)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        push_json_string(&mut out, key);
        if let Some(entry) = entry {
            out.extend_from_slice(b",\"data\":");
            if is_json(&entry.value) {
                out.extend_from_slice(entry.value.trim_ascii());
            } else {
                push_json_string(&mut out, &String::from_utf8_lossy(&entry.value));
            }
            out.extend_from_slice(b",\"etag\":");
            push_json_string(&mut out, &entry.etag);
            if let Some(at) = entry.expires_at {
                out.extend_from_slice(b",\"metadata\":{\"ttlExpireTime\":");
                push_json_string(&mut out, &humantime::format_rfc3339_seconds(at).to_string());
                out.push(b'}');
            }
        }
        out.push(b'}');
    }
    out.push(b']');
    out
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Values nested deeper than this are refused on save: no parser downstream (a client's, the
/// gRPC API's conversions) can be driven into deep recursion by a stored value.
pub(crate) const MAX_JSON_DEPTH: usize = 128;

/// How deeply a JSON text nests arrays and objects (strings skipped, escapes honoured).
fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Runs every request-body decoder on `data`, as a save, a bulk get and a transaction would
/// (for the fuzz targets; errors are expected, panics are not).
pub(crate) fn decode_for_fuzzing(data: &[u8]) {
    if let Ok(items) = parse_json::<Vec<SaveItem>>(data) {
        for (i, item) in items.into_iter().enumerate() {
            let _ = item.into_item(&format!("[{i}]"));
        }
    }
    let _ = parse_json::<BulkBody>(data);
    if let Ok(tx) = parse_json::<TransactionBody>(data) {
        for op in tx.operations {
            if let Some(item) = op.request {
                let _ = item.into_item("operations[0].request");
            }
        }
    }
    let _ = Query::parse(std::str::from_utf8(data).ok());
    let _ = decode_key(&String::from_utf8_lossy(data));
    let _ = json_depth(data);
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
    /// over HTTP; one nested deeper than [`MAX_JSON_DEPTH`] is refused.
    fn into_item(self, at: &str) -> Result<Item, BlockError> {
        if let Some(value) = &self.value {
            let depth = json_depth(value.get().as_bytes());
            if depth > MAX_JSON_DEPTH {
                return Err(BlockError::malformed(format!(
                    "{at}.value: nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
                )));
            }
        }
        let options = self.options.unwrap_or_default();
        Ok(Item {
            key: self.key,
            value: self
                .value
                .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes())),
            etag: self.etag,
            concurrency: options.concurrency,
            consistency: options.consistency,
            ttl_in_seconds: self.metadata.get("ttlInSeconds").and_then(Scalar::text),
        })
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

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BlockError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_and_skips_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(br#"["[[[{{{", "\"]]]"]"#), 1);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(json_depth(deep.as_bytes()), 200);
    }

    #[test]
    fn bulk_answers_embed_json_values_as_they_were_stored() {
        let entry = |value: &'static [u8]| StateEntry {
            value: Bytes::from_static(value),
            etag: "7".to_string(),
            expires_at: None,
        };
        let items = vec![
            ("big".to_string(), Some(entry(b"1e999999"))),
            ("text".to_string(), Some(entry(b"plain \"words\""))),
            ("gone".to_string(), None),
        ];
        assert_eq!(
            String::from_utf8(bulk_json(items)).unwrap(),
            r#"[{"key":"big","data":1e999999,"etag":"7"},{"key":"text","data":"plain \"words\"","etag":"7"},{"key":"gone"}]"#
        );
    }
}
