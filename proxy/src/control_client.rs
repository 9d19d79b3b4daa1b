//! The sidecar's side of the mesh.v1 discovery stream (`--control-plane URL`): subscribe to
//! every resource type, validate each response against the rest of the configuration, install
//! the result with one atomic swap and ACK — or NACK with the reason and keep serving the last
//! good snapshot. Reconnects with jittered backoff; the versions it holds survive reconnects.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use outrigger_config::dapr::{Component, Configuration, Resiliency, Subscription};
use outrigger_config::{Cluster, Route, Snapshot};
use outrigger_proto::mesh::v1 as mesh;
use outrigger_proto::mesh::v1::aggregated_discovery_client::AggregatedDiscoveryClient;
use outrigger_proto::mesh::v1::{DiscoveryRequest, DiscoveryResponse, ErrorDetail, Node};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::shared::Shared;
use outrigger_config::redact::Secrets;

const INVALID_ARGUMENT: i32 = 3;

/// What the control plane has sent, per type, as last applied.
#[derive(Clone, Default)]
struct Store {
    clusters: BTreeMap<String, Cluster>,
    endpoints: BTreeMap<String, Cluster>,
    resiliency: BTreeMap<String, Resiliency>,
    configuration: Option<Configuration>,
    components: BTreeMap<String, Component>,
    subscriptions: Vec<Subscription>,
    routes: BTreeMap<String, Route>,
    versions: BTreeMap<String, String>,
}

impl Store {
    /// This store with one type replaced by the response's resources.
    fn with(&self, response: &DiscoveryResponse) -> Result<Store, String> {
        let mut next = self.clone();
        let type_url = response.type_url.as_str();
        match type_url {
            mesh::TYPE_CLUSTER => next.clusters = by_name(response, |c: &Cluster| c.name.clone())?,
            mesh::TYPE_ENDPOINTS => {
                next.endpoints = by_name(response, |c: &Cluster| c.name.clone())?
            }
            mesh::TYPE_POLICY => {
                next.resiliency = by_name(response, |r: &Resiliency| r.metadata.name.clone())?
            }
            mesh::TYPE_CONFIGURATION => {
                let mut all = by_name(response, |c: &Configuration| c.metadata.name.clone())?;
                if all.len() > 1 {
                    return Err(format!(
                        "resources: {} Configurations; at most one may be in force",
                        all.len()
                    ));
                }
                next.configuration = all.pop_first().map(|(_, c)| c);
            }
            mesh::TYPE_COMPONENT => {
                next.components = by_name(response, |c: &Component| c.metadata.name.clone())?
            }
            mesh::TYPE_SUBSCRIPTION => {
                next.subscriptions = by_name(response, |s: &Subscription| s.metadata.name.clone())?
                    .into_values()
                    .collect()
            }
            mesh::TYPE_ROUTE => next.routes = by_name(response, |r: &Route| r.app.clone())?,
            other => return Err(format!("type_url: unknown resource type {other:?}")),
        }
        next.versions
            .insert(type_url.to_string(), response.version_info.clone());
        Ok(next)
    }

    fn snapshot(&self) -> Snapshot {
        let mut clusters = self.endpoints.clone();
        // A cluster from the config directory wins over the registry's cluster of the same name.
        clusters.extend(self.clusters.clone());
        let mut hasher = DefaultHasher::new();
        self.versions.hash(&mut hasher);
        Snapshot {
            version: format!("cp-{:016x}", hasher.finish()),
            clusters,
            routes: self.routes.clone(),
            policies: outrigger_config::Policies {
                resiliency: self.resiliency.clone(),
            },
            components: self.components.clone(),
            subscriptions: self.subscriptions.clone(),
            configuration: self.configuration.clone(),
        }
    }
}

/// Decodes a response built from `data` as a sidecar would (for the fuzz targets): the first
/// byte picks the type, the rest is resources separated by 0xff bytes.
pub(crate) fn decode_for_fuzzing(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let type_url = mesh::PUSH_ORDER[usize::from(pick) % mesh::PUSH_ORDER.len()];
    let resources = rest
        .split(|b| *b == 0xff)
        .filter(|r| !r.is_empty())
        .map(|value| outrigger_proto::Any {
            type_url: type_url.to_string(),
            value: value.to_vec(),
        })
        .collect();
    let response = DiscoveryResponse {
        type_url: type_url.to_string(),
        version_info: "fuzz".into(),
        nonce: "1".into(),
        resources,
    };
    if let Ok(store) = Store::default().with(&response) {
        let snapshot = store.snapshot();
        let _ = snapshot.validate();
        let _ = Secrets::of(&snapshot).scrub("x");
        let _ = snapshot.redacted();
    }
}

