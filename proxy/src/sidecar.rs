//! The sidecar as a whole: the state every request reads ([`Sidecar`]), the bound listeners
//! ([`BoundListeners`]) and the serve-then-drain lifecycle ([`run`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use outrigger_config::{Snapshot, SnapshotError};
use pingora::server::configuration::ServerConf;
use pingora::server::Fds;
use tokio::sync::watch;

use crate::admin::AdminApp;
use crate::balance::{EndpointSet, Target};
use crate::components::{open_state_stores, StateComponent};
use crate::dapr_http::DaprHttpApi;
use crate::discovery::{now_unix_ms, LocalRegistry, RegistryEntry, REFRESH_INTERVAL};
use crate::drain::Drain;
use crate::mesh_inbound::MeshInbound;
use crate::metrics::Metrics;
use crate::options::SidecarOptions;
use crate::routing::{CompiledRoute, CompiledRule, RequestView};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} for the {what}: {source}; pick another port with {flag}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] SnapshotError),
    #[error("cannot write this sidecar's entry into the registry {dir}: {source}")]
    Registry { dir: String, source: std::io::Error },
}

/// The configuration a request runs against: the snapshot and the endpoint sets built from it.
pub(crate) struct ActiveConfig {
    pub(crate) snapshot: Arc<Snapshot>,
    /// One endpoint set per snapshot cluster, by cluster name.
    clusters: HashMap<String, Arc<EndpointSet>>,
    /// The compiled route of each target app id that has one.
    routes: HashMap<String, CompiledRoute>,
    /// The state stores this app may use, by component name.
    pub(crate) state_stores: HashMap<String, Arc<StateComponent>>,
}

/// Where one invocation goes: the endpoints, and the route rule that chose them (for its
/// timeout and header rewrite), if a route did.
pub(crate) struct Resolved {
    pub(crate) endpoints: Arc<EndpointSet>,
    pub(crate) rule: Option<Arc<CompiledRule>>,
}

