//! Prometheus metrics: requests and latency by direction, target app id and status class;
//! connections per listener. Request paths hold an [`AppMetrics`] looked up once per app id
//! (when the configuration is built), not a label lookup per request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Which side of the sidecar a request crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The local app calling out through the Dapr API.
    Outbound,
    /// Another sidecar delivering a call to the local app.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub(crate) in_flight: IntGauge,
    connections: IntGaugeVec,
    cap_reached: IntCounterVec,
    pub(crate) pubsub: PubSubMetrics,
    pub(crate) resilience: ResilienceMetrics,
}

/// What the resilience machinery did: retries and timeouts by target app, circuit-breaker
/// transitions by breaker, outlier ejections by endpoint. Labels are bounded by the
/// configuration (apps with a policy, breakers, endpoints in use).
#[derive(Clone)]
pub(crate) struct ResilienceMetrics {
    pub(crate) retries: IntCounterVec,
    pub(crate) timeouts: IntCounterVec,
    pub(crate) breaker_transitions: IntCounterVec,
    pub(crate) ejections: IntCounterVec,
}

impl ResilienceMetrics {
    fn new(registry: &Registry) -> ResilienceMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        ResilienceMetrics {
            retries: counter(
                "outrigger_retries_total",
                "Invocation attempts made again under a Resiliency retry policy, by target app id",
                &["app_id"],
            ),
            timeouts: counter(
                "outrigger_timeouts_total",
                "Invocations that got no answer within their timeout, by target app id",
                &["app_id"],
            ),
            breaker_transitions: counter(
                "outrigger_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by breaker (target/policy) and new state",
                &["breaker", "state"],
            ),
            ejections: counter(
                "outrigger_upstream_ejections_total",
                "Endpoints taken out of rotation by outlier detection, by endpoint address",
                &["endpoint"],
            ),
        }
    }
}

/// Pub/sub, by component and topic: what was published, and what became of each delivery.
pub(crate) struct PubSubMetrics {
    published: IntCounterVec,
    publish_failures: IntCounterVec,
    /// `outcome`: `delivered` (the app's SUCCESS), `retried` (an attempt that will be
    /// retried), `dropped` (DROP or 404 with no dead-letter topic: acked), `dead_lettered`,
    /// `parked` (retries exhausted, no dead-letter topic: left unacknowledged), `released`
    /// (given back unacknowledged at shutdown or a subscription change).
    deliveries: IntCounterVec,
    in_flight: IntGaugeVec,
    latency: HistogramVec,
    /// Topic label values seen, bounded: publishes can name any topic.
    topics: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Distinct topic label values kept; further topics are counted under `_other`.
const MAX_TOPIC_LABELS: usize = 1000;

impl PubSubMetrics {
    fn new(registry: &Registry) -> PubSubMetrics {
        let labels = &["component", "topic"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let published = counter(
            "outrigger_pubsub_published_total",
            "Messages the broker accepted from this app's publishes",
            labels,
        );
        let publish_failures = counter(
            "outrigger_pubsub_publish_failures_total",
            "Publishes the broker failed or refused",
            labels,
        );
        let deliveries = counter(
            "outrigger_pubsub_deliveries_total",
            "Delivery outcomes: delivered, retried, dropped, dead_lettered, parked, released",
            &["component", "topic", "outcome"],
        );
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "outrigger_pubsub_in_flight",
                "Messages handed to the app (or waiting to be retried) and not yet settled",
            ),
            labels,
        )
        .expect("static metric definition is valid");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "outrigger_pubsub_delivery_duration_seconds",
                "Time from a delivery attempt's start to the app's answer",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0, 30.0,
            ]),
            labels,
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("metric names are unique");
        registry
            .register(Box::new(latency.clone()))
            .expect("metric names are unique");
        PubSubMetrics {
            published,
            publish_failures,
            deliveries,
            in_flight,
            latency,
            topics: Default::default(),
        }
    }

    fn topic<'a>(&self, topic: &'a str) -> &'a str {
        let mut topics = self.topics.lock();
        if topics.contains(topic) {
            return topic;
        }
        if topics.len() < MAX_TOPIC_LABELS {
            topics.insert(topic.to_string());
            return topic;
        }
        "_other"
    }

    pub(crate) fn published(&self, component: &str, topic: &str, ok: bool) {
        let topic = self.topic(topic);
        let vec = if ok {
            &self.published
        } else {
            &self.publish_failures
        };
        vec.with_label_values(&[component, topic]).inc();
    }

    pub(crate) fn outcome(&self, component: &str, topic: &str, outcome: &str) {
        let topic = self.topic(topic);
        self.deliveries
            .with_label_values(&[component, topic, outcome])
            .inc();
    }

    pub(crate) fn in_flight(&self, component: &str, topic: &str) -> IntGauge {
        self.in_flight
            .with_label_values(&[component, self.topic(topic)])
    }

    pub(crate) fn attempt(&self, component: &str, topic: &str, elapsed: Duration) {
        self.latency
            .with_label_values(&[component, self.topic(topic)])
            .observe(elapsed.as_secs_f64());
    }
}

