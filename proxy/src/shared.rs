//! What every listener reads: the configuration cell, the endpoints and their state, discovery,
//! metrics and the drain counter. One [`Shared`] per sidecar; listeners hold an `Arc` of it.

use crate::mesh_identity::MeshIdentity;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use outrigger_config::redact::Secrets;
use outrigger_config::{Snapshot, SnapshotError};
use tokio::sync::watch;

use crate::active::{ActiveConfig, BuildContext, Resolved};
use crate::discovery::LocalRegistry;
use crate::drain::Drain;
use crate::metrics::{AppMetrics, Direction, Metrics};
use crate::options::{AppProtocol, SidecarOptions};
use crate::routing::RequestView;
use crate::upstream::{EndpointSet, Endpoints, Protocol};

/// The running configuration: swapped whole, read once per request. The watch announces
/// every swap (its value counts them) to whoever must react to one.
pub(crate) struct ConfigCell {
    active: ArcSwap<ActiveConfig>,
    swaps: watch::Sender<u64>,
    /// Installs build on the previous configuration, so they run one at a time.
    installing: parking_lot::Mutex<()>,
}

impl ConfigCell {
    fn new(first: ActiveConfig) -> ConfigCell {
        ConfigCell {
            active: ArcSwap::from_pointee(first),
            swaps: watch::Sender::new(0),
            installing: parking_lot::Mutex::new(()),
        }
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<ActiveConfig>> {
        self.active.load()
    }

    /// A receiver that sees every later swap.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.swaps.subscribe()
    }
}

/// The local app as an upstream: its one endpoint and the protocol it speaks.
pub(crate) struct LocalApp {
    pub(crate) endpoints: EndpointSet,
    /// `127.0.0.1:<port>`, the `Host` for requests that came without one.
    pub(crate) authority: String,
    pub(crate) protocol: Protocol,
    pub(crate) port: u16,
    pub(crate) metrics: Arc<AppMetrics>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerAddrs {
    pub(crate) dapr_http: SocketAddr,
    pub(crate) mesh: SocketAddr,
    pub(crate) admin: SocketAddr,
}

pub struct Shared {
    pub(crate) options: SidecarOptions,
    pub(crate) config: ConfigCell,
    pub(crate) endpoints: Arc<Endpoints>,
    /// Circuit breakers by (target, policy): kept across swaps.
    pub(crate) breakers: Arc<crate::upstream::breaker::Breakers>,
    pub(crate) registry: Option<Arc<LocalRegistry>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) drain: Drain,
    pub(crate) app: Option<LocalApp>,
    ready: AtomicBool,
    /// Shutting down: every answer closes its connection.
    draining: AtomicBool,
    /// Set through `PUT /v1.0/metadata/{key}`, shown by `GET /v1.0/metadata`.
    pub(crate) extended_metadata: parking_lot::Mutex<BTreeMap<String, String>>,
    /// Filled in once the listeners are bound.
    pub(crate) addresses: parking_lot::Mutex<Option<ListenerAddrs>>,
    /// The pub/sub subscriptions and their delivery workers.
    pub(crate) subscriptions: crate::subscriptions::Subscriptions,
    /// This sidecar's mesh identity; `None` with `--mtls off`.
    pub(crate) identity: Option<Arc<MeshIdentity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} for the {what}: {source}; pick another port with {flag}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        flag: &'static str,
        source: std::io::Error,
    },
    /// The message has the configuration's secrets scrubbed out.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot write this sidecar's entry into the registry {dir}: {source}")]
    Registry { dir: String, source: std::io::Error },
    #[error("cannot set up mTLS: {0} (or start with --mtls off)")]
    Identity(#[from] crate::identity::IdentityError),
}

impl Shared {
    pub fn new(options: SidecarOptions, snapshot: Snapshot) -> Result<Arc<Self>, ProxyError> {
        let secrets = Secrets::of(&snapshot);
        let refused =
            |e: SnapshotError| ProxyError::Config(secrets.scrub(&e.to_string()).into_owned());
        snapshot.validate().map_err(refused)?;
        let metrics = Arc::new(Metrics::new());
        let endpoints = Arc::new(Endpoints::with_metrics(
            metrics.resilience.ejections.clone(),
        ));
        let breakers = Arc::new(crate::upstream::breaker::Breakers::with_metrics(
            metrics.resilience.breaker_transitions.clone(),
        ));
        let active = ActiveConfig::build(
            Arc::new(snapshot),
            None,
            &BuildContext {
                app_id: &options.app_id,
                endpoints: &endpoints,
                metrics: &metrics,
                breakers: &breakers,
            },
        )
        .map_err(refused)?;
        let registry = options
            .registry_dir
            .clone()
            .map(|dir| Arc::new(LocalRegistry::new(dir, endpoints.clone(), metrics.clone())));
        let identity = match &options.mtls {
            Some(mtls) => Some(Arc::new(MeshIdentity::start(
                mtls,
                &options.app_id,
                options.namespace.as_deref(),
            )?)),
            None => None,
        };
        let app = options.app_port.map(|port| LocalApp {
            endpoints: EndpointSet::round_robin(&endpoints, vec![(format!("127.0.0.1:{port}"), 1)]),
            authority: format!("127.0.0.1:{port}"),
            protocol: match options.app_protocol {
                AppProtocol::Http => Protocol::Http1,
                AppProtocol::H2c => Protocol::H2c,
            },
            port,
            metrics: metrics.app(Direction::Inbound, &options.app_id),
        });
        Ok(Arc::new(Shared {
            config: ConfigCell::new(active),
            options,
            endpoints,
            breakers,
            registry,
            metrics,
            drain: Drain::default(),
            app,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            extended_metadata: parking_lot::Mutex::new(BTreeMap::new()),
            addresses: parking_lot::Mutex::new(None),
            subscriptions: Default::default(),
            identity,
        }))
    }

    /// Validates `snapshot` and makes it the one new requests use. Requests already running
    /// finish on the configuration they started with.
    pub fn install(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        snapshot.validate()?;
        let _one_at_a_time = self.config.installing.lock();
        let previous = self.config.load();
        let next = ActiveConfig::build(
            Arc::new(snapshot),
            Some(&previous),
            &BuildContext {
                app_id: &self.options.app_id,
                endpoints: &self.endpoints,
                metrics: &self.metrics,
                breakers: &self.breakers,
            },
        )?;
        self.config.active.store(Arc::new(next));
        self.config.swaps.send_modify(|swaps| *swaps += 1);
        Ok(())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.load().snapshot.clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Not ready any more, and every connection closes after its current request.
    pub(crate) fn start_draining(&self) {
        self.set_ready(false);
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Where a call to `app_id` goes: the first matching rule of its route (split by weight),
    /// else the cluster of the same name, else the instances found in the local registry.
    pub(crate) async fn resolve(
        &self,
        app_id: &str,
        namespace: Option<&str>,
        request: &RequestView<'_>,
    ) -> Option<Resolved> {
        if let Some(resolved) = self.config.load().resolve(app_id, request) {
            return Some(resolved);
        }
        let target = self
            .registry
            .as_ref()?
            .lookup_or_refresh(app_id, namespace)
            .await?;
        Some(Resolved {
            endpoints: target.endpoints.clone(),
            rule: None,
            metrics: target.metrics.clone(),
        })
    }
}
