//! One subscription's worker: pull from the broker (at most `concurrency` messages out at
//! once, so a slow app slows the pull), deliver each to the app through the same upstream
//! path as invocations, and settle it by the app's verdict.
//!
//! Verdicts, as daprd reads them: a 2xx with an empty or non-JSON body, no `status`, or
//! `{"status":"SUCCESS"}` is success; `"RETRY"` or an unknown status retries; `"DROP"` drops;
//! a 404 drops; any other status or a transport error retries.
//!
//! Fates: success → ack. Dropped (DROP, 404, no matching route, expired) → to the
//! dead-letter topic if there is one, then ack; else ack, logged and counted. Retries run out →
//! to the dead-letter topic if there is one, then ack; else **parked**: never acked, listed in
//! `/v1.0/metadata`, counted, logged with its id; the broker redelivers it after a restart.
//! Stopped while waiting to retry → released: not acked, redelivered later.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use outrigger_pubsub::{ConsumeOptions, Consumer, Message, OutgoingMessage, PubSubError};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Live, Settings};
use crate::blocks::pubsub::{send, CLOUDEVENTS_JSON, EVENT_TYPE};
use crate::http1::head::HeaderEdits;
use crate::shared::Shared;
use crate::upstream::call::{self, CallError, Reply};
use crate::upstream::Target;

/// The largest app answer to a delivery that is read (a verdict is small).
const MAX_VERDICT: usize = 64 * 1024;

pub(super) async fn run(shared: Arc<Shared>, live: Arc<Live>, mut stop: watch::Receiver<bool>) {
    let settings = live.settings.load_full();
    let entry = settings.entry.clone();
    let topic = settings.spec.topic.clone();
    let pubsub = settings.spec.pubsubname.clone();
    let options = ConsumeOptions {
        group: entry.component.opened.settings.consumer_group.clone(),
        max_in_flight: settings.max_in_flight(),
        hold_limit: entry.hold_limit,
    };
    drop(settings);
    let consumer = loop {
        match entry
            .component
            .opened
            .broker
            .subscribe(&topic, options.clone())
            .await
        {
            Ok(consumer) => break consumer,
            Err(e) => {
                tracing::warn!(%pubsub, %topic, error = %e, "cannot subscribe; trying again in 2s");
                live.set_state(format!("failed: {e}; trying again"));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = until_stopped(&mut stop) => return,
                }
            }
        }
    };
    live.set_state("running");
    let mut deliveries = JoinSet::new();
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            biased;
            _ = until_stopped(&mut stopped) => break,
            Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            next = consumer.next() => match next {
                Ok(first) => {
                    let bulk = live.settings.load().bulk;
                    match bulk {
                        Some(bulk) => {
                            let batch = collect(first, consumer.as_ref(), bulk.max_messages, bulk.max_await).await;
                            deliveries.spawn(deliver_bulk(shared.clone(), live.clone(), consumer.clone(), batch, stop.clone()));
                        }
                        None => {
                            deliveries.spawn(deliver_one(shared.clone(), live.clone(), consumer.clone(), first, stop.clone()));
                        }
                    }
                }
                Err(PubSubError::Closed) => break,
                Err(e) => {
                    tracing::warn!(%pubsub, %topic, error = %e, "pulling from the broker failed; trying again in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    // Stopping: nothing more is pulled; what is being delivered finishes, what waits to be
    // retried is released (each delivery sees the stop).
    let drained = tokio::time::timeout(shared.options.drain_timeout, async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(%pubsub, %topic, left = deliveries.len(), "deliveries still running at the drain timeout are released unacknowledged");
        deliveries.abort_all();
        while deliveries.join_next().await.is_some() {}
    }
    consumer.close().await;
    live.set_state("stopped");
}

/// Resolves once `stop` is (or already was) set.
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Up to `max` messages: the first, and what else arrives within `wait`.
async fn collect(
    first: Message,
    consumer: &dyn Consumer,
    max: usize,
    wait: Duration,
) -> Vec<Message> {
    let deadline = Instant::now() + wait;
    let mut batch = vec![first];
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Ok(message)) => batch.push(message),
            _ => break,
        }
    }
    batch
}

/// A message ready to deliver: the CloudEvent as bytes and as JSON (for routing rules).
struct Prepared {
    body: Bytes,
    event: Value,
    id: String,
    expired: bool,
}

