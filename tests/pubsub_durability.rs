//! Pub/sub under stress: nothing lost while the subscriber's sidecar is killed (and Redis
//! restarted), a slow app slowing the pull instead of filling memory, per-partition order on
//! Kafka with a retried message, a clean drain on SIGTERM, and bad input from the app.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::pubsub::*;
use support::subscriber::{Answer, SubscriberApp};
use support::{client, SidecarProc};

const MESSAGES: usize = 10_000;

/// Publishes `{"n": i}` for every i in `range` with `concurrency` publishes in flight; a
/// publish the sidecar refused (the broker restarting) is tried again until it is taken.
/// `published` counts the taken ones.
async fn publish_all(
    url: String,
    range: std::ops::Range<usize>,
    concurrency: usize,
    published: Arc<AtomicUsize>,
) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, next, published) = (url.clone(), next.clone(), published.clone());
            tokio::spawn(async move {
                let http = client();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        return;
                    }
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let sent = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(json!({ "n": n }).to_string())
                            .send()
                            .await;
                        if matches!(&sent, Ok(r) if r.status() == 204) {
                            published.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "message {n} was never taken: {sent:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

async fn wait_published(published: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while published.load(Ordering::Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "publishing stalled at {}",
            published.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kill9(sidecar: &mut SidecarProc) {
    sidecar.proc.signal(Signal::SIGKILL);
    sidecar.proc.wait_exit(Duration::from_secs(5));
}

/// 10,000 messages published while the subscriber's sidecar is killed twice (and, on Redis,
/// the Redis server killed and restarted with appendonly): every one delivered.
async fn nothing_lost(kind: Kind) {
    let broker = Broker::start(kind, &["events"]);
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "events", "route": "/events"}
    ])))
    .await;
    let publisher = broker.sidecar("producer", None);
    let mut subscriber = broker.sidecar("consumer", Some(&app));
    wait_subscribed(&subscriber, 1).await;
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(publish_all(
        publisher.url("/v1.0/publish/pubsub/events"),
        0..MESSAGES,
        16,
        published.clone(),
    ));
    let mut broker = broker;
    wait_published(&published, MESSAGES / 4).await;
    kill9(&mut subscriber);
    tokio::time::sleep(Duration::from_millis(300)).await;
    subscriber = broker.sidecar("consumer", Some(&app));
    if let Some(redis) = broker.redis.as_mut() {
        wait_published(&published, MESSAGES / 2).await;
        redis.restart();
    }
    wait_published(&published, MESSAGES * 3 / 4).await;
    kill9(&mut subscriber);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _subscriber = broker.sidecar("consumer", Some(&app));
    publishing.await.unwrap();
    let deliveries = app
        .wait_for(Duration::from_secs(180), "every message delivered", |d| {
            distinct(d).len() >= MESSAGES
        })
        .await;
    let seen = distinct(&deliveries);
    assert_eq!(seen.len(), MESSAGES);
    assert!(seen.iter().all(|n| (*n as usize) < MESSAGES));
    eprintln!(
        "{kind:?}: {} distinct messages in {} deliveries ({} redelivered)",
        seen.len(),
        deliveries.len(),
        deliveries.len() - seen.len()
    );
}