/// Everything the listeners share.
pub struct Sidecar {
    pub(crate) options: SidecarOptions,
    config: ArcSwap<ActiveConfig>,
    pub(crate) registry: Option<Arc<LocalRegistry>>,
    pub(crate) metrics: Metrics,
    pub(crate) drain: Arc<Drain>,
    ready: AtomicBool,
    /// Set through `PUT /v1.0/metadata/{key}`, shown by `GET /v1.0/metadata`.
    pub(crate) extended_metadata: parking_lot::Mutex<BTreeMap<String, String>>,
    /// Filled in once the listeners are bound.
    pub(crate) addresses: parking_lot::Mutex<Option<ListenerAddrs>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerAddrs {
    pub(crate) dapr_http: SocketAddr,
    pub(crate) mesh: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl Sidecar {
    pub fn new(options: SidecarOptions, snapshot: Snapshot) -> Result<Arc<Self>, ProxyError> {
        snapshot.validate()?;
        let active = build_active(Arc::new(snapshot), None, &options.app_id)?;
        let registry = options
            .registry_dir
            .clone()
            .map(|dir| Arc::new(LocalRegistry::new(dir)));
        let sidecar = Sidecar {
            config: ArcSwap::from_pointee(active),
            options,
            registry,
            metrics: Metrics::new(),
            drain: Arc::new(Drain::default()),
            ready: AtomicBool::new(false),
            extended_metadata: parking_lot::Mutex::new(BTreeMap::new()),
            addresses: parking_lot::Mutex::new(None),
        };
        Ok(Arc::new(sidecar))
    }

    /// Validates `snapshot` and makes it the one new requests use. Requests already running
    /// finish on the snapshot they started with.
    pub fn install(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        snapshot.validate()?;
        let old = self.config.load();
        let next = build_active(Arc::new(snapshot), Some(&old), &self.options.app_id)?;
        self.config.store(Arc::new(next));
        Ok(())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load().snapshot.clone()
    }

    pub(crate) fn active(&self) -> arc_swap::Guard<Arc<ActiveConfig>> {
        self.config.load()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Where a call to `app_id` goes: the first matching rule of its route (split by weight),
    /// else the cluster of the same name, else the instances found in the local registry.
    pub(crate) async fn resolve(
        &self,
        app_id: &str,
        namespace: Option<&str>,
        request: &RequestView<'_>,
    ) -> Option<Resolved> {
        {
            let active = self.active();
            if let Some(rule) = active.routes.get(app_id).and_then(|r| r.select(request)) {
                return Some(Resolved {
                    endpoints: rule.pick_backend(),
                    rule: Some(rule.clone()),
                });
            }
            if let Some(set) = active.clusters.get(app_id) {
                return Some(Resolved {
                    endpoints: set.clone(),
                    rule: None,
                });
            }
        }
        let endpoints = self
            .registry
            .as_ref()?
            .lookup_or_refresh(app_id, namespace)
            .await?;
        Some(Resolved {
            endpoints,
            rule: None,
        })
    }
}

fn build_active(
    snapshot: Arc<Snapshot>,
    previous: Option<&ActiveConfig>,
    app_id: &str,
) -> Result<ActiveConfig, SnapshotError> {
    let state_stores = open_state_stores(&snapshot, app_id, previous.map(|p| &p.state_stores))?;
    let clusters = snapshot
        .clusters
        .values()
        .map(|cluster| {
            let mut targets: Vec<Target> = cluster
                .endpoints
                .iter()
                .map(|e| Target {
                    address: e.address.as_str().to_string(),
                    weight: e.weight,
                })
                .collect();
            targets.sort();
            let set = match previous.and_then(|p| p.clusters.get(&cluster.name)) {
                Some(existing) if existing.targets == targets => existing.clone(),
                _ => Arc::new(EndpointSet::round_robin(targets)),
            };
            (cluster.name.clone(), set)
        })
        .collect();
    let routes = snapshot
        .routes
        .iter()
        .map(|(app, route)| (app.clone(), CompiledRoute::compile(route, &clusters)))
        .collect();
    Ok(ActiveConfig {
        snapshot,
        clusters,
        routes,
        state_stores,
    })
}

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
            // pingora adopts the socket into tokio, which needs it non-blocking.
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

/// Serves until `shutdown` resolves, then stops accepting, leaves the registry, waits for the
/// requests in flight (up to the drain timeout) and returns.
pub async fn run(
    sidecar: Arc<Sidecar>,
    listeners: BoundListeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let addrs = ListenerAddrs {
        dapr_http: listeners.dapr_http_addr(),
        mesh: listeners.mesh_addr(),
        admin: listeners.admin_addr(),
    };
    *sidecar.addresses.lock() = Some(addrs);

    // pingora binds its own listeners unless it finds the address in this table; handing it
    // our already-bound sockets keeps bind errors ours and makes port 0 work.
    let fds = Arc::new(parking_lot::Mutex::new(Fds::new()));
    {
        let mut table = fds.lock();
        table.add(
            addrs.dapr_http.to_string(),
            listeners.dapr_http.into_raw_fd(),
        );
        table.add(addrs.mesh.to_string(), listeners.mesh.into_raw_fd());
        table.add(addrs.admin.to_string(), listeners.admin.into_raw_fd());
    }

    let conf = Arc::new(ServerConf {
        max_retries: 4,
        ..ServerConf::default()
    });
    let mut server_options = pingora::apps::HttpServerOptions::default();
    server_options.h2c = true;
    let h2c = Some(server_options);

    // The Dapr HTTP API is HTTP/1.1 only: pingora's h2c detection waits for 24 bytes of
    // preface, which would leave a shorter HTTP/1 request hanging. The mesh listener, where
    // only sidecars connect, speaks h2c.
    let mut dapr = pingora::proxy::http_proxy_service_with_name(
        &conf,
        DaprHttpApi::new(sidecar.clone()),
        "dapr-http",
    );
    dapr.add_tcp(&addrs.dapr_http.to_string());
    let mut mesh = pingora::proxy::http_proxy_service_with_name(
        &conf,
        MeshInbound::new(sidecar.clone()),
        "mesh",
    );
    mesh.add_tcp(&addrs.mesh.to_string());
    if let Some(app) = mesh.app_logic_mut() {
        app.server_options = h2c;
    }
    let mut admin = pingora::services::listening::Service::new(
        "admin".to_string(),
        AdminApp::new(sidecar.clone()),
    );
    admin.add_tcp(&addrs.admin.to_string());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut services = Vec::new();
    for mut service in [
        Box::new(dapr) as Box<dyn pingora::services::Service>,
        Box::new(mesh),
        Box::new(admin),
    ] {
        let fds = fds.clone();
        let stop = stop_rx.clone();
        services.push(tokio::spawn(async move {
            service.start_service(Some(fds), stop, 1).await;
        }));
    }

    if let Some(registry) = &sidecar.registry {
        let entry = RegistryEntry {
            app_id: sidecar.options.app_id.clone(),
            namespace: sidecar.options.namespace.clone(),
            mesh_address: format!("{}:{}", sidecar.options.advertise_host, addrs.mesh.port()),
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

    if let Some(endpoint) = sidecar.options.control_plane.clone() {
        let options = &sidecar.options;
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
        tokio::spawn(crate::control_client::run(sidecar.clone(), endpoint, node));
    }

    sidecar.ready.store(true, Ordering::Release);
    tracing::info!(
        app_id = %sidecar.options.app_id,
        dapr_http = %addrs.dapr_http,
        mesh = %addrs.mesh,
        admin = %addrs.admin,
        "sidecar listening"
    );

    shutdown.await;

    tracing::info!(
        in_flight = sidecar.drain.in_flight(),
        "shutting down: no new connections, draining requests in flight"
    );
    sidecar.ready.store(false, Ordering::Release);
    if let Some(registry) = &sidecar.registry {
        registry.deregister();
    }
    let _ = stop_tx.send(true);
    let left = sidecar.drain.wait_idle(sidecar.options.drain_timeout).await;
    if left == 0 {
        tracing::info!("drained");
    } else {
        tracing::warn!(left, timeout = ?sidecar.options.drain_timeout, "drain timeout passed with requests still in flight");
    }
    Ok(())
}
