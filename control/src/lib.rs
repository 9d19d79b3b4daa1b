//! `outrigger control --config-dir DIR`: the control plane. It watches a directory of Dapr and
//! mesh YAML (one reload per change), keeps the registry of connected sidecars, and pushes each resource
//! type to every sidecar over the mesh.v1 discovery stream (docs/control-plane-protocol.md).
//! An admin listener shows the connected sidecars with their acknowledged versions and last
//! NACK, and Prometheus metrics.
#![forbid(unsafe_code)]

mod admin;
mod desired;
mod metrics;
mod registry;
mod server;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use outrigger_proto::mesh::v1::aggregated_discovery_server::AggregatedDiscoveryServer;
pub use server::ControlPlane;

#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    /// Directory of Dapr (Component, Resiliency, Subscription, Configuration) and mesh
    /// (Cluster, Route) YAML to serve; changes are pushed as they are saved
    #[arg(long, value_name = "DIR")]
    config_dir: PathBuf,
    /// Discovery stream (gRPC) address
    #[arg(long, default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// Admin address: /sidecars (JSON), /metrics, /healthz
    #[arg(long, default_value = "127.0.0.1:15011")]
    admin: SocketAddr,
    /// The most sidecars registered at once; a stream beyond it is refused
    /// (RESOURCE_EXHAUSTED) until one leaves
    #[arg(long, default_value_t = 10_000)]
    max_sidecars: usize,
}

/// The largest message a sidecar may send on its stream: registrations, ACKs and NACKs are
/// small, so a bigger one is refused by the transport before it is decoded.
const MAX_INBOUND_MESSAGE: usize = 64 * 1024;

pub fn run(args: ControlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outrigger control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outrigger control: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: ControlArgs) -> Result<(), String> {
    let (snapshot, sources) = outrigger_config::load_dir_with_sources(&args.config_dir)
        .map_err(|e| format!("cannot load {}: {e}", args.config_dir.display()))?;
    let plane = ControlPlane::new(snapshot, sources, args.max_sidecars);
    let _watcher = watch::watch_config(&args.config_dir, plane.clone())?;
    let grpc = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (--listen): {e}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .map_err(|e| format!("cannot listen on {} (--admin): {e}", args.admin))?;
    tracing::info!(
        listen = %grpc.local_addr().map_err(|e| e.to_string())?,
        admin = %admin.local_addr().map_err(|e| e.to_string())?,
        config_dir = %args.config_dir.display(),
        "control plane listening"
    );
    tokio::spawn(admin::serve(admin, plane.clone()));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    };
    tonic::transport::Server::builder()
        .add_service(
            AggregatedDiscoveryServer::new(server::DiscoveryService(plane))
                .max_decoding_message_size(MAX_INBOUND_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| e.to_string())
}
