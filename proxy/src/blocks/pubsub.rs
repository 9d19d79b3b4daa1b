//! The pub/sub building block's publish side: one message or a bulk of them to a topic of a
//! component, wrapped as CloudEvents 1.0 the way daprd wraps them. Transport-neutral: the
//! HTTP listener decodes into [`Publish`] and encodes the result; the gRPC API will too.
//!
//! Status codes: no pub/sub component at all → 400 `ERR_PUBSUB_NOT_CONFIGURED`; an unknown
//! component (or one whose `scopes` leave this app out) → 404 `ERR_PUBSUB_NOT_FOUND`; an
//! empty topic → 404 `ERR_TOPIC_NAME_EMPTY`; a topic outside `allowedTopics` or this app's
//! `publishingScopes` → 403 `ERR_PUBSUB_FORBIDDEN`; a malformed CloudEvent → 400
//! `ERR_PUBSUB_CLOUD_EVENTS_SER`; the broker failing → 500 `ERR_PUBSUB_PUBLISH_MESSAGE`
//! naming the component.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use outrigger_pubsub::OutgoingMessage;
use serde_json::{Map, Value};

use super::BlockError;
use crate::components::PubSubEntry;
use crate::shared::Shared;

pub(crate) const ERR_PUBSUB_NOT_CONFIGURED: &str = "ERR_PUBSUB_NOT_CONFIGURED";
pub(crate) const ERR_PUBSUB_NOT_FOUND: &str = "ERR_PUBSUB_NOT_FOUND";
pub(crate) const ERR_TOPIC_NAME_EMPTY: &str = "ERR_TOPIC_NAME_EMPTY";
pub(crate) const ERR_PUBSUB_FORBIDDEN: &str = "ERR_PUBSUB_FORBIDDEN";
pub(crate) const ERR_PUBSUB_CLOUD_EVENTS_SER: &str = "ERR_PUBSUB_CLOUD_EVENTS_SER";
pub(crate) const ERR_PUBSUB_PUBLISH_MESSAGE: &str = "ERR_PUBSUB_PUBLISH_MESSAGE";

/// Entries one bulk publish may carry.
pub(crate) const MAX_BULK_ENTRIES: usize = 10_000;
/// `metadata.*` keys one publish may carry, and their total size.
const MAX_METADATA_KEYS: usize = 64;
const MAX_METADATA_BYTES: usize = 16 * 1024;

/// The CloudEvent `type` daprd gives events it wraps.
pub(crate) const EVENT_TYPE: &str = "com.dapr.event.sent";
pub(crate) const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// One message to publish, as the app sent it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Publish {
    pub(crate) data: Bytes,
    /// The request's `Content-Type`.
    pub(crate) content_type: Option<String>,
    /// `metadata.*`: `rawPayload`, `ttlInSeconds`, `partitionKey`, and broker metadata.
    pub(crate) metadata: BTreeMap<String, String>,
}

/// The W3C trace context the publish came with, copied into the event.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trace {
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
}

/// The component a publish goes to, after every check on the names.
pub(crate) fn target(
    shared: &Shared,
    pubsub: &str,
    topic: &str,
) -> Result<Arc<PubSubEntry>, BlockError> {
    let active = shared.config.load();
    let Some(entry) = active.pubsubs.get(pubsub) else {
        if active.pubsubs.is_empty() {
            return Err(BlockError::new(
                400,
                ERR_PUBSUB_NOT_CONFIGURED,
                "no pubsub is configured",
            ));
        }
        let mut known: Vec<&str> = active.pubsubs.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(BlockError::new(
            404,
            ERR_PUBSUB_NOT_FOUND,
            format!(
                "pubsub {pubsub} not found; this app's pub/sub components: {}",
                known.join(", ")
            ),
        ));
    };
    if topic.is_empty() {
        return Err(BlockError::new(
            404,
            ERR_TOPIC_NAME_EMPTY,
            format!("topic is empty in pubsub {pubsub}"),
        ));
    }
    if !entry.component.opened.settings.may_publish(topic) {
        return Err(BlockError::new(
            403,
            ERR_PUBSUB_FORBIDDEN,
            format!(
                "topic {topic} is not allowed for app id {} in pubsub {pubsub} (allowedTopics / publishingScopes)",
                shared.options.app_id
            ),
        ));
    }
    Ok(entry.clone())
}