fn distinct(deliveries: &[support::subscriber::Delivery]) -> HashSet<i64> {
    deliveries
        .iter()
        .filter_map(|d| d.body["data"]["n"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_lost_on_redis_streams_across_kills_and_a_redis_restart() {
    nothing_lost(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_lost_on_kafka_across_kills() {
    nothing_lost(Kind::Kafka).await;
}

/// An app answering in 1 s with 4 in flight: never more than 4 deliveries at once, the pull
/// from Redis throttled (the rest stay in the stream, not in the sidecar), RSS under 64 MB.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_app_slows_the_pull_instead_of_filling_memory() {
    let broker = Broker::start(Kind::Redis, &["slow"]);
    broker.write(
        "pubsub.yaml",
        &broker.component(
            "pubsub",
            "  - {name: concurrency, value: \"4\"}\n  - {name: queueDepth, value: \"10\"}\n",
        ),
    );
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "slow", "route": "/slow"}
    ])))
    .await;
    app.script(|_, _, _| Answer::success().after(Duration::from_secs(1)));
    let publisher = broker.sidecar("producer", None);
    let subscriber = broker.sidecar("consumer", Some(&app));
    wait_subscribed(&subscriber, 1).await;
    let published = Arc::new(AtomicUsize::new(0));
    publish_all(
        publisher.url("/v1.0/publish/pubsub/slow"),
        0..MESSAGES,
        32,
        published.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let redis = broker.redis.as_ref().unwrap();
    assert_eq!(redis.cli(&["XLEN", "slow"]), MESSAGES.to_string());
    let pending: usize = redis
        .cli(&["XPENDING", "slow", "consumer"])
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // In flight (4), the reader's queue (10) and one read (10): the rest waits in Redis.
    assert!(
        pending <= 4 + 10 + 10,
        "{pending} entries pulled into the sidecar"
    );
    assert!(
        app.most_at_once() <= 4,
        "{} deliveries at once",
        app.most_at_once()
    );
    assert_eq!(app.most_at_once(), 4);
    let rss = subscriber.proc.rss_bytes().unwrap();
    assert!(rss < 64 << 20, "sidecar RSS {} MB", rss >> 20);
    let metrics = metric(
        &subscriber,
        "outrigger_pubsub_in_flight",
        &[("topic", "slow")],
    )
    .await;
    assert!(metrics <= 14.0, "in flight gauge {metrics}");
    eprintln!(
        "pending {pending}, RSS {} MB, at once {}",
        rss >> 20,
        app.most_at_once()
    );
}

/// One Kafka partition, concurrency 1: the app sees messages in publish order, the retried
/// one repeated in its place before anything after it.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_keeps_partition_order_through_a_retry() {
    let broker = Broker::start(Kind::Kafka, &["ordered"]);
    broker.write(
        "pubsub.yaml",
        &broker.component("pubsub", "  - {name: concurrency, value: \"1\"}\n"),
    );
    broker.write("resiliency.yaml", QUICK_RETRIES);
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "ordered", "route": "/ordered"}
    ])))
    .await;
    app.script(|_, event, before| match event["data"]["n"].as_i64() {
        Some(5) if before < 2 => Answer::status(503, "not yet"),
        _ => Answer::success(),
    });
    let sidecar = broker.sidecar("orderly", Some(&app));
    wait_subscribed(&sidecar, 1).await;
    for n in 0..20 {
        publish_ok(&sidecar, "ordered", json!({ "n": n })).await;
    }
    let deliveries = app.wait_count(22, LONG).await;
    let order: Vec<i64> = deliveries
        .iter()
        .map(|d| d.body["data"]["n"].as_i64().unwrap())
        .collect();
    let mut want: Vec<i64> = (0..20).collect();
    want.splice(5..5, [5, 5]);
    assert_eq!(order, want);
}

/// SIGTERM: the sidecar stops pulling, finishes the deliveries under way (their messages
/// acked), and leaves the rest unacknowledged; after a restart exactly those come.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_deliveries_under_way_and_acks_nothing_else() {
    let broker = Broker::start(Kind::Redis, &["drain"]);
    broker.write(
        "pubsub.yaml",
        &broker.component(
            "pubsub",
            "  - {name: concurrency, value: \"2\"}\n  - {name: queueDepth, value: \"4\"}\n",
        ),
    );
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "drain", "route": "/drain"}
    ])))
    .await;
    app.script(|_, _, _| Answer::success().after(Duration::from_millis(800)));
    let mut sidecar = broker.sidecar("drainer", Some(&app));
    wait_subscribed(&sidecar, 1).await;
    for n in 0..10 {
        publish_ok(&sidecar, "drain", json!({ "n": n })).await;
    }
    app.wait_count(2, LONG).await;
    sidecar.proc.signal(Signal::SIGTERM);
    let status = sidecar.proc.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", sidecar.proc.output());
    let before: Vec<i64> = app
        .deliveries()
        .iter()
        .map(|d| d.body["data"]["n"].as_i64().unwrap())
        .collect();
    assert!(before.len() < 10, "{before:?}");
    let redis = broker.redis.as_ref().unwrap();
    let acked = 10
        - redis
            .cli(&["XPENDING", "drain", "drainer"])
            .lines()
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()
        - undelivered_never_read(redis);
    assert_eq!(acked, before.len(), "acked exactly what the app finished");
    // After a restart, the rest — and none of the finished ones — arrive.
    app.script(|_, _, _| Answer::success());
    let _sidecar = broker.sidecar("drainer", Some(&app));
    let all = app.wait_count(10, LONG).await;
    let after: Vec<i64> = all[before.len()..]
        .iter()
        .map(|d| d.body["data"]["n"].as_i64().unwrap())
        .collect();
    let mut everything: Vec<i64> = before.iter().chain(&after).copied().collect();
    everything.sort_unstable();
    assert_eq!(
        everything,
        (0..10).collect::<Vec<_>>(),
        "before {before:?}, after {after:?}"
    );
}

