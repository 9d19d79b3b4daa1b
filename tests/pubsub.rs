//! The pub/sub API, end to end: one conformance suite run against every broker — the
//! in-memory one, a `redis-server` each test starts, and a tansu Kafka-protocol broker each
//! test starts — through real sidecars' `/v1.0/publish` API and real deliveries to an app
//! (tests/support/subscriber.rs), asserting exact CloudEvents, verdicts, what is acked, what
//! lands in a dead-letter topic, and what comes back after a restart.
//!
//! Kafka runs with `partitionAssignment: manual` (offsets committed to the group all the
//! same): tansu 0.6.0 answers SyncGroup with an empty assignment (tansu#679), so a consumer
//! group never gets partitions from it.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::pubsub::*;
use support::subscriber::{Answer, SubscriberApp};
use support::{client, start_control, SidecarBuilder};

// === the suite ===

async fn cloud_events_and_raw_payloads(kind: Kind) {
    let broker = Broker::start(kind, &["orders", "raw"]);
    let app = SubscriberApp::start(subscribe(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
        {"pubsubname": "pubsub", "topic": "raw", "route": "/raw", "metadata": {"rawPayload": "true"}}
    ])))
    .await;
    let sidecar = broker.sidecar("shop", Some(&app));
    wait_subscribed(&sidecar, 2).await;

    publish_ok(&sidecar, "orders", json!({"total": 3})).await;
    let (status, _) = publish(&sidecar, "orders", "text/plain", "hello").await;
    assert_eq!(status, 204);
    let (status, _) = publish(
        &sidecar,
        "orders",
        "application/octet-stream",
        vec![0u8, 159, 146, 150],
    )
    .await;
    assert_eq!(status, 204);
    let own = json!({"id": "my-id", "source": "me", "type": "my.type", "specversion": "1.0", "topic": "spoofed", "data": {"x": 1}});
    let (status, _) = publish(
        &sidecar,
        "orders",
        "application/cloudevents+json",
        own.to_string(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = publish_to(
        &sidecar,
        "/v1.0/publish/pubsub/raw?metadata.rawPayload=true",
        "application/octet-stream",
        "raw-bytes",
    )
    .await;
    assert_eq!(status, 204);

    let deliveries = app.wait_count(5, LONG).await;
    let on = |path: &str| -> Vec<Value> {
        deliveries
            .iter()
            .filter(|d| d.path == path)
            .map(|d| {
                assert_eq!(d.content_type, "application/cloudevents+json");
                d.body.clone()
            })
            .collect()
    };
    let orders = on("/orders");
    assert_eq!(orders.len(), 4, "{orders:?}");
    let find = |check: &dyn Fn(&Value) -> bool| orders.iter().find(|e| check(e)).cloned().unwrap();
    let json_event = find(&|e| e["data"] == json!({"total": 3}));
    assert_eq!(json_event["datacontenttype"], "application/json");
    assert_eq!(json_event["source"], "shop");
    assert_eq!(json_event["type"], "com.dapr.event.sent");
    assert_eq!(json_event["specversion"], "1.0");
    assert_eq!(json_event["topic"], "orders");
    assert_eq!(json_event["pubsubname"], "pubsub");
    assert_eq!(
        json_event["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(json_event["id"].as_str().unwrap().len(), 36);
    let text_event = find(&|e| e["data"] == "hello");
    assert_eq!(text_event["datacontenttype"], "text/plain");
    let binary = find(&|e| e.get("data_base64").is_some());
    assert_eq!(binary["data_base64"], "AJ+Slg==");
    assert_eq!(binary["datacontenttype"], "application/octet-stream");
    assert!(binary.get("data").is_none());
    let mine = find(&|e| e["id"] == "my-id");
    assert_eq!(mine["type"], "my.type");
    assert_eq!(mine["source"], "me");
    assert_eq!(mine["topic"], "orders", "the sidecar overwrites topic");
    assert_eq!(mine["data"], json!({"x": 1}));

    let raw = on("/raw");
    assert_eq!(raw.len(), 1);
    assert_eq!(
        raw[0]["data_base64"],
        base64::engine::general_purpose::STANDARD.encode("raw-bytes")
    );
    assert_eq!(raw[0]["datacontenttype"], "application/octet-stream");
    wait_outcome(&sidecar, "orders", "delivered", 4.0).await;
    wait_outcome(&sidecar, "raw", "delivered", 1.0).await;
}

async fn every_verdict(kind: Kind) {
    let broker = Broker::start(kind, &["work", "dead"]);
    broker.write("resiliency.yaml", QUICK_RETRIES);
    let app = SubscriberApp::start(subscribe(json!([
        {"pubsubname": "pubsub", "topic": "work", "route": "/work", "deadLetterTopic": "dead"},
        {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"}
    ])))
    .await;
    app.script(|path, event, before| {
        if path == "/dead" {
            return Answer::success();
        }
        match event["data"]["kind"].as_str().unwrap_or("") {
            // Fails 3 times, then accepts.
            "flaky" if before < 3 => Answer::status(500, "busy"),
            "say-retry" if before < 2 => Answer::status(200, r#"{"status":"RETRY"}"#),
            "drop" => Answer::status(200, r#"{"status":"DROP"}"#),
            "gone" => Answer::status(404, ""),
            "empty" => Answer::status(204, ""),
            _ => Answer::success(),
        }
    });
    let sidecar = broker.sidecar("worker", Some(&app));
    wait_subscribed(&sidecar, 2).await;
    for kind in ["flaky", "say-retry", "drop", "gone", "empty", "plain"] {
        publish_ok(&sidecar, "work", json!({"kind": kind})).await;
    }
    // 4 + 3 + 1 + 1 + 1 + 1 on /work, the two dropped ones on /dead.
    let deliveries = app
        .wait_for(LONG, "every verdict settled", |d| {
            d.iter().filter(|d| d.path == "/work").count() >= 11
                && d.iter().filter(|d| d.path == "/dead").count() >= 2
        })
        .await;
    let count = |kind: &str, path: &str| {
        deliveries
            .iter()
            .filter(|d| d.path == path && data_of(d)["kind"] == kind)
            .count()
    };
    assert_eq!(count("flaky", "/work"), 4, "fails 3 times, then accepted");
    assert_eq!(count("say-retry", "/work"), 3);
    assert_eq!(count("drop", "/work"), 1);
    assert_eq!(count("gone", "/work"), 1);
    assert_eq!(count("empty", "/work"), 1);
    assert_eq!(count("plain", "/work"), 1);
    assert_eq!(
        count("drop", "/dead"),
        1,
        "DROP lands in the dead-letter topic once"
    );
    assert_eq!(
        count("gone", "/dead"),
        1,
        "404 lands in the dead-letter topic once"
    );
    // Each message acked once: 4 delivered, 2 dead-lettered on /work; nothing in flight.
    wait_outcome(&sidecar, "work", "delivered", 4.0).await;
    wait_outcome(&sidecar, "work", "dead_lettered", 2.0).await;
    assert_eq!(outcome(&sidecar, "work", "retried").await, 5.0);
    assert_eq!(outcome(&sidecar, "work", "parked").await, 0.0);
    // Nothing comes again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.deliveries().len(), deliveries.len());
    if let Some(redis) = &broker.redis {
        assert_eq!(
            redis.cli(&["XPENDING", "work", "worker"]).lines().next(),
            Some("0")
        );
    }
}

async fn exhausted_without_dead_letter_is_parked_not_acked(kind: Kind) {
    let broker = Broker::start(kind, &["jobs"]);
    broker.write("resiliency.yaml", QUICK_RETRIES);
    let subscriptions = json!([{"pubsubname": "pubsub", "topic": "jobs", "route": "/jobs"}]);
    let app = SubscriberApp::start(subscribe(subscriptions.clone())).await;
    app.script(|_, event, _| match event["data"]["kind"].as_str() {
        Some("poison") => Answer::status(500, "cannot"),
        _ => Answer::success(),
    });
    let mut sidecar = broker.sidecar("jobs-app", Some(&app));
    wait_subscribed(&sidecar, 1).await;
    publish_ok(&sidecar, "jobs", json!({"kind": "poison"})).await;
    publish_ok(&sidecar, "jobs", json!({"kind": "fine"})).await;
    let deliveries = app
        .wait_for(LONG, "4 attempts at the poison message", |d| {
            d.iter().filter(|d| data_of(d)["kind"] == "poison").count() >= 4
        })
        .await;
    wait_outcome(&sidecar, "jobs", "parked", 1.0).await;
    let poison_id = deliveries
        .iter()
        .find(|d| data_of(d)["kind"] == "poison")
        .unwrap()
        .id()
        .to_string();
    let metadata = support::get_json(sidecar.url("/v1.0/metadata")).await;
    let parked = &metadata["subscriptions"][0]["status"]["parked"];
    assert_eq!(parked.as_array().unwrap().len(), 1, "{metadata}");
    assert!(
        sidecar.proc.output().contains(&poison_id),
        "the parked message's id is logged"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.deliveries()
            .iter()
            .filter(|d| data_of(d)["kind"] == "poison")
            .count(),
        4,
        "a parked message is not retried again by this sidecar"
    );
    if kind == Kind::Memory {
        return; // in-memory pub/sub keeps nothing across a restart
    }
    if let Some(redis) = &broker.redis {
        assert_eq!(
            redis.cli(&["XPENDING", "jobs", "jobs-app"]).lines().next(),
            Some("1")
        );
    }
    // Not acked: after a restart (kill -9), the broker hands it out again.
    sidecar.proc.signal(nix::sys::signal::Signal::SIGKILL);
    sidecar.proc.wait_exit(Duration::from_secs(5));
    app.script(|_, _, _| Answer::success());
    let sidecar = broker.sidecar("jobs-app", Some(&app));
    app.wait_for(LONG, "the parked message again after the restart", |d| {
        d.iter().filter(|d| data_of(d)["kind"] == "poison").count() >= 5
    })
    .await;
    // Kafka held the partition at the parked message's offset, so the message after it
    // comes again too; Redis redelivers only the pending one.
    let again = if kind == Kind::Kafka { 2.0 } else { 1.0 };
    wait_outcome(&sidecar, "jobs", "delivered", again).await;
}

async fn routing_rules(kind: Kind) {
    let broker = Broker::start(kind, &["payments"]);
    broker.write(
        "subscription.yaml",
        "\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: payments}
spec:
  pubsubname: pubsub
  topic: payments
  routes:
    rules:
    - match: event.type == \"refund\"
      path: /refunds
    - match: event.data.total > 100
      path: /big
    default: /small
scopes: [ledger]
",
    );
    let app = SubscriberApp::start(None).await;
    let sidecar = broker.sidecar("ledger", Some(&app));
    let metadata = wait_subscribed(&sidecar, 1).await;
    assert_eq!(metadata["subscriptions"][0]["type"], "DECLARATIVE");
    publish_ok(&sidecar, "payments", json!({"total": 500})).await;
    publish_ok(&sidecar, "payments", json!({"total": 5})).await;
    let refund = json!({"id": "r1", "source": "bank", "type": "refund", "specversion": "1.0", "data": {"total": 900}});
    let (status, _) = publish(
        &sidecar,
        "payments",
        "application/cloudevents+json",
        refund.to_string(),
    )
    .await;
    assert_eq!(status, 204);
    let deliveries = app.wait_count(3, LONG).await;
    let path_of = |check: &dyn Fn(&Value) -> bool| {
        deliveries
            .iter()
            .find(|d| check(&d.body))
            .map(|d| d.path.clone())
            .unwrap()
    };
    assert_eq!(
        path_of(&|e| e["data"]["total"] == 500 && e["type"] != "refund"),
        "/big"
    );
    assert_eq!(path_of(&|e| e["data"]["total"] == 5), "/small");
    assert_eq!(path_of(&|e| e["type"] == "refund"), "/refunds");
}

async fn bulk_publish_and_bulk_subscribe(kind: Kind) {
    let broker = Broker::start(kind, &["batch", "batch-dead"]);
    broker.write("resiliency.yaml", QUICK_RETRIES);
    let app = SubscriberApp::start(subscribe(json!([
        {"pubsubname": "pubsub", "topic": "batch", "route": "/batch", "deadLetterTopic": "batch-dead",
         "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 300}},
        {"pubsubname": "pubsub", "topic": "batch-dead", "route": "/dead"}
    ])))
    .await;
    // Per entry: "ok" and text succeed, "later" always asks for a retry, "no" is dropped.
    app.script(|path, body, _| {
        if path != "/batch" {
            return Answer::success();
        }
        let statuses: Vec<Value> = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                let status = match entry["event"]["data"]["n"].as_str().unwrap_or("") {
                    "later" => "RETRY",
                    "no" => "DROP",
                    _ => "SUCCESS",
                };
                json!({"entryId": entry["entryId"], "status": status})
            })
            .collect();
        Answer::status(200, &json!({ "statuses": statuses }).to_string())
    });
    let sidecar = broker.sidecar("batcher", Some(&app));
    wait_subscribed(&sidecar, 2).await;
    let body = json!([
        {"entryId": "1", "event": {"n": "ok"}, "contentType": "application/json"},
        {"entryId": "2", "event": "just text", "contentType": "text/plain"},
        {"entryId": "3", "event": {"n": "no"}, "contentType": "application/json"},
        {"entryId": "4", "event": {"n": "later"}, "contentType": "application/json"}
    ]);
    let (status, text) = publish_to(
        &sidecar,
        "/v1.0-alpha1/publish/bulk/pubsub/batch",
        "application/json",
        body.to_string(),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    // The first bulk delivery carries all four entries in the bulk shape.
    let deliveries = app
        .wait_for(LONG, "a bulk delivery", |d| {
            d.iter().any(|d| d.path == "/batch")
        })
        .await;
    let first = deliveries.iter().find(|d| d.path == "/batch").unwrap();
    assert_eq!(first.content_type, "application/json");
    assert_eq!(first.body["type"], "com.dapr.event.sent.bulk");
    assert_eq!(first.body["topic"], "batch");
    assert_eq!(first.body["pubsubname"], "pubsub");
    let entries = first.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{}", first.body);
    assert!(entries
        .iter()
        .all(|e| e["contentType"] == "application/cloudevents+json"));
    assert!(entries.iter().any(|e| e["event"]["data"] == "just text"));
    // "later" is retried on its own, and keeps getting RETRY: it is retried until the
    // policy's 3 retries run out, then dead-lettered with "no".
    let deliveries = app
        .wait_for(LONG, "both failed entries dead-lettered", |d| {
            d.iter().filter(|d| d.path == "/dead").count() >= 2
        })
        .await;
    let bulks: Vec<_> = deliveries.iter().filter(|d| d.path == "/batch").collect();
    assert_eq!(bulks.len(), 4, "the first bulk and 3 retries");
    for retry in &bulks[1..] {
        let entries = retry.body["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "only the failed entry is resent");
        assert_eq!(entries[0]["event"]["data"]["n"], "later");
    }
    let dead: Vec<Value> = deliveries
        .iter()
        .filter(|d| d.path == "/dead")
        .map(|d| d.body["data"]["n"].clone())
        .collect();
    assert!(
        dead.contains(&json!("no")) && dead.contains(&json!("later")),
        "{dead:?}"
    );
    wait_outcome(&sidecar, "batch", "delivered", 2.0).await;
    wait_outcome(&sidecar, "batch", "dead_lettered", 2.0).await;

    // Malformed bulk bodies publish nothing and say why.
    for (body, want) in [
        ("{\"not\": \"a list\"}", "request body is not valid"),
        ("[{\"entryId\": \"1\"}]", "missing field `event`"),
        (
            "[{\"entryId\": \"1\", \"event\": 1}, {\"entryId\": \"1\", \"event\": 2}]",
            "entryId \\\"1\\\" is given twice",
        ),
    ] {
        let (status, text) = publish_to(
            &sidecar,
            "/v1.0-alpha1/publish/bulk/pubsub/batch",
            "application/json",
            body,
        )
        .await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
        assert!(text.contains("ERR_MALFORMED_REQUEST"), "{text}");
    }
    // The stable path works too.
    let (status, _) = publish_to(
        &sidecar,
        "/v1.0/publish/bulk/pubsub/batch",
        "application/json",
        json!([{"entryId": "a", "event": {"n": "ok"}}]).to_string(),
    )
    .await;
    assert_eq!(status, 204);
}

async fn scopes_and_names(kind: Kind) {
    let broker = Broker::start(kind, &["orders", "audit"]);
    broker.write(
        "scoped.yaml",
        &broker.component_with("elsewhere", "", "scopes: [billing]\n"),
    );
    broker.write(
        "limited.yaml",
        &broker.component(
            "limited",
            "  - {name: publishingScopes, value: \"shop=orders;other=audit\"}\n  - {name: allowedTopics, value: \"orders,audit\"}\n",
        ),
    );
    // A dead-letter topic is a publish: one outside the app's publishing scope is refused.
    broker.write(
        "dead-letters.yaml",
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: dlq-out-of-scope}\nspec:\n  pubsubname: limited\n  topic: orders\n  routes: {default: /orders}\n  deadLetterTopic: audit\n",
    );
    let sidecar = broker.sidecar("shop", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metadata = support::get_json(sidecar.url("/v1.0/metadata")).await;
        let state = metadata["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["topic"] == "orders" && s["pubsubname"] == "limited")
            .map(|s| s["status"]["state"].as_str().unwrap_or("").to_string());
        if let Some(state) = state.filter(|s| s.starts_with("failed")) {
            assert_eq!(
                state,
                "failed: deadLetterTopic audit is not allowed for app id shop to publish to (allowedTopics / publishingScopes)"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metadata}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cases = [
        ("/v1.0/publish/nowhere/orders", 404, "ERR_PUBSUB_NOT_FOUND"),
        (
            "/v1.0/publish/elsewhere/orders",
            404,
            "ERR_PUBSUB_NOT_FOUND",
        ),
        ("/v1.0/publish/limited/audit", 403, "ERR_PUBSUB_FORBIDDEN"),
        ("/v1.0/publish/limited/refunds", 403, "ERR_PUBSUB_FORBIDDEN"),
        ("/v1.0/publish/pubsub/", 404, "ERR_TOPIC_NAME_EMPTY"),
        ("/v1.0/publish//orders", 404, "ERR_PUBSUB_EMPTY"),
        (
            "/v1.0-alpha1/publish/bulk/nowhere/orders",
            404,
            "ERR_PUBSUB_NOT_FOUND",
        ),
    ];
    for (path, status, code) in cases {
        let (got, text) = publish_to(&sidecar, path, "application/json", "{}").await;
        assert_eq!(got, status, "{path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["errorCode"], code, "{path}: {text}");
    }
    let (status, text) = publish_to(
        &sidecar,
        "/v1.0/publish/limited/orders",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(status, 204, "{text}");
    let (status, text) = publish_to(
        &sidecar,
        "/v1.0/publish/pubsub/orders",
        "application/cloudevents+json",
        "[not an object",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("ERR_PUBSUB_CLOUD_EVENTS_SER"), "{text}");
    let get = client()
        .get(sidecar.url("/v1.0/publish/pubsub/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
}

async fn subscriptions_follow_swaps(kind: Kind) {
    let broker = Broker::start(kind, &["feed"]);
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("pubsub.yaml"),
        broker.component("pubsub", ""),
    )
    .unwrap();
    let control = start_control(config.path());
    let app = SubscriberApp::start(None).await;
    let sidecar = SidecarBuilder::new("reader", broker.registry.path())
        .app_port(app.port)
        .arg("--control-plane")
        .arg(&format!("http://{}", control.listen))
        .start();
    let subscription = |path: &str| {
        format!(
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{name: feed}}\nspec:\n  pubsubname: pubsub\n  topic: feed\n  routes:\n    default: {path}\n"
        )
    };
    // Added by a swap: deliveries start.
    std::fs::write(config.path().join("sub.yaml"), subscription("/v1")).unwrap();
    wait_subscribed(&sidecar, 1).await;
    // A stream of messages while the route changes twice: each is delivered exactly once.
    let publisher = {
        let url = sidecar.url("/v1.0/publish/pubsub/feed");
        tokio::spawn(async move {
            for n in 0..200 {
                let response = client()
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(json!({"n": n}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 204);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(config.path().join("sub.yaml"), subscription("/v2")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(config.path().join("sub.yaml"), subscription("/v3")).unwrap();
    publisher.await.unwrap();
    let deliveries = app.wait_count(200, LONG).await;
    let mut seen: Vec<i64> = deliveries
        .iter()
        .map(|d| data_of(d)["n"].as_i64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..200).collect::<Vec<_>>(),
        "each message exactly once"
    );
    assert!(
        deliveries.iter().any(|d| d.path == "/v3"),
        "the last route took over"
    );
    let last_v1 = deliveries.iter().rposition(|d| d.path == "/v1");
    let first_v3 = deliveries.iter().position(|d| d.path == "/v3").unwrap();
    assert!(last_v1.is_none_or(|i| i < first_v3));
    // Removed by a swap: no more deliveries.
    std::fs::remove_file(config.path().join("sub.yaml")).unwrap();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let metadata = support::get_json(sidecar.url("/v1.0/metadata")).await;
        if metadata["subscriptions"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metadata}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_ok(&sidecar, "feed", json!({"n": "after"})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        app.deliveries().len(),
        200,
        "no delivery once the subscription is gone"
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() { super::$case(super::Kind::Memory).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() { super::$case(super::Kind::Redis).await })*
        }
        mod kafka {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() { super::$case(super::Kind::Kafka).await })*
        }
    };
}

suite!(
    cloud_events_and_raw_payloads,
    every_verdict,
    exhausted_without_dead_letter_is_parked_not_acked,
    routing_rules,
    bulk_publish_and_bulk_subscribe,
    scopes_and_names,
    subscriptions_follow_swaps,
);

// === in-memory pub/sub across the sidecars of one host ===

/// A message published on one app's sidecar reaches the subscribed app behind another sidecar
/// on the host (handed over through the local registry), exactly once per message.
#[tokio::test(flavor = "multi_thread")]
async fn in_memory_messages_reach_the_apps_behind_other_sidecars_on_the_host() {
    let broker = Broker::start(Kind::Memory, &[]);
    let app = SubscriberApp::start(subscribe(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
    ])))
    .await;
    let consumer = broker.sidecar("consumer", Some(&app));
    wait_subscribed(&consumer, 1).await;
    let producer = broker.sidecar("producer", None);
    for n in 0..3 {
        publish_ok(&producer, "orders", json!({ "n": n })).await;
    }
    let deliveries = app.wait_count(3, Duration::from_secs(10)).await;
    let mut seen: Vec<i64> = deliveries
        .iter()
        .map(|d| {
            assert_eq!(d.path, "/orders");
            assert_eq!(d.body["source"], "producer", "{}", d.body);
            assert_eq!(d.body["pubsubname"], "pubsub", "{}", d.body);
            d.body["data"]["n"].as_i64().unwrap()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.deliveries().len(), 3, "each message is delivered once");
    assert_eq!(
        outcome(&consumer, "orders", "delivered").await,
        3.0,
        "the subscriber's sidecar delivered them"
    );
}

/// The hand-over endpoint on the mesh port takes messages from this host's loopback only: a
/// client reaching the mesh port over a network address is refused, and nothing is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn the_in_memory_hand_over_is_refused_from_beyond_loopback() {
    let broker = Broker::start(Kind::Memory, &[]);
    let app = SubscriberApp::start(subscribe(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
    ])))
    .await;
    // Plaintext on the mesh port, so that the test itself can reach the hand-over endpoint
    // (under mTLS a client without a certificate never gets this far).
    let consumer = broker.sidecar_with("consumer", Some(&app), SidecarBuilder::plaintext);
    wait_subscribed(&consumer, 1).await;
    let hand_over = |host: String| {
        let url = format!(
            "http://{host}:{}/.outrigger/pubsub/pubsub/orders",
            consumer.mesh.port()
        );
        async move {
            let response = client()
                .post(url)
                .header("content-type", "application/octet-stream")
                .header("outrigger-pubsub-metadata", "{}")
                .body(r#"{"specversion":"1.0","id":"forged","source":"x","type":"t","data":{}}"#)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    // An unknown in-memory pubsub from loopback: 404, as the registry's peers expect.
    let response = client()
        .post(format!(
            "http://127.0.0.1:{}/.outrigger/pubsub/nowhere/orders",
            consumer.mesh.port()
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    match non_loopback_address() {
        Some(address) => {
            let (status, text) = hand_over(address.clone()).await;
            assert_eq!(status, 403, "from {address}: {text}");
            assert!(text.contains("only taken from sidecars on this host"), "{text}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(app.deliveries().is_empty(), "nothing was delivered");
        }
        None => eprintln!(
            "SKIPPED the non-loopback half of the_in_memory_hand_over_is_refused_from_beyond_loopback: this host has no non-loopback IPv4 address to connect from"
        ),
    }
    // An app invoking that path on another app reaches the app, not its sidecar's broker.
    let producer = broker.sidecar_with("producer", None, SidecarBuilder::plaintext);
    let response = client()
        .post(producer.url("/v1.0/invoke/consumer/method/.outrigger/pubsub/pubsub/orders"))
        .header("outrigger-pubsub-metadata", "{}")
        .body(r#"{"specversion":"1.0","id":"via-invoke","source":"x","type":"t","data":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the app answered the invocation");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to_orders: Vec<_> = app
        .deliveries()
        .into_iter()
        .filter(|d| d.path == "/orders")
        .collect();
    assert!(to_orders.is_empty(), "an invocation is no hand-over");
    // The same message from loopback (a sidecar on this host) is taken and delivered.
    let (status, text) = hand_over("127.0.0.1".to_string()).await;
    assert_eq!(status, 204, "{text}");
    let deliveries = app
        .wait_for(Duration::from_secs(10), "the hand-over", |d| {
            d.iter().any(|d| d.path == "/orders")
        })
        .await;
    let delivered: Vec<_> = deliveries.iter().filter(|d| d.path == "/orders").collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].body["id"], "forged");
}

/// The first non-loopback IPv4 address of this host (`hostname -I`), if it has one.
fn non_loopback_address() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_unspecified())
        .map(|a| a.to_string())
}

/// A message no request can carry as it stands: a `traceparent` a header cannot hold is left
/// out and the message delivered; a route that is no request target drops the message at once
/// (counted, not retried, never parked).
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_that_no_request_can_carry_are_settled_not_retried() {
    let broker = Broker::start(Kind::Memory, &[]);
    let app = SubscriberApp::start(subscribe(json!([
        {"pubsubname": "pubsub", "topic": "odd", "route": "/odd"},
        {"pubsubname": "pubsub", "topic": "unroutable", "route": "/has space"}
    ])))
    .await;
    let sidecar = broker.sidecar("careful", Some(&app));
    wait_subscribed(&sidecar, 2).await;
    let event = json!({"specversion": "1.0", "id": "odd-1", "source": "s", "type": "t",
        "traceparent": "00-abc\r\nx-injected: 1", "data": {"n": 1}});
    let (status, text) = publish_to(
        &sidecar,
        "/v1.0/publish/pubsub/odd?metadata.rawPayload=true",
        "application/json",
        event.to_string(),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    let deliveries = app.wait_count(1, Duration::from_secs(10)).await;
    assert_eq!(deliveries[0].path, "/odd");
    assert_eq!(deliveries[0].body["id"], "odd-1");
    wait_outcome(&sidecar, "odd", "delivered", 1.0).await;

    publish_ok(&sidecar, "unroutable", json!({"n": 2})).await;
    wait_outcome(&sidecar, "unroutable", "dropped", 1.0).await;
    assert_eq!(outcome(&sidecar, "unroutable", "retried").await, 0.0);
    assert_eq!(outcome(&sidecar, "unroutable", "parked").await, 0.0);
    assert_eq!(
        app.deliveries().len(),
        1,
        "nothing reached the app for /has space"
    );
}