/// Publishes one message; returns once the broker holds it.
pub(crate) async fn publish(
    shared: &Shared,
    pubsub: &str,
    topic: &str,
    message: Publish,
    trace: &Trace,
) -> Result<(), BlockError> {
    let entry = target(shared, pubsub, topic)?;
    let outgoing = envelope(shared, pubsub, topic, message, trace)?;
    send(shared, &entry, outgoing).await.map_err(|e| {
        BlockError::new(
            500,
            ERR_PUBSUB_PUBLISH_MESSAGE,
            format!("error when publishing to topic {topic} in pubsub {pubsub}: {e}"),
        )
    })
}

/// One entry of a bulk publish.
#[derive(Debug, Clone)]
pub(crate) struct BulkEntry {
    pub(crate) entry_id: String,
    pub(crate) message: Publish,
}

/// The entries of a bulk publish that failed, by entry id, with why.
pub(crate) type FailedEntries = Vec<(String, String)>;

/// Publishes every entry (each as one broker message; the metadata of the request applies to
/// every entry, an entry's own overrides it). Entries are checked in full first, so a
/// malformed one publishes nothing; then each is sent, and those the broker failed come back.
pub(crate) async fn bulk_publish(
    shared: &Shared,
    pubsub: &str,
    topic: &str,
    entries: Vec<BulkEntry>,
    trace: &Trace,
) -> Result<FailedEntries, BlockError> {
    let entry = target(shared, pubsub, topic)?;
    if entries.len() > MAX_BULK_ENTRIES {
        return Err(BlockError::malformed(format!(
            "{} entries; a bulk publish may carry at most {MAX_BULK_ENTRIES}",
            entries.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for bulk in &entries {
        if bulk.entry_id.is_empty() {
            return Err(BlockError::malformed("an entry has an empty entryId"));
        }
        if !seen.insert(bulk.entry_id.as_str()) {
            return Err(BlockError::malformed(format!(
                "entryId {:?} is given twice; entry ids must be unique",
                bulk.entry_id
            )));
        }
    }
    let mut prepared = Vec::with_capacity(entries.len());
    for bulk in entries {
        let outgoing = envelope(shared, pubsub, topic, bulk.message, trace).map_err(|mut e| {
            e.message = format!("entry {}: {}", bulk.entry_id, e.message);
            e
        })?;
        prepared.push((bulk.entry_id, outgoing));
    }
    // Sent a window at a time, so a bulk of thousands keeps the broker busy without
    // thousands of publishes waiting at once.
    let mut failed = Vec::new();
    for window in prepared.chunks(64) {
        let sends = window
            .iter()
            .map(|(_, outgoing)| send(shared, &entry, outgoing.clone()));
        let results = futures_util::future::join_all(sends).await;
        for ((id, _), result) in window.iter().zip(results) {
            if let Err(e) = result {
                failed.push((id.clone(), e));
            }
        }
    }
    Ok(failed)
}

/// Hands one message to the broker (and, for the in-memory broker, to the other sidecars on
/// this host), counting it.
pub(crate) async fn send(
    shared: &Shared,
    entry: &PubSubEntry,
    outgoing: OutgoingMessage,
) -> Result<(), String> {
    let component = entry.component.name();
    let topic = outgoing.topic.clone();
    let in_process = entry.component.opened.settings.in_process;
    let copy = in_process.then(|| outgoing.clone());
    let broker = &entry.component.opened.broker;
    // A copy is kept only when a retry policy may send the message again.
    let retained = entry.outbound.retry.is_some().then(|| outgoing.clone());
    let mut first = Some(outgoing);
    let result = entry
        .outbound
        .run(
            || {
                let message = first.take().or_else(|| retained.clone());
                async move {
                    let message = message.ok_or("the message was already sent")?;
                    broker
                        .publish(message)
                        .await
                        .map_err(|e| format!("component {component}: {e}"))
                }
            },
            |_| true,
            |failure| format!("component {component}: {failure}"),
        )
        .await;
    shared
        .metrics
        .pubsub
        .published(component, &topic, result.is_ok());
    if let (Ok(()), Some(message)) = (&result, copy) {
        crate::subscriptions::peers::fan_out(shared, component, message).await;
    }
    result
}

/// A publish's `metadata.*`: at most 64 keys and 16 KiB in all, and none of the `__` names
/// the brokers use for what they report on delivery (`__key`, `__partition`, …).
pub(crate) fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), BlockError> {
    if metadata.len() > MAX_METADATA_KEYS
        || metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            > MAX_METADATA_BYTES
    {
        return Err(BlockError::malformed(format!(
            "metadata: at most {MAX_METADATA_KEYS} keys of {MAX_METADATA_BYTES} bytes in all"
        )));
    }
    if let Some(key) = metadata.keys().find(|k| k.starts_with("__")) {
        return Err(BlockError::malformed(format!(
            "metadata.{key}: names starting with __ are reserved for what the broker reports"
        )));
    }
    Ok(())
}

/// The bytes that go to the broker: the payload wrapped as a CloudEvent (or an app's own
/// CloudEvent, completed), or the raw payload when `metadata.rawPayload` is true.
fn envelope(
    shared: &Shared,
    pubsub: &str,
    topic: &str,
    message: Publish,
    trace: &Trace,
) -> Result<OutgoingMessage, BlockError> {
    let Publish {
        data,
        content_type,
        mut metadata,
    } = message;
    check_metadata(&metadata)?;
    let raw = match metadata.remove("rawPayload").as_deref() {
        None | Some("false") | Some("") => false,
        Some("true") => true,
        Some(other) => {
            return Err(BlockError::malformed(format!(
                "metadata.rawPayload: {other:?}; expected true or false"
            )))
        }
    };
    let ttl = match metadata.remove("ttlInSeconds") {
        None => None,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(seconds) if seconds > 0 && seconds <= 10 * 365 * 86_400 => {
                Some(Duration::from_secs(seconds))
            }
            _ => {
                return Err(BlockError::malformed(format!(
                    "metadata.ttlInSeconds: {text:?}; expected a whole number of seconds from 1"
                )))
            }
        },
    };
    let data = if raw {
        data
    } else {
        let event = cloud_event(
            &shared.options.app_id,
            pubsub,
            topic,
            &data,
            content_type.as_deref(),
            trace,
            ttl,
        )?;
        Bytes::from(
            serde_json::to_vec(&Value::Object(event))
                .map_err(|e| BlockError::new(500, ERR_PUBSUB_CLOUD_EVENTS_SER, e.to_string()))?,
        )
    };
    Ok(OutgoingMessage {
        topic: topic.to_string(),
        data,
        metadata,
    })
}

/// Whether a content type carries JSON (`application/json`, `…+json`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

fn is_text(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/") || essence == "application/xml"
}

/// Builds the CloudEvent for a payload, daprd's way: an `application/cloudevents+json` body
/// is the app's own event (its `topic`, `pubsubname` and trace fields overwritten, missing
/// `id`, `source`, `type`, `specversion` filled); any other body becomes `data` (parsed JSON
/// for JSON content types, a string for text) or `data_base64`.
pub(crate) fn cloud_event(
    app_id: &str,
    pubsub: &str,
    topic: &str,
    data: &[u8],
    content_type: Option<&str>,
    trace: &Trace,
    ttl: Option<Duration>,
) -> Result<Map<String, Value>, BlockError> {
    let content_type = content_type
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or("text/plain");
    let own_event = content_type
        .split(';')
        .next()
        .is_some_and(|c| c.trim().eq_ignore_ascii_case(CLOUDEVENTS_JSON));
    let mut event = if own_event {
        let parsed: Value = serde_json::from_slice(data).map_err(|e| {
            BlockError::new(
                400,
                ERR_PUBSUB_CLOUD_EVENTS_SER,
                format!("the body is sent as {CLOUDEVENTS_JSON} but is not a JSON object: {e}"),
            )
        })?;
        let Value::Object(event) = parsed else {
            return Err(BlockError::new(
                400,
                ERR_PUBSUB_CLOUD_EVENTS_SER,
                format!("the body is sent as {CLOUDEVENTS_JSON} but is not a JSON object"),
            ));
        };
        event
    } else {
        let mut event = Map::new();
        event.insert("datacontenttype".into(), content_type.into());
        if is_json(content_type) {
            match serde_json::from_slice::<Value>(data) {
                Ok(value) => {
                    event.insert("data".into(), value);
                }
                Err(_) => {
                    event.insert(
                        "data".into(),
                        String::from_utf8_lossy(data).into_owned().into(),
                    );
                }
            }
        } else if is_text(content_type) {
            match std::str::from_utf8(data) {
                Ok(text) => {
                    event.insert("data".into(), text.into());
                }
                Err(_) => {
                    event.insert("data_base64".into(), base64_of(data).into());
                }
            }
        } else {
            event.insert("data_base64".into(), base64_of(data).into());
        }
        event
    };
    let mut fill = |name: &str, value: Value| {
        let missing = match event.get(name) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if missing {
            event.insert(name.to_string(), value);
        }
    };
    fill("id", uuid::Uuid::new_v4().to_string().into());
    fill("source", app_id.into());
    fill("type", EVENT_TYPE.into());
    fill("specversion", "1.0".into());
    fill("time", rfc3339(SystemTime::now()).into());
    event.insert("topic".into(), topic.into());
    event.insert("pubsubname".into(), pubsub.into());
    let traceparent = trace.traceparent.clone().unwrap_or_default();
    event.insert("traceid".into(), traceparent.clone().into());
    event.insert("traceparent".into(), traceparent.into());
    event.insert(
        "tracestate".into(),
        trace.tracestate.clone().unwrap_or_default().into(),
    );
    if let Some(ttl) = ttl {
        event.insert("expiration".into(), rfc3339(SystemTime::now() + ttl).into());
    }
    Ok(event)
}

fn base64_of(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `2026-12-02T13:00:00Z` (second precision, UTC), as CloudEvents' `time` and `expiration`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &[u8], content_type: Option<&str>) -> Map<String, Value> {
        let trace = Trace {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        };
        cloud_event("app", "pubsub", "orders", data, content_type, &trace, None).unwrap()
    }

    #[test]
    fn a_json_payload_is_wrapped_with_every_field() {
        let e = event(br#"{"total":3}"#, Some("application/json"));
        assert_eq!(e["data"], serde_json::json!({"total": 3}));
        assert_eq!(e["datacontenttype"], "application/json");
        assert_eq!(e["source"], "app");
        assert_eq!(e["type"], EVENT_TYPE);
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["topic"], "orders");
        assert_eq!(e["pubsubname"], "pubsub");
        assert_eq!(
            e["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(e["id"].as_str().unwrap().len(), 36);
        assert!(e.get("data_base64").is_none());
    }

    #[test]
    fn text_stays_a_string_and_binary_goes_to_data_base64() {
        let e = event(b"hello", None);
        assert_eq!(e["data"], "hello");
        assert_eq!(e["datacontenttype"], "text/plain");
        let e = event(&[0, 159, 146, 150], Some("application/octet-stream"));
        assert_eq!(e["data_base64"], "AJ+Slg==");
        assert!(e.get("data").is_none());
    }

    #[test]
    fn an_apps_own_cloud_event_keeps_its_fields_but_not_topic_or_pubsub() {
        let e = event(
            br#"{"id":"mine","source":"s","type":"t","specversion":"1.0","topic":"spoofed","data":{"a":1}}"#,
            Some("application/cloudevents+json"),
        );
        assert_eq!(e["id"], "mine");
        assert_eq!(e["source"], "s");
        assert_eq!(e["type"], "t");
        assert_eq!(e["topic"], "orders");
        assert_eq!(e["pubsubname"], "pubsub");
        let bad = cloud_event(
            "app",
            "pubsub",
            "orders",
            b"[1]",
            Some(CLOUDEVENTS_JSON),
            &Trace::default(),
            None,
        )
        .unwrap_err();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.code, ERR_PUBSUB_CLOUD_EVENTS_SER);
    }
}
