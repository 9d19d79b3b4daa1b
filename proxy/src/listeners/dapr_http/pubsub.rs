//! `/v1.0/publish/{pubsub}/{topic}` and the bulk publish over HTTP: the body, `Content-Type`,
//! `?metadata.*` and trace headers decoded into the pub/sub block's calls; `204` on success,
//! and for a bulk publish with failed entries `500` with
//! `{"failedEntries":[{"entryId","error"}],"errorCode":"ERR_PUBSUB_PUBLISH_MESSAGE"}`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::state::parse_json;
use super::target::PublishCall;
use crate::answer::Answer;
use crate::blocks::pubsub::{
    self, BulkEntry, Publish, Trace, ERR_PUBSUB_PUBLISH_MESSAGE, ERR_TOPIC_NAME_EMPTY,
};
use crate::blocks::{BlockError, ERR_MALFORMED_REQUEST};
use crate::listeners::Downstream;
use crate::shared::Shared;

pub(super) async fn serve<D: Downstream>(
    shared: &Shared,
    call: PublishCall,
    request: &mut D,
) -> Result<Answer, BlockError> {
    if !matches!(*request.method(), http::Method::POST | http::Method::PUT) {
        return Err(BlockError::new(
            405,
            ERR_MALFORMED_REQUEST,
            format!(
                "{} is not allowed on the publish API; use POST or PUT",
                request.method()
            ),
        ));
    }
    // The body is read first so that an error answer leaves the connection usable.
    let body = request.read_body(shared.options.max_body_bytes).await?;
    if call.pubsub.is_empty() {
        return Err(BlockError::new(
            404,
            "ERR_PUBSUB_EMPTY",
            "pubsub name is empty; call /v1.0/publish/{pubsub}/{topic}",
        ));
    }
    let pubsub = decode(&call.pubsub, "pubsub name")?;
    let topic = decode(&call.topic, "topic")?;
    if topic.is_empty() {
        return Err(BlockError::new(
            404,
            ERR_TOPIC_NAME_EMPTY,
            format!("topic is empty in pubsub {pubsub}"),
        ));
    }
    let metadata = query_metadata(request.query())?;
    pubsub::check_metadata(&metadata)?;
    let trace = Trace {
        traceparent: request.header_str("traceparent").map(str::to_string),
        tracestate: request.header_str("tracestate").map(str::to_string),
    };
    if !call.bulk {
        let message = Publish {
            data: body,
            content_type: request.header_str("content-type").map(str::to_string),
            metadata,
        };
        pubsub::publish(shared, &pubsub, &topic, message, &trace).await?;
        return Ok(Answer::no_content());
    }
    // Names are checked before the body, so an unknown pubsub is a 404 whatever the body.
    pubsub::target(shared, &pubsub, &topic)?;
    let entries: Vec<BulkBodyEntry> = parse_json(&body)?;
    // Counted before each entry takes a copy of the request's metadata.
    if entries.len() > pubsub::MAX_BULK_ENTRIES {
        return Err(BlockError::malformed(format!(
            "{} entries; a bulk publish may carry at most {}",
            entries.len(),
            pubsub::MAX_BULK_ENTRIES
        )));
    }
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| entry.into_entry(i, &metadata))
        .collect::<Result<Vec<_>, _>>()?;
    let failed = pubsub::bulk_publish(shared, &pubsub, &topic, entries, &trace).await?;
    if failed.is_empty() {
        return Ok(Answer::no_content());
    }
    let failed: Vec<_> = failed
        .into_iter()
        .map(|(id, error)| serde_json::json!({ "entryId": id, "error": error }))
        .collect();
    let body = serde_json::json!({
        "failedEntries": failed,
        "errorCode": ERR_PUBSUB_PUBLISH_MESSAGE,
    });
    Ok(Answer::json(500, body.to_string()))
}

fn decode(raw: &str, what: &str) -> Result<String, BlockError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            BlockError::malformed(format!("{what} {raw:?} is not UTF-8 once percent-decoded"))
        })
}

/// `?metadata.<key>=<value>` pairs, percent-decoded.
fn query_metadata(query: Option<&str>) -> Result<BTreeMap<String, String>, BlockError> {
    let mut metadata = BTreeMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(key) = name.strip_prefix("metadata.") else {
            continue;
        };
        let key = decode(key, "metadata key")?;
        let value = decode(&value.replace('+', " "), "metadata value")?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// One entry of a bulk publish body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BulkBodyEntry {
    entry_id: String,
    event: Box<RawValue>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl BulkBodyEntry {
    /// The entry as a message: a JSON string event is its text unless the content type is
    /// JSON; any other event is its JSON text.
    fn into_entry(
        self,
        index: usize,
        request_metadata: &BTreeMap<String, String>,
    ) -> Result<BulkEntry, BlockError> {
        if self.entry_id.is_empty() {
            return Err(BlockError::malformed(format!("[{index}].entryId is empty")));
        }
        let json_type = self
            .content_type
            .as_deref()
            .is_some_and(|c| c.contains("json"));
        let raw = self.event.get();
        let data = match serde_json::from_str::<String>(raw) {
            Ok(text) if !json_type => Bytes::from(text),
            _ => Bytes::copy_from_slice(raw.as_bytes()),
        };
        let mut metadata = request_metadata.clone();
        metadata.extend(self.metadata);
        Ok(BulkEntry {
            entry_id: self.entry_id,
            message: Publish {
                data,
                content_type: self.content_type,
                metadata,
            },
        })
    }
}
