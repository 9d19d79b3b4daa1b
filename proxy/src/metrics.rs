//! Prometheus metrics: requests and latency by direction, target app id and status class.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
        }
    }

    pub(crate) fn record(
        &self,
        direction: Direction,
        app_id: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let class = status_class(status);
        let labels = [direction.as_str(), app_id, class];
        self.requests.with_label_values(&labels).inc();
        self.latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_requests_appear_in_the_text_exposition() {
        let metrics = Metrics::new();
        metrics.record(Direction::Outbound, "b", 503, Duration::from_millis(3));
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
