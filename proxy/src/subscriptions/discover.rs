//! Programmatic subscriptions: the app's answer to `GET /dapr/subscribe`, asked once it
//! listens. `404` (or any answer but 200) means none. A malformed answer is logged with the
//! reason and the sidecar goes on without programmatic subscriptions; one malformed entry is
//! logged and skipped, the others start.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use outrigger_config::dapr::{
    BulkSubscribe, ObjectMeta, Subscription, SubscriptionRoutes, SubscriptionRule, SubscriptionSpec,
};
use serde::Deserialize;

use crate::http1::head::HeaderEdits;
use crate::shared::Shared;
use crate::upstream::call;
use crate::upstream::Target;

/// The largest `/dapr/subscribe` answer read, and the most subscriptions taken from it.
const MAX_ANSWER: usize = 1024 * 1024;
const MAX_SUBSCRIPTIONS: usize = 1000;
/// Each ask's limit, and the wait between asks while the app does not listen yet.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// One entry as the app writes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    pubsubname: String,
    topic: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    routes: Option<Routes>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    bulk_subscribe: Option<BulkEntry>,
}

#[derive(Debug, Deserialize)]
struct Routes {
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(rename = "match", default)]
    match_expr: String,
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkEntry {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    max_messages_count: Option<u32>,
    #[serde(default)]
    max_await_duration_ms: Option<u64>,
}

/// Asks the app until it answers; `None` when the sidecar is shutting down first.
pub(crate) async fn discover(shared: &Shared) -> Option<Vec<Subscription>> {
    let app = shared.app.as_ref()?;
    let mut waited = Duration::ZERO;
    let mut told = false;
    loop {
        if shared.is_draining() {
            return None;
        }
        match ask(shared).await {
            Ok(Some(body)) => return Some(parse(&body)),
            Ok(None) => return Some(Vec::new()),
            Err(e) => {
                if !told && waited >= Duration::from_secs(10) {
                    tracing::info!(port = app.port, error = %e, "waiting for the app to answer GET /dapr/subscribe");
                    told = true;
                }
            }
        }
        tokio::time::sleep(RETRY_EVERY).await;
        waited += RETRY_EVERY;
    }
}

/// One ask: `Ok(Some(body))` on 200, `Ok(None)` on any other answer, `Err` when the app did
/// not answer.
async fn ask(shared: &Shared) -> Result<Option<Bytes>, String> {
    let Some(app) = shared.app.as_ref() else {
        return Ok(None);
    };
    let token = shared.options.app_api_token.as_deref();
    let mut headers = vec![("accept", "application/json")];
    if let Some(token) = token {
        headers.push(("dapr-api-token", token));
    }
    let request = call::request(
        Method::GET,
        &app.authority,
        "/dapr/subscribe",
        &headers,
        Bytes::new(),
    )?;
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
    let reply = call::call(
        &target,
        request,
        &HeaderEdits::default(),
        MAX_ANSWER,
        ASK_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    match reply.status {
        200 => Ok(Some(reply.body)),
        404 => Ok(None),
        status => {
            tracing::warn!(
                status,
                "the app answered GET /dapr/subscribe with {status}; no programmatic subscriptions"
            );
            Ok(None)
        }
    }
}

/// The subscriptions of a `/dapr/subscribe` answer; what is malformed is logged and left out.
fn parse(body: &[u8]) -> Vec<Subscription> {
    let entries: Vec<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(serde_json::Value::Array(entries)) => entries,
        Ok(_) => {
            tracing::error!("the app's GET /dapr/subscribe answer is not a JSON array; no programmatic subscriptions");
            return Vec::new();
        }
        Err(e) => {
            tracing::error!(error = %e, "the app's GET /dapr/subscribe answer is not JSON; no programmatic subscriptions");
            return Vec::new();
        }
    };
    if entries.len() > MAX_SUBSCRIPTIONS {
        tracing::error!(count = entries.len(), "the app's GET /dapr/subscribe answer lists more than {MAX_SUBSCRIPTIONS} subscriptions; no programmatic subscriptions");
        return Vec::new();
    }
    entries
        .into_iter()
        .enumerate()
        .filter_map(|(i, value)| match entry(value) {
            Ok(subscription) => Some(subscription),
            Err(e) => {
                tracing::error!(index = i, error = %e, "a subscription in the app's GET /dapr/subscribe answer is malformed; skipped");
                None
            }
        })
        .collect()
}

fn entry(value: serde_json::Value) -> Result<Subscription, String> {
    let entry: Entry = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let (rules, default) = match entry.routes {
        Some(routes) => (routes.rules, routes.default),
        None => (Vec::new(), None),
    };
    let metadata = entry
        .metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    let subscription = Subscription {
        metadata: ObjectMeta {
            name: format!("{}/{}", entry.pubsubname, entry.topic),
            ..Default::default()
        },
        spec: SubscriptionSpec {
            pubsubname: entry.pubsubname,
            topic: entry.topic,
            routes: SubscriptionRoutes {
                rules: rules
                    .into_iter()
                    .map(|r| SubscriptionRule {
                        match_expr: r.match_expr,
                        path: r.path,
                    })
                    .collect(),
                default: default.or(entry.route),
            },
            route: None,
            dead_letter_topic: entry.dead_letter_topic.filter(|t| !t.is_empty()),
            metadata,
            bulk_subscribe: entry.bulk_subscribe.map(|b| BulkSubscribe {
                enabled: b.enabled,
                max_messages_count: b.max_messages_count,
                max_await_duration_ms: b.max_await_duration_ms,
            }),
        },
        scopes: Vec::new(),
    };
    outrigger_config::subscription::check(&subscription).map_err(|(field, e)| {
        format!(
            "{}/{}: {}: {e}",
            subscription.spec.pubsubname,
            subscription.spec.topic,
            field.trim_start_matches("spec.")
        )
    })?;
    Ok(subscription)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_routes_and_the_short_form_both_parse() {
        let found = parse(
            br#"[{"pubsubname":"pubsub","topic":"a","route":"/a"},
                {"pubsubname":"pubsub","topic":"b","routes":{"rules":[{"match":"event.type == \"x\"","path":"/x"}],"default":"/b"},
                 "deadLetterTopic":"dead","metadata":{"rawPayload":"true"},"bulkSubscribe":{"enabled":true,"maxMessagesCount":10}}]"#,
        );
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].spec.routes.default.as_deref(), Some("/a"));
        assert_eq!(found[1].spec.routes.rules[0].path, "/x");
        assert_eq!(found[1].spec.dead_letter_topic.as_deref(), Some("dead"));
        assert_eq!(found[1].spec.metadata["rawPayload"], "true");
        assert_eq!(
            found[1]
                .spec
                .bulk_subscribe
                .as_ref()
                .unwrap()
                .max_messages_count,
            Some(10)
        );
    }

    #[test]
    fn malformed_answers_and_entries_are_left_out() {
        assert!(parse(b"not json").is_empty());
        assert!(parse(br#"{"pubsubname":"p"}"#).is_empty());
        let found = parse(
            br#"[{"pubsubname":"pubsub"},
                {"pubsubname":"pubsub","topic":"bad","routes":{"rules":[{"match":"event.type ==","path":"/x"}]}},
                {"pubsubname":"pubsub","topic":"good","route":"/good"}]"#,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].spec.topic, "good");
    }
}
