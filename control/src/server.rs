//! The discovery server: one task per sidecar stream. It registers the sidecar, answers
//! subscriptions, pushes every type whose version changed (in make-before-break order), and
//! records ACKs and NACKs. Stale nonces and unknown types are ignored, never fatal.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use outrigger_config::redact::Secrets;
use outrigger_config::{Snapshot, Sources};
use outrigger_proto::mesh::v1 as mesh;
use outrigger_proto::mesh::v1::aggregated_discovery_server::AggregatedDiscovery;
use outrigger_proto::mesh::v1::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::desired::{Desired, PUSH_LIMIT};
use crate::metrics::Metrics;
use crate::registry::{Nack, Registered, Registry};

/// Everything the streams share.
pub struct ControlPlane {
    config: Mutex<Config>,
    pub(crate) registry: Mutex<Registry>,
    desired: watch::Sender<Arc<Desired>>,
    next_stream: AtomicU64,
    pub(crate) metrics: Metrics,
    /// At most this many sidecars are registered at once.
    max_sidecars: usize,
}

/// The config directory as loaded: the snapshot, where each resource came from, its secrets
/// (scrubbed out of what is logged), and the version last reported as too large to push.
struct Config {
    snapshot: Snapshot,
    sources: Sources,
    secrets: Secrets,
    reported_oversized: Option<String>,
}

impl ControlPlane {
    pub fn new(snapshot: Snapshot, sources: Sources, max_sidecars: usize) -> Arc<ControlPlane> {
        let plane = Arc::new(ControlPlane {
            config: Mutex::new(Config {
                secrets: Secrets::of(&snapshot),
                snapshot,
                sources,
                reported_oversized: None,
            }),
            registry: Mutex::new(Registry::default()),
            desired: watch::Sender::new(Arc::new(Desired::default())),
            next_stream: AtomicU64::new(1),
            metrics: Metrics::new(),
            max_sidecars,
        });
        plane.recompute();
        plane
    }

    /// The version of the configuration in force.
    pub fn version(&self) -> String {
        lock(&self.config).snapshot.version.clone()
    }

    /// A new config directory state: recompute and wake every stream.
    pub fn set_snapshot(&self, snapshot: Snapshot, sources: Sources) {
        {
            let mut config = lock(&self.config);
            config.secrets = Secrets::of(&snapshot);
            config.snapshot = snapshot;
            config.sources = sources;
        }
        self.metrics.reloads.inc();
        self.recompute();
    }

    /// `text` with the configuration's secrets scrubbed out, for the log.
    pub(crate) fn scrub(&self, text: &str) -> String {
        lock(&self.config).secrets.scrub(text).into_owned()
    }

    fn recompute(&self) {
        let registered = lock(&self.registry).all();
        let mut config = lock(&self.config);
        let mut desired = Desired::build(&config.snapshot, &registered);
        let oversized = desired.oversized();
        if !oversized.is_empty() {
            // Sidecars would refuse the message and reconnect forever: keep the type's last
            // pushed set in force and say which resources are too large.
            let current = self.desired.borrow().clone();
            for (type_url, _) in &oversized {
                match current.types.get(type_url) {
                    Some(previous) => desired.types.insert(type_url, previous.clone()),
                    None => desired.types.remove(type_url),
                };
            }
            let version = config.snapshot.version.clone();
            if config.reported_oversized.as_deref() != Some(version.as_str()) {
                self.metrics.oversized.inc();
                for (type_url, len) in &oversized {
                    let state = Desired::build(&config.snapshot, &registered)
                        .types
                        .remove(type_url)
                        .unwrap_or_default();
                    let mut largest = state.sizes.clone();
                    largest.sort_by_key(|(_, _, size)| std::cmp::Reverse(*size));
                    let named: Vec<String> = largest
                        .iter()
                        .take(3)
                        .map(|(kind, name, size)| {
                            let file = config
                                .sources
                                .file_of(kind, name)
                                .map_or("?".to_string(), |f| f.display().to_string());
                            format!("{kind} {name:?} in {file} ({size} bytes)")
                        })
                        .collect();
                    tracing::error!(
                        type_url,
                        bytes = len,
                        limit = PUSH_LIMIT,
                        largest = %named.join(", "),
                        "not pushed: this resource type is over the push limit; sidecars keep their last good version"
                    );
                }
                config.reported_oversized = Some(version);
            }
        } else {
            config.reported_oversized = None;
        }
        drop(config);
        self.desired.send_if_modified(|current| {
            if **current == desired {
                return false;
            }
            *current = Arc::new(desired);
            true
        });
    }

