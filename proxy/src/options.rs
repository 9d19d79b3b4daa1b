//! How a sidecar process is started: its identity, its ports and its limits. These are process
//! settings (flags), not routing configuration, which lives in the `Snapshot`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the sidecar talks to its local app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// HTTP/1.1 (Dapr's `--app-protocol http`).
    #[default]
    Http,
    /// HTTP/2 over plain TCP with prior knowledge (Dapr's `--app-protocol h2c`).
    H2c,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MovablePorts {
    pub dapr_http: bool,
    pub mesh: bool,
    pub admin: bool,
}

#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub app_id: String,
    /// Dapr's namespace for the app; `None` outside Kubernetes, as in Dapr's standalone mode.
    pub namespace: Option<String>,
    /// Where the local app listens (on 127.0.0.1); `None` for an app that only makes calls.
    pub app_port: Option<u16>,
    pub app_protocol: AppProtocol,
    pub dapr_http_addr: SocketAddr,
    /// The Dapr gRPC port given to the app in `DAPR_GRPC_PORT` (the gRPC API is a later issue).
    pub dapr_grpc_port: u16,
    pub mesh_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Listeners that bind any free port when theirs is taken, instead of failing
    /// (`outrigger run` for the ports the user left unset, so several apps on one host just work).
    pub movable_ports: MovablePorts,
    /// The host other sidecars reach this one's mesh listener at.
    pub advertise_host: String,
    /// `DAPR_API_TOKEN`: required on every Dapr API call except the health checks.
    pub api_token: Option<String>,
    /// `APP_API_TOKEN`: sent to the app as `dapr-api-token` on every delivered call.
    pub app_api_token: Option<String>,
    /// The control plane's discovery address (`http://host:15010`); its configuration replaces
    /// the resources directory's once the first response arrives.
    pub control_plane: Option<String>,
    /// The local registry directory for zero-setup discovery; `None` turns discovery off.
    pub registry_dir: Option<PathBuf>,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Requests whose header block is larger get 431.
    pub max_request_header_bytes: usize,
    /// Largest request body the sidecar reads itself (state, metadata); larger get 413.
    /// Invocation bodies stream through and are not limited. daprd's default is 4 MiB.
    pub max_body_bytes: usize,
    /// Worker threads for the proxy runtime.
    pub threads: usize,
}

impl SidecarOptions {
    /// Defaults matching `daprd` and Envoy-style mesh ports, for the given app id.
    pub fn new(app_id: impl Into<String>) -> Self {
        SidecarOptions {
            app_id: app_id.into(),
            namespace: None,
            app_port: None,
            app_protocol: AppProtocol::Http,
            dapr_http_addr: SocketAddr::from(([127, 0, 0, 1], 3500)),
            dapr_grpc_port: 50001,
            mesh_addr: SocketAddr::from(([0, 0, 0, 0], 15008)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            movable_ports: MovablePorts::default(),
            advertise_host: "127.0.0.1".to_string(),
            api_token: None,
            app_api_token: None,
            control_plane: None,
            registry_dir: None,
            drain_timeout: Duration::from_secs(15),
            max_request_header_bytes: 60 * 1024,
            max_body_bytes: 4 * 1024 * 1024,
            threads: 2,
        }
    }
}