impl Prepared {
    fn of(message: &Message, settings: &Settings) -> Prepared {
        let parsed = if settings.raw_payload {
            None
        } else {
            match serde_json::from_slice::<Value>(&message.data) {
                Ok(Value::Object(event)) if event.contains_key("specversion") => Some(event),
                _ => None,
            }
        };
        let (body, event) = match parsed {
            Some(event) => (message.data.clone(), event),
            None => {
                let event = raw_event(message, settings);
                let body = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
                (body, event)
            }
        };
        let id = match event.get("id") {
            Some(Value::String(id)) => id.clone(),
            _ => message.token.to_string(),
        };
        let expired = event
            .get("expiration")
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .is_some_and(|at| at <= SystemTime::now());
        Prepared {
            body,
            event: Value::Object(event),
            id,
            expired,
        }
    }
}

/// A CloudEvent around a payload that is not one (published with `rawPayload`).
fn raw_event(message: &Message, settings: &Settings) -> Map<String, Value> {
    let mut event = Map::new();
    event.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    event.insert("source".into(), settings.spec.pubsubname.clone().into());
    event.insert("type".into(), EVENT_TYPE.into());
    event.insert("specversion".into(), "1.0".into());
    event.insert("datacontenttype".into(), "application/octet-stream".into());
    event.insert(
        "data_base64".into(),
        base64::engine::general_purpose::STANDARD
            .encode(&message.data)
            .into(),
    );
    event.insert("topic".into(), message.topic.clone().into());
    event.insert("pubsubname".into(), settings.spec.pubsubname.clone().into());
    event
}

/// What the app said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Success,
    /// With the HTTP status, when the retry is for one (a policy's `matching` may exclude it).
    Retry(String, Option<u16>),
    Drop(String),
}

/// How one message ends.
enum Fate {
    Delivered,
    /// DROP, 404, no route, expired: dead letter, else ack.
    Undeliverable(String),
    /// Retries ran out: dead letter, else park.
    Exhausted(String),
    /// Stopped before a verdict: not acked, the broker redelivers.
    Released,
}

/// Counts a delivery in flight for its whole life.
struct InFlight {
    live: Arc<Live>,
    gauge: prometheus::IntGauge,
}

impl InFlight {
    fn new(shared: &Shared, live: &Arc<Live>, n: usize, settings: &Settings) -> InFlight {
        let gauge = shared
            .metrics
            .pubsub
            .in_flight(settings.entry.component.name(), &settings.spec.topic);
        gauge.add(n as i64);
        live.in_flight.fetch_add(n, Ordering::Relaxed);
        InFlight {
            live: live.clone(),
            gauge,
        }
    }

    fn done(&self, n: usize) {
        self.gauge.sub(n as i64);
        self.live.in_flight.fetch_sub(n, Ordering::Relaxed);
    }
}

async fn deliver_one(
    shared: Arc<Shared>,
    live: Arc<Live>,
    consumer: Arc<dyn Consumer>,
    message: Message,
    mut stop: watch::Receiver<bool>,
) {
    let first = live.settings.load_full();
    let in_flight = InFlight::new(&shared, &live, 1, &first);
    let prepared = Prepared::of(&message, &first);
    drop(first);
    let mut retries = 0u32;
    let fate = loop {
        let settings = live.settings.load_full();
        if prepared.expired {
            break Fate::Undeliverable("its expiration passed".into());
        }
        let Some(path) = settings.routes.route(&prepared.event) else {
            break Fate::Undeliverable(
                "no routing rule matches and there is no default route".into(),
            );
        };
        let verdict = attempt(&shared, &settings, path, &prepared).await;
        match verdict {
            Verdict::Success => break Fate::Delivered,
            Verdict::Drop(why) => break Fate::Undeliverable(why),
            Verdict::Retry(why, status) => {
                retries += 1;
                let retry = &settings.entry.retry;
                let wait = retry
                    .retries_status(status)
                    .then(|| retry.delay(retries))
                    .flatten();
                let Some(wait) = wait else {
                    break Fate::Exhausted(format!("{why} (after {retries} attempts)"));
                };
                shared.metrics.pubsub.outcome(
                    settings.entry.component.name(),
                    &settings.spec.topic,
                    "retried",
                );
                tracing::debug!(id = %prepared.id, topic = %settings.spec.topic, %why, ?wait, "delivery will be retried");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = until_stopped(&mut stop) => break Fate::Released,
                }
            }
        }
    };
    let settings = live.settings.load_full();
    settle(
        &shared,
        &live,
        consumer.as_ref(),
        &settings,
        &message,
        &prepared.id,
        fate,
    )
    .await;
    in_flight.done(1);
}