/// The handles of one (direction, app id), one pair per status class, each registered on
/// first use.
pub(crate) struct AppMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    direction: Direction,
    app_id: String,
    by_class: [OnceLock<(IntCounter, Histogram)>; 6],
}

impl AppMetrics {
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = status_class_index(status);
        let (requests, latency) = self.by_class[class].get_or_init(|| {
            let labels = [
                self.direction.as_str(),
                self.app_id.as_str(),
                CLASSES[class],
            ];
            (
                self.requests.with_label_values(&labels),
                self.latency.with_label_values(&labels),
            )
        });
        requests.inc();
        latency.observe(elapsed.as_secs_f64());
    }
}

/// Connection counts of one listener.
pub(crate) struct ListenerMetrics {
    pub(crate) open: IntGauge,
    /// Times the listener stopped accepting because it was at its connection cap.
    pub(crate) cap_reached: IntCounter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let labels = &["direction", "app_id", "status_class"];
        let requests = IntCounterVec::new(
            Opts::new(
                "outrigger_requests_total",
                "Requests handled, by direction, target app id and status class",
            ),
            labels,
        )
        .expect("static metric definition is valid");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "outrigger_request_duration_seconds",
                "Time from request start to the end of the response, by direction, target app id and status class",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            labels,
        )
        .expect("static metric definition is valid");
        let in_flight = IntGauge::new(
            "outrigger_requests_in_flight",
            "Requests currently being handled",
        )
        .expect("static metric definition is valid");
        let connections = IntGaugeVec::new(
            Opts::new(
                "outrigger_listener_connections",
                "Connections open on each listener",
            ),
            &["listener"],
        )
        .expect("static metric definition is valid");
        let cap_reached = IntCounterVec::new(
            Opts::new(
                "outrigger_listener_connection_cap_reached_total",
                "Times a listener stopped accepting because it held its --max-connections",
            ),
            &["listener"],
        )
        .expect("static metric definition is valid");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(in_flight.clone()),
            Box::new(connections.clone()),
            Box::new(cap_reached.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        let pubsub = PubSubMetrics::new(&registry);
        let resilience = ResilienceMetrics::new(&registry);
        Metrics {
            pubsub,
            resilience,
            registry,
            requests,
            latency,
            in_flight,
            connections,
            cap_reached,
        }
    }

    /// The handles for requests of `direction` to `app_id`.
    pub(crate) fn app(&self, direction: Direction, app_id: &str) -> Arc<AppMetrics> {
        Arc::new(AppMetrics {
            requests: self.requests.clone(),
            latency: self.latency.clone(),
            direction,
            app_id: app_id.to_string(),
            by_class: Default::default(),
        })
    }

    pub(crate) fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.connections.with_label_values(&[name]),
            cap_reached: self.cap_reached.with_label_values(&[name]),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Status 0 stands for "no response" (the client went away, the upstream broke off).
fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_requests_appear_in_the_text_exposition() {
        let metrics = Metrics::new();
        metrics
            .app(Direction::Outbound, "b")
            .record(503, Duration::from_millis(3));
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(
                r#"outrigger_requests_total{app_id="b",direction="outbound",status_class="5xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("outrigger_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