    pub fn sidecars(&self) -> Vec<Registered> {
        lock(&self.registry).all()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tonic service over a shared [`ControlPlane`].
pub struct DiscoveryService(pub Arc<ControlPlane>);

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscovery for DiscoveryService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let plane = self.0.clone();
        let id = plane.next_stream.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut stream = StreamState {
                id,
                plane: plane.clone(),
                tx,
                subscriptions: BTreeMap::new(),
                nonce: 0,
                unknown_types: 0,
            };
            stream.serve(inbound).await;
            if lock(&plane.registry).remove(id).is_some() {
                plane.recompute();
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[derive(Default)]
struct Subscription {
    /// Version of the last response sent (or the client's own when it subscribed).
    sent_version: Option<String>,
    /// Nonce of the last response sent; only an answer to it counts.
    nonce: Option<String>,
    sent_at: Option<Instant>,
}

struct StreamState {
    id: u64,
    plane: Arc<ControlPlane>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    subscriptions: BTreeMap<&'static str, Subscription>,
    nonce: u64,
    /// Requests for unknown types so far; only the first few are logged.
    unknown_types: u64,
}

/// The longest NACK message kept (and logged) from a sidecar.
const MAX_NACK_MESSAGE: usize = 4096;
/// Unknown-type requests logged per stream before they are only counted.
const UNKNOWN_TYPES_LOGGED: u64 = 3;

/// Checks what a sidecar says about itself: bounded, and made of the characters app ids,
/// namespaces and addresses are made of, so nothing it sends can balloon the registry or
/// forge a log line.
fn check_node(node: &mesh::Node) -> Result<(), Status> {
    fn check(
        field: &str,
        value: &str,
        max: usize,
        allowed: fn(char) -> bool,
    ) -> Result<(), Status> {
        if value.len() > max {
            return Err(Status::invalid_argument(format!(
                "node.{field} is {} bytes; at most {max} are allowed",
                value.len()
            )));
        }
        if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
            return Err(Status::invalid_argument(format!(
                "node.{field} contains {bad:?}; use letters, digits, '-' and '_'"
            )));
        }
        Ok(())
    }
    let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    check("app_id", &node.app_id, 253, name)?;
    check("namespace", &node.namespace, 253, name)?;
    check("id", &node.id, 512, |c| c.is_ascii_graphic())?;
    check("address", &node.address, 253, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '[' | ']')
    })?;
    if node.mesh_port == 0 || node.mesh_port > u32::from(u16::MAX) {
        return Err(Status::invalid_argument(format!(
            "node.mesh_port {} is not a TCP port",
            node.mesh_port
        )));
    }
    Ok(())
}