/// One attempt: `POST <path>` with the event; the app's verdict.
async fn attempt(shared: &Shared, settings: &Settings, path: &str, prepared: &Prepared) -> Verdict {
    // The event's own traceparent travels as a header only when it is one a header can
    // carry (a raw payload may hold anything there).
    let traceparent = match prepared.event.get("traceparent") {
        Some(Value::String(t)) if t.len() <= 512 && t.bytes().all(|b| b.is_ascii_graphic()) => {
            t.clone()
        }
        _ => String::new(),
    };
    let headers = vec![
        ("content-type", CLOUDEVENTS_JSON.to_string()),
        ("pubsubname", settings.spec.pubsubname.clone()),
        ("traceparent", traceparent),
    ];
    match post(shared, settings, path, headers, prepared.body.clone()).await {
        Err(PostError::Unbuildable(e)) => Verdict::Drop(e),
        Err(PostError::Failed(e)) => verdict(Err(e)),
        Ok(reply) => verdict(Ok(reply)),
    }
}

/// Why a delivery got no answer from the app.
enum PostError {
    /// No request can carry it (a route path that is no request target): no retry helps.
    Unbuildable(String),
    /// The app could not be reached, or did not answer in time: worth a retry.
    Failed(String),
}

/// `POST <path>` to the app through its upstream, with the attempt timeout; recorded as an
/// inbound request of the app and as a delivery attempt.
async fn post(
    shared: &Shared,
    settings: &Settings,
    path: &str,
    mut headers: Vec<(&'static str, String)>,
    body: Bytes,
) -> Result<Reply, PostError> {
    let Some(app) = shared.app.as_ref() else {
        return Err(PostError::Failed("this sidecar has no --app-port".into()));
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if let Some(token) = &shared.options.app_api_token {
        headers.push(("dapr-api-token", token.clone()));
    }
    headers.retain(|(_, value)| !value.is_empty());
    let request = {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        call::request(Method::POST, &app.authority, &path, &pairs, body)
            .map_err(|e| PostError::Unbuildable(format!("no delivery request can carry it: {e}")))?
    };
    let target = Target {
        set: &app.endpoints,
        protocol: app.protocol,
        head_timeout: None,
        connect_timeout: shared.options.connect_timeout,
        hash_key: None,
        retry: None,
        breaker: None,
        tls: None,
    };
    let started = Instant::now();
    let result = call::call(
        &target,
        request,
        &HeaderEdits::default(),
        MAX_VERDICT,
        settings.entry.attempt_timeout,
    )
    .await;
    let elapsed = started.elapsed();
    let status = result.as_ref().map_or(0, |r| r.status);
    app.metrics.record(status, elapsed);
    shared.metrics.pubsub.attempt(
        settings.entry.component.name(),
        &settings.spec.topic,
        elapsed,
    );
    result.map_err(|e: CallError| {
        PostError::Failed(format!(
            "delivery to 127.0.0.1:{}{path} failed: {e}",
            app.port
        ))
    })
}

fn verdict(result: Result<Reply, String>) -> Verdict {
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => return Verdict::Retry(e, None),
    };
    match reply.status {
        200..=299 => match status_of(&reply.body).as_deref() {
            None | Some("SUCCESS") | Some("") => Verdict::Success,
            Some("RETRY") => Verdict::Retry("the app answered RETRY".into(), None),
            Some("DROP") => Verdict::Drop("the app answered DROP".into()),
            Some(other) => Verdict::Retry(
                format!("the app answered an unknown status {other:?}"),
                None,
            ),
        },
        404 => Verdict::Drop("the app answered 404".into()),
        status => Verdict::Retry(format!("the app answered {status}"), Some(status)),
    }
}

/// The `status` of a JSON object body, upper-cased; `None` when there is none.
fn status_of(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => match object.get("status") {
            Some(Value::String(status)) => Some(status.trim().to_ascii_uppercase()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        },
        _ => None,
    }
}

/// Carries out a message's fate: ack, dead-letter, park or release.
async fn settle(
    shared: &Shared,
    live: &Live,
    consumer: &dyn Consumer,
    settings: &Settings,
    message: &Message,
    id: &str,
    fate: Fate,
) {
    let component = settings.entry.component.name();
    let topic = &settings.spec.topic;
    let count = |outcome| shared.metrics.pubsub.outcome(component, topic, outcome);
    let (why, dead_letter_or) = match fate {
        Fate::Delivered => {
            ack(consumer, message, id, topic).await;
            count("delivered");
            return;
        }
        Fate::Released => {
            count("released");
            tracing::info!(%id, %topic, "delivery stopped before a verdict; the message is left unacknowledged for redelivery");
            return;
        }
        Fate::Undeliverable(why) => (why, Otherwise::Drop),
        Fate::Exhausted(why) => (why, Otherwise::Park),
    };
    if let Some(dead_letter) = settings.spec.dead_letter_topic.as_deref() {
        let outgoing = OutgoingMessage {
            topic: dead_letter.to_string(),
            data: message.data.clone(),
            metadata: message
                .metadata
                .iter()
                .filter(|(k, _)| !k.starts_with("__"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        };
        match send(shared, &settings.entry, outgoing).await {
            Ok(()) => {
                ack(consumer, message, id, topic).await;
                count("dead_lettered");
                tracing::warn!(%id, %topic, %dead_letter, reason = %why, "message sent to the dead-letter topic");
                return;
            }
            Err(e) => {
                tracing::error!(%id, %topic, %dead_letter, reason = %why, error = %e, "the dead-letter topic did not take the message; it is parked unacknowledged");
                park(consumer, live, message).await;
                count("parked");
                return;
            }
        }
    }
    match dead_letter_or {
        Otherwise::Drop => {
            ack(consumer, message, id, topic).await;
            count("dropped");
            tracing::warn!(%id, %topic, reason = %why, "message dropped (acked): there is no dead-letter topic");
        }
        Otherwise::Park => {
            park(consumer, live, message).await;
            count("parked");
            tracing::error!(%id, %topic, subscription = %settings.name, token = %message.token, reason = %why, "retries ran out and there is no dead-letter topic: the message is parked unacknowledged; the broker redelivers it after a restart. Add a deadLetterTopic to keep such messages");
        }
    }
}

enum Otherwise {
    Drop,
    Park,
}

async fn ack(consumer: &dyn Consumer, message: &Message, id: &str, topic: &str) {
    if let Err(e) = consumer.ack(&message.token).await {
        tracing::warn!(%id, %topic, error = %e, "acking a settled message failed; the broker will redeliver it");
    }
}

async fn park(consumer: &dyn Consumer, live: &Live, message: &Message) {
    consumer.park(&message.token).await;
    live.parked.lock().push(message.token.clone());
}

// === bulk ===

async fn deliver_bulk(
    shared: Arc<Shared>,
    live: Arc<Live>,
    consumer: Arc<dyn Consumer>,
    messages: Vec<Message>,
    mut stop: watch::Receiver<bool>,
) {
    let first = live.settings.load_full();
    let in_flight = InFlight::new(&shared, &live, messages.len(), &first);
    let mut pending: Vec<(String, Message, Prepared)> = messages
        .into_iter()
        .map(|m| {
            let prepared = Prepared::of(&m, &first);
            (uuid::Uuid::new_v4().to_string(), m, prepared)
        })
        .collect();
    drop(first);
    let mut retries = 0u32;
    loop {
        let settings = live.settings.load_full();
        // Group by route; what has none, or expired, is settled now.
        let mut by_path: HashMap<String, Vec<usize>> = HashMap::new();
        let mut fates: Vec<Option<Fate>> = Vec::with_capacity(pending.len());
        for (i, (_, _, prepared)) in pending.iter().enumerate() {
            if prepared.expired {
                fates.push(Some(Fate::Undeliverable("its expiration passed".into())));
                continue;
            }
            match settings.routes.route(&prepared.event) {
                Some(path) => {
                    by_path.entry(path.to_string()).or_default().push(i);
                    fates.push(None);
                }
                None => fates.push(Some(Fate::Undeliverable(
                    "no routing rule matches and there is no default route".into(),
                ))),
            }
        }
        let mut retry_why: HashMap<usize, String> = HashMap::new();
        for (path, items) in &by_path {
            let verdicts = bulk_attempt(&shared, &settings, path, &pending, items).await;
            for (i, verdict) in items.iter().zip(verdicts) {
                match verdict {
                    Verdict::Success => fates[*i] = Some(Fate::Delivered),
                    Verdict::Drop(why) => fates[*i] = Some(Fate::Undeliverable(why)),
                    Verdict::Retry(why, _) => {
                        retry_why.insert(*i, why);
                    }
                }
            }
        }
        let mut again = Vec::new();
        let wait = if retry_why.is_empty() {
            None
        } else {
            retries += 1;
            settings.entry.retry.delay(retries)
        };
        for (i, (entry_id, message, prepared)) in pending.into_iter().enumerate() {
            let fate = match fates[i].take() {
                Some(fate) => fate,
                None => {
                    let why = retry_why.remove(&i).unwrap_or_default();
                    if wait.is_some() {
                        again.push((entry_id, message, prepared));
                        continue;
                    }
                    Fate::Exhausted(format!("{why} (after {retries} attempts)"))
                }
            };
            settle(
                &shared,
                &live,
                consumer.as_ref(),
                &settings,
                &message,
                &prepared.id,
                fate,
            )
            .await;
            in_flight.done(1);
        }
        pending = again;
        let Some(wait) = wait.filter(|_| !pending.is_empty()) else {
            break;
        };
        for _ in &pending {
            shared.metrics.pubsub.outcome(
                settings.entry.component.name(),
                &settings.spec.topic,
                "retried",
            );
        }
        let stopped = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = until_stopped(&mut stop) => true,
        };
        if stopped {
            for (_, message, prepared) in &pending {
                settle(
                    &shared,
                    &live,
                    consumer.as_ref(),
                    &settings,
                    message,
                    &prepared.id,
                    Fate::Released,
                )
                .await;
                in_flight.done(1);
            }
            return;
        }
    }
}

/// One bulk `POST <path>`: the verdict of each of `items` (indexes into `pending`).
async fn bulk_attempt(
    shared: &Shared,
    settings: &Settings,
    path: &str,
    pending: &[(String, Message, Prepared)],
    items: &[usize],
) -> Vec<Verdict> {
    let entries: Vec<Value> = items
        .iter()
        .map(|&i| {
            let (entry_id, message, prepared) = &pending[i];
            let metadata: Map<String, Value> = message
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            serde_json::json!({
                "entryId": entry_id,
                "event": prepared.event,
                "metadata": metadata,
                "contentType": CLOUDEVENTS_JSON,
            })
        })
        .collect();
    let body = serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "com.dapr.event.sent.bulk",
        "topic": settings.spec.topic,
        "pubsubname": settings.spec.pubsubname,
        "metadata": {},
        "entries": entries,
    });
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let headers = vec![
        ("content-type", "application/json".to_string()),
        ("pubsubname", settings.spec.pubsubname.clone()),
    ];
    let result = post(shared, settings, path, headers, body).await;
    let all = |verdict: Verdict| vec![verdict; items.len()];
    let reply = match result {
        Ok(reply) => reply,
        Err(PostError::Unbuildable(e)) => return all(Verdict::Drop(e)),
        Err(PostError::Failed(e)) => return all(Verdict::Retry(e, None)),
    };
    match reply.status {
        200..=299 => {}
        404 => return all(Verdict::Drop("the app answered 404".into())),
        status => {
            return all(Verdict::Retry(
                format!("the app answered {status}"),
                Some(status),
            ))
        }
    }
    let statuses: HashMap<String, String> = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("statuses").cloned())
        .and_then(|s| s.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| {
            let id = s.get("entryId")?.as_str()?.to_string();
            let status = s.get("status")?.as_str()?.trim().to_ascii_uppercase();
            Some((id, status))
        })
        .collect();
    items
        .iter()
        .map(|&i| match statuses.get(&pending[i].0).map(String::as_str) {
            Some("SUCCESS") => Verdict::Success,
            Some("DROP") => Verdict::Drop("the app answered DROP for the entry".into()),
            Some("RETRY") => Verdict::Retry("the app answered RETRY for the entry".into(), None),
            Some(other) => Verdict::Retry(
                format!("the app answered an unknown status {other:?} for the entry"),
                None,
            ),
            None => Verdict::Retry("the app's answer has no status for the entry".into(), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Result<Reply, String> {
        Ok(Reply {
            status,
            body: Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    #[test]
    fn verdicts_follow_daprs_reading_of_the_answer() {
        assert_eq!(verdict(reply(200, "")), Verdict::Success);
        assert_eq!(verdict(reply(200, "ok")), Verdict::Success);
        assert_eq!(verdict(reply(204, "{}")), Verdict::Success);
        assert_eq!(
            verdict(reply(200, r#"{"status":"success"}"#)),
            Verdict::Success
        );
        assert!(matches!(
            verdict(reply(200, r#"{"status":"RETRY"}"#)),
            Verdict::Retry(_, None)
        ));
        assert!(matches!(
            verdict(reply(200, r#"{"status":"LATER"}"#)),
            Verdict::Retry(_, None)
        ));
        assert!(matches!(
            verdict(reply(200, r#"{"status":"DROP"}"#)),
            Verdict::Drop(_)
        ));
        assert!(matches!(verdict(reply(404, "")), Verdict::Drop(_)));
        assert!(matches!(
            verdict(reply(503, "")),
            Verdict::Retry(_, Some(503))
        ));
        assert!(matches!(
            verdict(Err("refused".into())),
            Verdict::Retry(_, None)
        ));
    }
}
