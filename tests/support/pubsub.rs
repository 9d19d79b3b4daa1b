//! The pub/sub test harness: a broker of each kind (in-memory, a `redis-server` of the
//! test's own, a tansu broker of the test's own), a resources directory naming it `pubsub`,
//! sidecars on it, and small clients for publishing and reading the pub/sub metrics.

use std::time::Duration;

use serde_json::Value;

use super::backends::{RedisServer, Tansu};
use super::subscriber::{Delivery, SubscriberApp};
use super::{client, SidecarBuilder, SidecarProc};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Memory,
    Redis,
    Kafka,
}

/// A broker under test and a resources directory naming it `pubsub`.
pub struct Broker {
    pub kind: Kind,
    pub redis: Option<RedisServer>,
    pub kafka: Option<Tansu>,
    pub resources: tempfile::TempDir,
    pub registry: tempfile::TempDir,
}

/// A policy for quick tests: 50 ms between attempts, 3 retries.
pub const QUICK_RETRIES: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: quick}
spec:
  policies:
    retries:
      quick: {policy: constant, duration: 50ms, maxRetries: 3}
  targets:
    components:
      pubsub:
        inbound: {retry: quick}
";

impl Broker {
    /// Starts the broker; `topics` are created up front (tansu has no auto-creation).
    pub fn start(kind: Kind, topics: &[&str]) -> Broker {
        let broker = Broker {
            kind,
            redis: (kind == Kind::Redis).then(|| RedisServer::start(true)),
            kafka: (kind == Kind::Kafka).then(Tansu::start),
            resources: tempfile::tempdir().unwrap(),
            registry: tempfile::tempdir().unwrap(),
        };
        for topic in topics {
            broker.create_topic(topic);
        }
        broker.write("pubsub.yaml", &broker.component("pubsub", ""));
        broker
    }

    pub fn create_topic(&self, topic: &str) {
        if let Some(kafka) = &self.kafka {
            kafka.create_topic(topic, 1);
        }
    }

    /// A component of this broker's type named `name`, with `extra` metadata lines
    /// (`  - {name: …, value: …}`).
    pub fn component(&self, name: &str, extra: &str) -> String {
        self.component_with(name, extra, "")
    }

    /// The same, with `trailing` YAML after the spec (e.g. `scopes:`).
    pub fn component_with(&self, name: &str, extra: &str, trailing: &str) -> String {
        let (kind, metadata) = match self.kind {
            Kind::Memory => ("pubsub.in-memory", String::new()),
            Kind::Redis => (
                "pubsub.redis",
                format!(
                    "  - {{name: redisHost, value: \"{}\"}}\n  - {{name: redeliverInterval, value: 0}}\n",
                    self.redis.as_ref().unwrap().address()
                ),
            ),
            // One record per batch: tansu 0.6.0 answers a fetch at an offset inside a batch
            // with nothing, so a consumer restarted at a committed offset mid-batch would
            // wait forever (fixed after 0.6.0, tansu commit 87db6ea).
            Kind::Kafka => (
                "pubsub.kafka",
                format!(
                    "  - {{name: brokers, value: \"{}\"}}\n  - {{name: authType, value: none}}\n  - {{name: initialOffset, value: oldest}}\n  - {{name: partitionAssignment, value: manual}}\n  - {{name: librdkafka.batch.num.messages, value: \"1\"}}\n",
                    self.kafka.as_ref().unwrap().address()
                ),
            ),
        };
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n{metadata}{extra}{trailing}"
        )
    }

    pub fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.resources.path().join(file), yaml).unwrap();
    }

    pub fn sidecar(&self, app_id: &str, app: Option<&SubscriberApp>) -> SidecarProc {
        self.sidecar_with(app_id, app, |b| b)
    }

    /// The same, with more flags.
    pub fn sidecar_with(
        &self,
        app_id: &str,
        app: Option<&SubscriberApp>,
        flags: impl FnOnce(SidecarBuilder) -> SidecarBuilder,
    ) -> SidecarProc {
        let mut builder = flags(
            SidecarBuilder::new(app_id, self.registry.path())
                .arg("--resources-path")
                .arg(self.resources.path().to_str().unwrap()),
        );
        if let Some(app) = app {
            builder = builder.app_port(app.port);
        }
        builder.start()
    }
}

pub fn subscribe(entries: Value) -> Option<Value> {
    Some(entries)
}

pub async fn publish(
    sidecar: &SidecarProc,
    topic: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    publish_to(
        sidecar,
        &format!("/v1.0/publish/pubsub/{topic}"),
        content_type,
        body,
    )
    .await
}

pub async fn publish_to(
    sidecar: &SidecarProc,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let response = client()
        .post(sidecar.url(path))
        .header("content-type", content_type)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

pub async fn publish_ok(sidecar: &SidecarProc, topic: &str, body: Value) {
    let (status, text) = publish(sidecar, topic, "application/json", body.to_string()).await;
    assert_eq!(status, 204, "publish to {topic}: {text}");
}

/// The value of one Prometheus sample (0 when absent).
pub async fn metric(sidecar: &SidecarProc, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client()
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn outcome(sidecar: &SidecarProc, topic: &str, outcome: &str) -> f64 {
    metric(
        sidecar,
        "outrigger_pubsub_deliveries_total",
        &[("topic", topic), ("outcome", outcome)],
    )
    .await
}

/// Waits until the metric reaches `want`, or panics showing it.
pub async fn wait_outcome(sidecar: &SidecarProc, topic: &str, name: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = outcome(sidecar, topic, name).await;
        if got >= want {
            assert_eq!(got, want, "{name} on {topic}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} on {topic}: {got}, waiting for {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn data_of(delivery: &Delivery) -> Value {
    delivery.body["data"].clone()
}

pub const LONG: Duration = Duration::from_secs(30);

/// Waits until `/v1.0/metadata` lists `n` running subscriptions.
pub async fn wait_subscribed(sidecar: &SidecarProc, n: usize) -> Value {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let metadata = super::get_json(sidecar.url("/v1.0/metadata")).await;
        let running = metadata["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"]["state"] == "running")
            .count();
        if running >= n {
            return metadata;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} subscriptions not running: {metadata}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