/// Decodes every resource of a response, keyed by `key`; a duplicate key is an error.
fn by_name<T: DeserializeOwned>(
    response: &DiscoveryResponse,
    key: impl Fn(&T) -> String,
) -> Result<BTreeMap<String, T>, String> {
    let mut out = BTreeMap::new();
    for (i, any) in response.resources.iter().enumerate() {
        if any.type_url != response.type_url {
            return Err(format!(
                "resources[{i}]: type_url {:?} does not match the response's {:?}",
                any.type_url, response.type_url
            ));
        }
        let item: T = serde_json::from_slice(&any.value)
            .map_err(|e| format!("resources[{i}]: not a valid {}: {e}", response.type_url))?;
        let name = key(&item);
        if out.insert(name.clone(), item).is_some() {
            return Err(format!("resources[{i}]: duplicate name {name:?}"));
        }
    }
    Ok(out)
}

/// The largest discovery response accepted: one resource type's whole set. The control plane
/// refuses to push a set above it (and says which resources are too large).
const MAX_PUSH_MESSAGE: usize = 16 * 1024 * 1024;
/// The longest refusal sent back in a NACK.
const MAX_NACK_MESSAGE: usize = 4096;

/// Runs the client for the life of the sidecar.
pub(crate) async fn run(sidecar: Arc<Shared>, endpoint: String, node: Node) {
    let mut store = Store::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        match stream_once(&sidecar, &endpoint, &node, &mut store).await {
            Ok(received) => {
                tracing::warn!(%endpoint, "control plane stream closed; serving the last good configuration");
                if received {
                    backoff = Duration::from_millis(100);
                }
            }
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "control plane unreachable; serving the last good configuration")
            }
        }
        let jitter = 0.5 + fastrand::f64();
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One stream's life. Returns whether any response arrived.
async fn stream_once(
    sidecar: &Arc<Shared>,
    endpoint: &str,
    node: &Node,
    store: &mut Store,
) -> Result<bool, String> {
    let mut client = AggregatedDiscoveryClient::connect(endpoint.to_string())
        .await
        .map_err(|e| e.to_string())?
        .max_decoding_message_size(MAX_PUSH_MESSAGE);
    let (tx, rx) = mpsc::channel(16);
    for (i, type_url) in mesh::PUSH_ORDER.iter().enumerate() {
        let request = DiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: type_url.to_string(),
            version_info: store.versions.get(*type_url).cloned().unwrap_or_default(),
            ..Default::default()
        };
        tx.send(request).await.map_err(|e| e.to_string())?;
    }
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    tracing::info!(%endpoint, "connected to the control plane");
    let mut received = false;
    while let Some(response) = inbound.message().await.map_err(|e| e.to_string())? {
        received = true;
        let outcome = store.with(&response).and_then(|next| {
            // A refusal may quote a component's values: its secrets never leave in a NACK
            // or a log line.
            let candidate = next.snapshot();
            let secrets = Secrets::of(&candidate);
            sidecar.install(candidate).map_err(|e| {
                let message = secrets.scrub(&e.to_string()).into_owned();
                message.chars().take(MAX_NACK_MESSAGE).collect::<String>()
            })?;
            Ok(next)
        });
        let answer = match outcome {
            Ok(next) => {
                tracing::info!(type_url = %response.type_url, version = %response.version_info, "applied");
                *store = next;
                DiscoveryRequest {
                    type_url: response.type_url.clone(),
                    version_info: response.version_info.clone(),
                    response_nonce: response.nonce.clone(),
                    ..Default::default()
                }
            }
            Err(message) => {
                tracing::warn!(type_url = ?response.type_url, version = ?response.version_info, message = ?message, "refused (NACK)");
                DiscoveryRequest {
                    type_url: response.type_url.clone(),
                    version_info: store
                        .versions
                        .get(&response.type_url)
                        .cloned()
                        .unwrap_or_default(),
                    response_nonce: response.nonce.clone(),
                    error_detail: Some(ErrorDetail {
                        code: INVALID_ARGUMENT,
                        message,
                    }),
                    ..Default::default()
                }
            }
        };
        if tx.send(answer).await.is_err() {
            break;
        }
    }
    Ok(received)
}
