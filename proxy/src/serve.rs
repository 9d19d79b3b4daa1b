//! Binding the listeners, serving them on the shared bundle, and the serve-then-drain life.

use crate::identity::MeshTls;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use tokio::sync::watch;

use crate::discovery::{now_unix_ms, RegistryEntry, REFRESH_INTERVAL};
use crate::http1::server::ConnLimits;
use crate::listeners::{self, admin::Admin, dapr_http::DaprHttp, mesh_inbound::MeshInbound};
use crate::listeners::{ListenerSettings, Service};
use crate::options::SidecarOptions;
use crate::shared::{ListenerAddrs, ProxyError, Shared};

/// How often idle upstream connections are checked (closed by the peer, or too old).
const POOL_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The three listening sockets, bound before anything else starts so that a port conflict is
/// reported clearly and the app is only launched once the sidecar can take its calls.
pub struct BoundListeners {
    dapr_http: TcpListener,
    mesh: TcpListener,
    admin: TcpListener,
}

impl BoundListeners {
    pub fn bind(options: &SidecarOptions) -> Result<Self, ProxyError> {
        let bind = |what, addr: SocketAddr, flag, movable: bool| {
            let mut bound = TcpListener::bind(addr);
            if movable && matches!(&bound, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse) {
                tracing::info!(%addr, "{what} port is taken; using a free port instead");
                bound = TcpListener::bind(SocketAddr::new(addr.ip(), 0));
            }
            // tokio adopts the socket, which needs it non-blocking.
            bound
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| ProxyError::Bind {
                    what,
                    addr,
                    flag,
                    source,
                })
        };
        Ok(BoundListeners {
            dapr_http: bind(
                "Dapr HTTP API",
                options.dapr_http_addr,
                "--dapr-http-port",
                options.movable_ports.dapr_http,
            )?,
            mesh: bind(
                "mesh listener",
                options.mesh_addr,
                "--mesh-port",
                options.movable_ports.mesh,
            )?,
            admin: bind(
                "admin listener",
                options.admin_addr,
                "--admin-port",
                options.movable_ports.admin,
            )?,
        })
    }

    pub fn dapr_http_addr(&self) -> SocketAddr {
        self.dapr_http
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn mesh_addr(&self) -> SocketAddr {
        self.mesh.local_addr().expect("bound socket has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound socket has an address")
    }
}

fn settings(name: &'static str, options: &SidecarOptions) -> ListenerSettings {
    ListenerSettings {
        name,
        limits: ConnLimits {
            header_timeout: options.header_timeout,
            idle_timeout: options.idle_timeout,
            max_header_bytes: options.max_request_header_bytes,
        },
        max_connections: options.max_connections,
        h2_max_concurrent_streams: options.h2_max_concurrent_streams,
    }
}

fn spawn_listener<S: Service>(
    socket: TcpListener,
    service: S,
    name: &'static str,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    tls: Option<Arc<MeshTls>>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(socket)?;
    tokio::spawn(listeners::accept(
        listener,
        Arc::new(service),
        settings(name, &shared.options),
        shared.clone(),
        stop.clone(),
        tls,
    ));
    Ok(())
}

/// Serves until `shutdown` resolves, then stops accepting, leaves the registry, waits for the
/// requests in flight (up to the drain timeout) and returns.
pub async fn run(
    shared: Arc<Shared>,
    listeners: BoundListeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let addrs = ListenerAddrs {
        dapr_http: listeners.dapr_http_addr(),
        mesh: listeners.mesh_addr(),
        admin: listeners.admin_addr(),
    };
    *shared.addresses.lock() = Some(addrs);
    let (stop_tx, stop) = watch::channel(false);
    let bind_error = |what, addr, flag| {
        move |source| ProxyError::Bind {
            what,
            addr,
            flag,
            source,
        }
    };
    spawn_listener(
        listeners.dapr_http,
        DaprHttp::new(shared.clone()),
        "dapr_http",
        &shared,
        &stop,
        None,
    )
    .map_err(bind_error(
        "Dapr HTTP API",
        addrs.dapr_http,
        "--dapr-http-port",
    ))?;
    spawn_listener(
        listeners.mesh,
        MeshInbound::new(shared.clone()),
        "mesh",
        &shared,
        &stop,
        shared
            .identity
            .as_ref()
            .map(|identity| identity.tls.clone()),
    )
    .map_err(bind_error("mesh listener", addrs.mesh, "--mesh-port"))?;
    spawn_listener(
        listeners.admin,
        Admin::new(shared.clone()),
        "admin",
        &shared,
        &stop,
        None,
    )
    .map_err(bind_error("admin listener", addrs.admin, "--admin-port"))?;
    if let Some(identity) = &shared.identity {
        tokio::spawn(identity.clone().renew_forever());
    } else {
        tracing::warn!(
            "mTLS is OFF (--mtls off): the mesh port takes plaintext from anyone who can reach it, and callers' app ids are taken on trust"
        );
    }
    {
        let endpoints = shared.endpoints.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POOL_SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                endpoints.sweep();
            }
        });
    }

    if let Some(registry) = &shared.registry {
        let entry = RegistryEntry {
            app_id: shared.options.app_id.clone(),
            namespace: shared.options.namespace.clone(),
            mesh_address: format!("{}:{}", shared.options.advertise_host, addrs.mesh.port()),
            dapr_http_port: addrs.dapr_http.port(),
            pid: std::process::id(),
            started_unix_ms: now_unix_ms(),
        };
        let blocking = registry.clone();
        tokio::task::spawn_blocking(move || blocking.register(&entry))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|source| ProxyError::Registry {
                dir: registry.dir().display().to_string(),
                source,
            })?;
        let refresher = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_INTERVAL);
            loop {
                tick.tick().await;
                let registry = refresher.clone();
                let _ = tokio::task::spawn_blocking(move || registry.refresh_blocking()).await;
            }
        });
    }

    if let Some(endpoint) = shared.options.control_plane.clone() {
        let options = &shared.options;
        let node = outrigger_proto::mesh::v1::Node {
            id: format!(
                "{}-{}-{}",
                options.app_id,
                std::process::id(),
                addrs.mesh.port()
            ),
            app_id: options.app_id.clone(),
            namespace: options.namespace.clone().unwrap_or_default(),
            address: options.advertise_host.clone(),
            mesh_port: u32::from(addrs.mesh.port()),
        };
        tokio::spawn(crate::control_client::run(shared.clone(), endpoint, node));
    }

    shared.set_ready(true);
    let subscriptions = tokio::spawn(crate::subscriptions::supervise(shared.clone()));
    tracing::info!(
        app_id = %shared.options.app_id,
        dapr_http = %addrs.dapr_http,
        mesh = %addrs.mesh,
        admin = %addrs.admin,
        "sidecar listening"
    );

    shutdown.await;

    tracing::info!(
        in_flight = shared.drain.in_flight(),
        "shutting down: no new connections, draining requests in flight"
    );
    shared.start_draining();
    if let Some(registry) = &shared.registry {
        registry.deregister();
    }
    let _ = stop_tx.send(true);
    // Subscriptions stop pulling at once and settle or release what they hold, while the
    // requests in flight drain.
    subscriptions.abort();
    let (left, ()) = tokio::join!(
        shared.drain.wait_idle(shared.options.drain_timeout),
        shared.subscriptions.stop_all(shared.options.drain_timeout)
    );
    if left == 0 {
        tracing::info!("drained");
    } else {
        tracing::warn!(left, timeout = ?shared.options.drain_timeout, "drain timeout passed with requests still in flight");
    }
    Ok(())
}
