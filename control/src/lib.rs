//! `outrigger control --config-dir DIR`: the control plane. It watches a directory of Dapr and
//! mesh YAML (debounced), keeps the registry of connected sidecars, and pushes each resource
//! type to every sidecar over the mesh.v1 discovery stream (docs/control-plane-protocol.md).
//! An admin listener shows the connected sidecars with their acknowledged versions and last
//! NACK, and Prometheus metrics.
#![forbid(unsafe_code)]

mod admin;
mod desired;
mod metrics;
mod registry;
mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
}

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
    let snapshot = outrigger_config::load_dir_unchecked(&args.config_dir)
        .map_err(|e| format!("cannot load {}: {e}", args.config_dir.display()))?;
    let plane = ControlPlane::new(snapshot);
    let _watcher = watch_config(&args.config_dir, plane.clone())?;
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
        .add_service(AggregatedDiscoveryServer::new(server::DiscoveryService(
            plane,
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| e.to_string())
}

/// Reloads the directory 100 ms after the last change. A file that does not parse keeps the
/// previous configuration in force (and says why); cross-reference problems are left to the
/// sidecars, which NACK them with the reason.
fn watch_config(
    dir: &Path,
    plane: Arc<ControlPlane>,
) -> Result<
    notify_debouncer_mini::Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
    String,
> {
    let watched = dir.to_path_buf();
    let mut debouncer = notify_debouncer_mini::new_debouncer(Duration::from_millis(100), move |events: notify_debouncer_mini::DebounceEventResult| {
        if events.is_err() {
            return;
        }
        match outrigger_config::load_dir_unchecked(&watched) {
            Ok(snapshot) => {
                if let Err(e) = snapshot.validate() {
                    tracing::warn!(error = %e, "pushing a configuration sidecars are expected to refuse");
                }
                tracing::info!(version = %snapshot.version, "configuration changed");
                plane.set_snapshot(snapshot);
            }
            Err(e) => tracing::error!(error = %e, "configuration not reloaded; the previous one stays in force"),
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    debouncer
        .watcher()
        .watch(
            dir,
            notify_debouncer_mini::notify::RecursiveMode::NonRecursive,
        )
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    Ok(debouncer)
}
