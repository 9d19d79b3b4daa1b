//! The admin listener (default 127.0.0.1:15000): `/ready`, `/healthz`, `/metrics` (Prometheus
//! text) and `/config_dump` (the active snapshot and what discovery sees, as JSON).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::sidecar::Sidecar;

pub struct AdminApp {
    sidecar: Arc<Sidecar>,
}

impl AdminApp {
    pub(crate) fn new(sidecar: Arc<Sidecar>) -> Self {
        AdminApp { sidecar }
    }

    fn config_dump(&self) -> Vec<u8> {
        let sidecar = &self.sidecar;
        let addresses = *sidecar.addresses.lock();
        let dump = json!({
            "app_id": sidecar.options.app_id,
            "namespace": sidecar.options.namespace,
            "app_port": sidecar.options.app_port,
            "listeners": addresses.map(|a| json!({
                "dapr_http": a.dapr_http.to_string(),
                "mesh": a.mesh.to_string(),
                "admin": a.admin.to_string(),
            })),
            "registry_dir": sidecar.registry.as_ref().map(|r| r.dir().display().to_string()),
            "snapshot": *sidecar.snapshot(),
        });
        serde_json::to_vec_pretty(&dump).unwrap_or_default()
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = match path.as_str() {
            "/ready" if self.sidecar.is_ready() => (200, "text/plain", b"ready\n".to_vec()),
            "/ready" => (503, "text/plain", b"not ready\n".to_vec()),
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/metrics" => {
                self.sidecar
                    .metrics
                    .in_flight
                    .set(self.sidecar.drain.in_flight() as i64);
                (
                    200,
                    "text/plain; version=0.0.4",
                    self.sidecar.metrics.render(),
                )
            }
            "/config_dump" => (200, "application/json", self.config_dump()),
            _ => (
                404,
                "text/plain",
                b"not found; try /ready, /healthz, /metrics or /config_dump\n".to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