/// Entries of the stream the group has not read at all (neither pending nor acked).
fn undelivered_never_read(redis: &support::backends::RedisServer) -> usize {
    let info = redis.cli(&["XINFO", "GROUPS", "drain"]);
    let lines: Vec<&str> = info.lines().collect();
    let lag = lines
        .iter()
        .position(|l| *l == "lag")
        .and_then(|i| lines.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    lag
}

/// A malformed `/dapr/subscribe` answer is logged with the reason; the sidecar keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_subscribe_answer_is_logged_and_the_sidecar_keeps_serving() {
    let broker = Broker::start(Kind::Memory, &[]);
    for (answer, reason) in [
        ("{not json", "is not JSON"),
        ("{\"pubsubname\": \"pubsub\"}", "is not a JSON array"),
        ("[{\"pubsubname\": \"pubsub\"}]", "missing field `topic`"),
        (
            "[{\"pubsubname\": \"pubsub\", \"topic\": \"t\", \"routes\": {\"rules\": [{\"match\": \"event.x ==\", \"path\": \"/x\"}]}}]",
            "invalid CEL expression",
        ),
    ] {
        let app = SubscriberApp::start(None).await;
        app.set_subscribe_raw(answer);
        let sidecar = broker.sidecar("confused", Some(&app));
        let deadline = Instant::now() + LONG;
        while !sidecar.proc.output().contains(reason) {
            assert!(Instant::now() < deadline, "{answer}: no log naming {reason:?}:\n{}", sidecar.proc.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let health = client().get(sidecar.url("/v1.0/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 204);
        let metadata: Value = support::get_json(sidecar.url("/v1.0/metadata")).await;
        assert_eq!(metadata["subscriptions"], json!([]), "{answer}");
        publish_ok(&sidecar, "t", json!({"still": "serving"})).await;
    }
}

/// An invalid CEL rule in `--resources-path` stops the sidecar at start with file, line and
/// field.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_cel_rule_is_a_startup_error_naming_file_line_and_field() {
    let broker = Broker::start(Kind::Memory, &[]);
    broker.write(
        "subscription.yaml",
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: broken}\nspec:\n  pubsubname: pubsub\n  topic: t\n  routes:\n    rules:\n    - match: event.type == 'a' &&\n      path: /a\n",
    );
    let output = std::process::Command::new(support::outrigger_bin())
        .args([
            "sidecar",
            "--app-id",
            "x",
            "--dapr-http-port",
            "0",
            "--mesh-port",
            "0",
            "--admin-port",
            "0",
        ])
        .arg("--resources-path")
        .arg(broker.resources.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = broker.resources.path().join("subscription.yaml");
    let want = format!(
        "{}:9:1: subscription \"broken\": spec.routes.rules[0].match: invalid CEL expression",
        file.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
}

/// Oversized and over-counted publishes are refused with the limit named; nothing is sent.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_publishes_are_refused_with_the_limit() {
    let broker = Broker::start(Kind::Memory, &[]);
    let sidecar = support::SidecarBuilder::new("big", broker.registry.path())
        .arg("--resources-path")
        .arg(broker.resources.path().to_str().unwrap())
        .arg("--max-body-size")
        .arg("1MiB")
        .start();
    let (status, text) = publish(&sidecar, "t", "text/plain", vec![b'x'; 2 << 20]).await;
    assert_eq!(status, 413, "{text}");
    let entries: Vec<Value> = (0..10_001)
        .map(|i| json!({"entryId": i.to_string(), "event": i}))
        .collect();
    let (status, text) = publish_to(
        &sidecar,
        "/v1.0-alpha1/publish/bulk/pubsub/t",
        "application/json",
        Value::Array(entries).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at most 10000"), "{text}");
    let query: String = (0..100).map(|i| format!("metadata.k{i}=v&")).collect();
    let (status, text) = publish_to(
        &sidecar,
        &format!("/v1.0/publish/pubsub/t?{query}"),
        "text/plain",
        "x",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at most 64 keys"), "{text}");
    let (status, text) = publish_to(
        &sidecar,
        "/v1.0/publish/pubsub/t?metadata.ttlInSeconds=soon",
        "text/plain",
        "x",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("ttlInSeconds"), "{text}");
    // The names brokers report on delivery cannot be forged by a publisher.
    let (status, text) = publish_to(
        &sidecar,
        "/v1.0/publish/pubsub/t?metadata.__partition=3",
        "text/plain",
        "x",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("metadata.__partition: names starting with __ are reserved"),
        "{text}"
    );
    // A bulk publish whose request metadata every entry would copy: the entry count and the
    // metadata are checked before any entry is built (4 MiB of tiny entries × 15 KiB each
    // would otherwise take gigabytes).
    let big = "v".repeat(15 * 1024);
    let entries: Vec<Value> = (0..20_000)
        .map(|i| json!({"entryId": i.to_string(), "event": 0}))
        .collect();
    let sidecar_4m = support::SidecarBuilder::new("bulky", broker.registry.path())
        .arg("--resources-path")
        .arg(broker.resources.path().to_str().unwrap())
        .start();
    let (status, text) = publish_to(
        &sidecar_4m,
        &format!("/v1.0-alpha1/publish/bulk/pubsub/t?metadata.k={big}"),
        "application/json",
        Value::Array(entries).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("20000 entries"), "{text}");
    let rss = sidecar_4m.proc.rss_bytes().unwrap();
    assert!(
        rss < 128 << 20,
        "sidecar RSS {} MB after the refused bulk",
        rss >> 20
    );
}

/// The consumer-group path (`partitionAssignment: group`, the default) against tansu 0.6.0:
/// 1,000 messages on a two-partition topic, the subscriber's sidecar killed once and
/// restarted in the same group — every message delivered, resuming from the offsets the group
/// committed. The restart waits out the session timeout: tansu 0.6.0's SyncGroup answers a
/// member that joins while the dead one is still in the group with an empty assignment
/// (tansu#679) and it never gets a partition; a lone member of the next generation gets both.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_consumer_group_path_delivers_and_resumes_from_committed_offsets() {
    const N: usize = 1000;
    let broker = Broker::start(Kind::Kafka, &[]);
    let kafka = broker.kafka.as_ref().unwrap();
    kafka.create_topic("grouped", 2);
    broker.write(
        "pubsub.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: pubsub}}\nspec:\n  type: pubsub.kafka\n  version: v1\n  metadata:\n  - {{name: brokers, value: \"{}\"}}\n  - {{name: authType, value: none}}\n  - {{name: initialOffset, value: oldest}}\n  - {{name: consumerGroup, value: grouped-readers}}\n  - {{name: librdkafka.batch.num.messages, value: \"1\"}}\n",
            kafka.address()
        ),
    );
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "grouped", "route": "/grouped"}
    ])))
    .await;
    let publisher = broker.sidecar("producer", None);
    let mut subscriber = broker.sidecar("consumer", Some(&app));
    wait_subscribed(&subscriber, 1).await;
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn(publish_all(
        publisher.url("/v1.0/publish/pubsub/grouped"),
        0..N,
        8,
        published.clone(),
    ));
    app.wait_for(
        Duration::from_secs(60),
        "the group's first deliveries",
        |d| d.len() >= N / 4,
    )
    .await;
    kill9(&mut subscriber);
    // Past the group's session timeout (10 s): the dead member is gone before the new one joins.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let _subscriber = broker.sidecar("consumer", Some(&app));
    publishing.await.unwrap();
    let deliveries = app
        .wait_for(Duration::from_secs(60), "every message delivered", |d| {
            distinct(d).len() >= N
        })
        .await;
    let seen = distinct(&deliveries);
    assert_eq!(seen.len(), N);
    eprintln!(
        "consumer group: {} distinct messages in {} deliveries",
        seen.len(),
        deliveries.len()
    );
}
