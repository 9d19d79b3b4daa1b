//! The discovery server: one task per sidecar stream. It registers the sidecar, answers
//! subscriptions, pushes every type whose version changed (in make-before-break order), and
//! records ACKs and NACKs. Stale nonces and unknown types are ignored, never fatal.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use outrigger_config::Snapshot;
use outrigger_proto::mesh::v1 as mesh;
use outrigger_proto::mesh::v1::aggregated_discovery_server::AggregatedDiscovery;
use outrigger_proto::mesh::v1::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::desired::Desired;
use crate::metrics::Metrics;
use crate::registry::{Nack, Registered, Registry};

/// Everything the streams share.
pub struct ControlPlane {
    snapshot: Mutex<Snapshot>,
    pub(crate) registry: Mutex<Registry>,
    desired: watch::Sender<Arc<Desired>>,
    next_stream: AtomicU64,
    pub(crate) metrics: Metrics,
}

impl ControlPlane {
    pub fn new(snapshot: Snapshot) -> Arc<ControlPlane> {
        let desired = Desired::build(&snapshot, &[]);
        Arc::new(ControlPlane {
            snapshot: Mutex::new(snapshot),
            registry: Mutex::new(Registry::default()),
            desired: watch::Sender::new(Arc::new(desired)),
            next_stream: AtomicU64::new(1),
            metrics: Metrics::new(),
        })
    }

    /// A new config directory state: recompute and wake every stream.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        *lock(&self.snapshot) = snapshot;
        self.recompute();
    }

    fn recompute(&self) {
        let registered = lock(&self.registry).all();
        let desired = Desired::build(&lock(&self.snapshot), &registered);
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
}

impl StreamState {
    async fn serve(&mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut desired = self.plane.desired.subscribe();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        let current = desired.borrow().clone();
                        self.on_request(request, &current).await;
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(stream = self.id, %status, "stream ended");
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

    async fn on_request(&mut self, request: DiscoveryRequest, desired: &Desired) {
        if let Some(node) = &request.node {
            let registered = lock(&self.plane.registry).get_mut(self.id).is_some();
            if !registered && !node.app_id.is_empty() {
                let sidecar = Registered {
                    node_id: node.id.clone(),
                    app_id: node.app_id.clone(),
                    namespace: (!node.namespace.is_empty()).then(|| node.namespace.clone()),
                    mesh_address: format!("{}:{}", node.address, node.mesh_port),
                    acked: BTreeMap::new(),
                    last_nack: None,
                };
                tracing::info!(stream = self.id, node = %node.id, app_id = %node.app_id, "sidecar registered");
                lock(&self.plane.registry).insert(self.id, sidecar);
                self.plane.recompute();
            }
        }
        let Some(type_url) = mesh::PUSH_ORDER
            .iter()
            .copied()
            .find(|t| *t == request.type_url)
        else {
            tracing::warn!(stream = self.id, type_url = %request.type_url, "request for an unknown resource type ignored");
            return;
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
            return;
        }
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return;
        };
        if subscription.nonce.as_deref() != Some(request.response_nonce.as_str()) {
            return; // stale: answers a response that has been superseded
        }
        let latency = subscription.sent_at.map(|t| t.elapsed());
        let mut registry = lock(&self.plane.registry);
        let Some(sidecar) = registry.get_mut(self.id) else {
            return;
        };
        match request.error_detail {
            Some(error) => {
                self.plane.metrics.nacks.inc();
                tracing::warn!(node = %sidecar.node_id, type_url, message = %error.message, "NACK");
                sidecar.last_nack = Some(Nack {
                    type_url: type_url.to_string(),
                    message: error.message,
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
