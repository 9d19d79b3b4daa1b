//! The admin listener (default 127.0.0.1:15000): `/ready`, `/healthz`, `/metrics` (Prometheus
//! text), `/config_dump` (the active snapshot with its secrets masked, the listeners and what
//! discovery sees, as JSON)
//! and `/clusters` (every upstream endpoint with its counters).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;

use super::{Downstream, Service};
use crate::answer::Answer;
use crate::shared::Shared;

pub(crate) struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    fn config_dump(&self) -> Vec<u8> {
        let shared = &self.shared;
        let addresses = *shared.addresses.lock();
        let options = &shared.options;
        let dump = json!({
            "app_id": options.app_id,
            "namespace": options.namespace,
            "app_port": options.app_port,
            "listeners": addresses.map(|a| json!({
                "dapr_http": a.dapr_http.to_string(),
                "mesh": a.mesh.to_string(),
                "admin": a.admin.to_string(),
            })),
            "registry_dir": shared.registry.as_ref().map(|r| r.dir().display().to_string()),
            // Component secrets are masked; secretKeyRef and envRef references stay visible.
            "snapshot": shared.snapshot().redacted(),
            "policies_in_force": policies_in_force(&shared.config.load()),
            "identity": identity(shared),
        });
        serde_json::to_vec_pretty(&dump).unwrap_or_default()
    }

    fn clusters(&self) -> Vec<u8> {
        let mut endpoints: Vec<_> = self
            .shared
            .endpoints
            .all()
            .into_iter()
            .map(|e| {
                let stats = &e.stats;
                json!({
                    "address": e.address,
                    "in_flight": stats.in_flight.load(Ordering::Relaxed),
                    "requests": stats.requests.load(Ordering::Relaxed),
                    "failures": stats.failures.load(Ordering::Relaxed),
                    "consecutive_failures": stats.consecutive_failures.load(Ordering::Relaxed),
                    "latency_ewma_us": stats.latency_ewma_us.load(Ordering::Relaxed),
                    "peak_ewma_us": (stats.peak.lock().estimate_ns(std::time::Instant::now()) / 1000.0).round(),
                    "ejected": e.is_ejected(),
                    "ejections": stats.ejections.load(Ordering::Relaxed),
                    "idle_connections": e.pool.idle_count(),
                })
            })
            .collect();
        endpoints.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
        let mut breakers: Vec<_> = self
            .shared
            .breakers
            .all()
            .into_iter()
            .map(|b| json!({ "name": b.name, "state": b.phase().name() }))
            .collect();
        breakers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::to_vec_pretty(&json!({ "endpoints": endpoints, "circuit_breakers": breakers }))
            .unwrap_or_default()
    }
}

impl Service for Admin {
    const DRAINED: bool = false;

    async fn serve<D: Downstream>(&self, request: &mut D) {
        let shared = &self.shared;
        let answer = match request.path() {
            "/ready" if shared.is_ready() => Answer::text(200, "text/plain", &b"ready\n"[..]),
            "/ready" => Answer::text(503, "text/plain", &b"not ready\n"[..]),
            "/healthz" => Answer::text(200, "text/plain", &b"ok\n"[..]),
            "/metrics" => {
                shared
                    .metrics
                    .in_flight
                    .set(i64::try_from(shared.drain.in_flight()).unwrap_or(i64::MAX));
                Answer::text(200, "text/plain; version=0.0.4", shared.metrics.render())
            }
            "/config_dump" => Answer::json(200, self.config_dump()),
            "/clusters" => Answer::json(200, self.clusters()),
            _ => Answer::text(
                404,
                "text/plain",
                &b"not found; try /ready, /healthz, /metrics, /config_dump or /clusters\n"[..],
            ),
        };
        request.answer(answer).await;
    }
}

/// What the `Resiliency` resources that apply to this app resolve to, per target app.
/// This sidecar's workload certificate: who it says this is, and when it is renewed.
fn identity(shared: &Shared) -> serde_json::Value {
    let Some(identity) = &shared.identity else {
        return json!({"mtls": "off"});
    };
    let material = identity.tls.current();
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    json!({
        "mtls": "on",
        "spiffe_id": material.id().to_uri(),
        "not_before_unix": unix(material.not_before()),
        "not_after_unix": unix(material.not_after()),
        "trust_bundle_roots": material.bundle().len(),
    })
}

fn policies_in_force(config: &crate::active::ActiveConfig) -> serde_json::Value {
    let mut apps: Vec<_> = config.app_policies.iter().collect();
    apps.sort_by(|a, b| a.0.cmp(b.0));
    let apps: serde_json::Map<String, serde_json::Value> = apps
        .into_iter()
        .map(|(app, policy)| {
            (
                app.clone(),
                json!({
                    "timeout": policy.timeout.map(|t| outrigger_config::duration::format(&t)),
                    "retry": policy.retry.as_ref().map(|r| format!("{:?}", r.schedule)),
                    "circuit_breaker": policy.breaker.as_ref().map(|b| json!({
                        "name": b.name,
                        "state": b.phase().name(),
                    })),
                }),
            )
        })
        .collect();
    json!({ "apps": apps })
}