impl StreamState {
    async fn serve(&mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut desired = self.plane.desired.subscribe();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        let current = desired.borrow().clone();
                        if let Err(status) = self.on_request(request, &current).await {
                            self.plane.metrics.refused_registrations.inc();
                            tracing::warn!(stream = self.id, error = ?status.message(), "stream refused");
                            let _ = self.tx.send(Err(status)).await;
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        // A message over the inbound limit, or a broken stream: the sidecar
                        // hears why.
                        tracing::debug!(stream = self.id, status = ?status.message(), "stream ended");
                        let _ = self.tx.send(Err(status)).await;
                        return;
                    }
                },
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = desired.borrow_and_update().clone();
                    self.push_changed(&current).await;
                }
            }
        }
    }

    async fn on_request(
        &mut self,
        request: DiscoveryRequest,
        desired: &Desired,
    ) -> Result<(), Status> {
        if let Some(node) = &request.node {
            let registered = lock(&self.plane.registry).get_mut(self.id).is_some();
            // A stream without an app id only watches (tools, tests): it is not registered.
            if !registered && !node.app_id.is_empty() {
                check_node(node)?;
                let count = lock(&self.plane.registry).len();
                if count >= self.plane.max_sidecars {
                    return Err(Status::resource_exhausted(format!(
                        "{count} sidecars are registered, the most this control plane takes (--max-sidecars)"
                    )));
                }
                let sidecar = Registered {
                    node_id: node.id.clone(),
                    app_id: node.app_id.clone(),
                    namespace: (!node.namespace.is_empty()).then(|| node.namespace.clone()),
                    mesh_address: format!("{}:{}", node.address, node.mesh_port),
                    acked: BTreeMap::new(),
                    last_nack: None,
                };
                tracing::info!(stream = self.id, node = ?node.id, app_id = ?node.app_id, "sidecar registered");
                lock(&self.plane.registry).insert(self.id, sidecar);
                self.plane.recompute();
            }
        }
        let Some(type_url) = mesh::PUSH_ORDER
            .iter()
            .copied()
            .find(|t| *t == request.type_url)
        else {
            self.unknown_types += 1;
            if self.unknown_types <= UNKNOWN_TYPES_LOGGED {
                let type_url: String = request.type_url.chars().take(200).collect();
                tracing::warn!(stream = self.id, type_url = ?type_url, "request for an unknown resource type ignored");
            } else if self.unknown_types.is_power_of_two() {
                tracing::warn!(
                    stream = self.id,
                    count = self.unknown_types,
                    "requests for unknown resource types keep coming; ignored"
                );
            }
            return Ok(());
        };
        if request.response_nonce.is_empty() {
            // A subscription (or re-subscription after a reconnect) with the client's version.
            let subscription = self.subscriptions.entry(type_url).or_default();
            subscription.sent_version = Some(request.version_info.clone());
            let current = desired.types.get(type_url).map(|t| t.version.as_str());
            if !request.version_info.is_empty() && current == Some(request.version_info.as_str()) {
                // A reconnecting sidecar that already has the current version: nothing to send,
                // and the admin page should still show what it runs.
                if let Some(sidecar) = lock(&self.plane.registry).get_mut(self.id) {
                    sidecar
                        .acked
                        .insert(type_url.to_string(), request.version_info.clone());
                }
            }
            self.push_if_changed(type_url, desired).await;
            return Ok(());
        }
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return Ok(());
        };
        if subscription.nonce.as_deref() != Some(request.response_nonce.as_str()) {
            return Ok(()); // stale: answers a response that has been superseded
        }
        let latency = subscription.sent_at.map(|t| t.elapsed());
        let scrubbed = request.error_detail.as_ref().map(|error| {
            let bounded: String = error.message.chars().take(MAX_NACK_MESSAGE).collect();
            self.plane.scrub(&bounded)
        });
        let mut registry = lock(&self.plane.registry);
        let Some(sidecar) = registry.get_mut(self.id) else {
            return Ok(());
        };
        match scrubbed {
            Some(message) => {
                self.plane.metrics.nacks.inc();
                tracing::warn!(node = ?sidecar.node_id, type_url, message = ?message, "NACK");
                sidecar.last_nack = Some(Nack {
                    type_url: type_url.to_string(),
                    message,
                });
            }
            None => {
                if let Some(latency) = latency {
                    self.plane
                        .metrics
                        .push_to_ack
                        .observe(latency.as_secs_f64());
                }
                sidecar
                    .acked
                    .insert(type_url.to_string(), request.version_info);
                if sidecar
                    .last_nack
                    .as_ref()
                    .is_some_and(|n| n.type_url == type_url)
                {
                    sidecar.last_nack = None;
                }
            }
        }
        Ok(())
    }

    async fn push_changed(&mut self, desired: &Desired) {
        for type_url in mesh::PUSH_ORDER {
            self.push_if_changed(type_url, desired).await;
        }
    }

    async fn push_if_changed(&mut self, type_url: &'static str, desired: &Desired) {
        let Some(state) = desired.types.get(type_url) else {
            return;
        };
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return;
        };
        if subscription.sent_version.as_deref() == Some(state.version.as_str()) {
            return;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        subscription.sent_version = Some(state.version.clone());
        subscription.nonce = Some(nonce.clone());
        subscription.sent_at = Some(Instant::now());
        let response = DiscoveryResponse {
            type_url: type_url.to_string(),
            version_info: state.version.clone(),
            nonce,
            resources: state.resources.clone(),
        };
        self.plane.metrics.pushes.inc();
        let _ = self.tx.send(Ok(response)).await;
    }
}
