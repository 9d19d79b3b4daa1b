//! The control plane's Prometheus metrics: reloads, pushes, NACKs, refusals, push-to-ACK latency.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, Registry, TextEncoder};

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) pushes: IntCounter,
    pub(crate) nacks: IntCounter,
    pub(crate) push_to_ack: Histogram,
    pub(crate) reloads: IntCounter,
    pub(crate) oversized: IntCounter,
    pub(crate) refused_registrations: IntCounter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let pushes = IntCounter::new("outrigger_control_pushes_total", "Discovery responses sent")
            .expect("static metric");
        let nacks = IntCounter::new(
            "outrigger_control_nacks_total",
            "Responses refused by a sidecar",
        )
        .expect("static metric");
        let push_to_ack = Histogram::with_opts(
            HistogramOpts::new(
                "outrigger_control_push_to_ack_seconds",
                "Time from sending a response to its ACK",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("static metric");
        let reloads = IntCounter::new(
            "outrigger_control_reloads_total",
            "Changes of the config directory loaded (saves that changed nothing are not counted)",
        )
        .expect("static metric");
        let oversized = IntCounter::new(
            "outrigger_control_oversized_total",
            "Configurations not pushed because a resource type exceeded the 16 MiB push limit",
        )
        .expect("static metric");
        let refused_registrations = IntCounter::new(
            "outrigger_control_refused_registrations_total",
            "Streams refused: malformed node identity, or --max-sidecars reached",
        )
        .expect("static metric");
        let registry = Registry::new();
        for collector in [
            Box::new(pushes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(nacks.clone()),
            Box::new(push_to_ack.clone()),
            Box::new(reloads.clone()),
            Box::new(oversized.clone()),
            Box::new(refused_registrations.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            pushes,
            nacks,
            push_to_ack,
            reloads,
            oversized,
            refused_registrations,
        }
    }

    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
