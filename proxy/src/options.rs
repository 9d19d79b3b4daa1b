//! How a sidecar process is started: its identity, its ports and its limits. These are process
//! settings (flags), not routing configuration, which lives in the `Snapshot`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::upstream::Protocol;

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
    /// How this sidecar talks to other sidecars' mesh listeners (which accept both).
    pub mesh_protocol: Protocol,
    /// Connecting to an upstream (a sidecar or the app) gives up after this long.
    pub connect_timeout: Duration,
    /// A request head must arrive whole within this time of its first byte, and a new
    /// connection must send its first request within it.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections each listener holds open at most; at the cap it stops accepting.
    pub max_connections: usize,
    /// Concurrent streams an HTTP/2 client may open on one connection.
    pub h2_max_concurrent_streams: u32,
    /// Mutual TLS on the mesh hop; `None` is plaintext (`--mtls off`).
    pub mtls: Option<MtlsOptions>,
}

/// Where this sidecar's workload certificate comes from and what it says.
#[derive(Debug, Clone)]
pub struct MtlsOptions {
    pub trust_domain: String,
    /// The local certificate authority's directory (created on first use, owner-only).
    pub ca_dir: PathBuf,
    /// The workload certificate's lifetime; renewed at about half of it.
    pub cert_ttl: Duration,
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
            mesh_protocol: Protocol::Http1,
            connect_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            h2_max_concurrent_streams: 128,
            mtls: None,
        }
    }
}
