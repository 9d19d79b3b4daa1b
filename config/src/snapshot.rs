//! The [`Snapshot`]: one immutable value holding everything a sidecar runs from.
//!
//! A running proxy keeps it behind an `ArcSwap`, loads it once per request and replaces it
//! with one atomic store, so it must be complete and valid on its own: [`Snapshot::validate`]
//! is what a loader (or, later, a control-plane client) calls before handing it over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dapr::{Component, Configuration, Resiliency, Subscription};
use crate::mesh::HostPort;
use crate::route::Route;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Identifies this configuration; changes whenever anything in it changes.
    pub version: String,
    /// Named sets of sidecar endpoints, by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// How calls to a target app id are routed, by target app id. An app id without a route
    /// goes to the cluster of the same name, or else to the instances found by discovery.
    pub routes: BTreeMap<String, Route>,
    pub policies: Policies,
    /// Dapr components, by name.
    pub components: BTreeMap<String, Component>,
    pub subscriptions: Vec<Subscription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Configuration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub load_balancer: LoadBalancer,
    /// What `ringHash` hashes; required with it, refused without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    pub endpoints: Vec<Endpoint>,
}

/// The request part a `ringHash` cluster hashes (`Cluster.spec.hashOn`): a header
/// (`{header: x-user}`) or a query parameter (`{query: metadata.partitionKey}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint's mesh address (`host:port` of its sidecar's mesh listener).
    pub address: HostPort,
    pub weight: u32,
}

/// The largest endpoint weight (round robin walks weight slots; a ring holds points per unit).
pub const MAX_WEIGHT: u32 = 10_000;

/// How a cluster picks an endpoint (`Cluster.spec.loadBalancer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// Weighted round robin (each endpoint gets `weight` consecutive turns).
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight
    /// (divided by its weight).
    LeastRequest,
    /// Power of two choices over Linkerd's peak-EWMA cost: the latency estimate (peaks taken
    /// at once, decaying over 10 s; 30 ms before any sample) × (requests in flight + 1).
    /// The default: it measured best around slow and failing instances
    /// (`outrigger bench --resilience`, docs/benchmarks.md).
    #[default]
    PeakEwma,
    /// Consistent hashing on a ring (`hashOn` names the key): the same key goes to the same
    /// endpoint, and an endpoint joining or leaving moves about 1/N of the keys.
    RingHash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Policies {
    /// Dapr `Resiliency` resources, by name.
    pub resiliency: BTreeMap<String, Resiliency>,
}

/// A snapshot that is internally inconsistent. Names the resource and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("route {route:?}: {detail}")]
    InvalidRoute { route: String, detail: String },
    #[error("cluster {cluster:?}: endpoints: a cluster needs at least one endpoint")]
    EmptyCluster { cluster: String },
    /// A policy that cannot run (the detail names the field).
    #[error("resiliency {resiliency:?}: {detail}")]
    InvalidResiliency { resiliency: String, detail: String },
    #[error("cluster {cluster:?}: {field}: {detail}")]
    InvalidCluster {
        cluster: String,
        field: &'static str,
        detail: &'static str,
    },
    /// A component the sidecar cannot open (bad metadata); the text names component and field.
    #[error("{detail}")]
    InvalidComponent { component: String, detail: String },
    /// `target` is the path under `targets`: `apps.<id>` or `components.<name>.inbound`.
    #[error("resiliency {resiliency:?}: targets.{target}.{field}: unknown policy {policy:?}")]
    UnknownPolicy {
        resiliency: String,
        target: String,
        field: &'static str,
        policy: String,
    },
    /// `field` is the path inside the resource (`spec.routes.rules[1].match`).
    #[error("subscription {subscription:?}: {field}: {detail}")]
    InvalidSubscription {
        subscription: String,
        field: String,
        detail: String,
    },
}

impl Snapshot {
    /// Checks every cross-reference. A snapshot that passes can be served as it is.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        for cluster in self.clusters.values() {
            if cluster.endpoints.is_empty() {
                return Err(SnapshotError::EmptyCluster {
                    cluster: cluster.name.clone(),
                });
            }
            if cluster.endpoints.iter().any(|e| e.weight > MAX_WEIGHT) {
                return Err(SnapshotError::InvalidCluster {
                    cluster: cluster.name.clone(),
                    field: "spec.endpoints[].weight",
                    detail: "at most 10000",
                });
            }
            let ring = cluster.load_balancer == LoadBalancer::RingHash;
            if let Some(on) = &cluster.hash_on {
                if on.header.is_some() == on.query.is_some() {
                    return Err(SnapshotError::InvalidCluster {
                        cluster: cluster.name.clone(),
                        field: "spec.hashOn",
                        detail: "give exactly one of header or query",
                    });
                }
            }
            if ring != cluster.hash_on.is_some() {
                return Err(SnapshotError::InvalidCluster {
                    cluster: cluster.name.clone(),
                    field: "spec.hashOn",
                    detail: if ring {
                        "ringHash needs hashOn: {header: NAME} or {query: NAME}"
                    } else {
                        "hashOn is only read with loadBalancer: ringHash"
                    },
                });
            }
        }
        for route in self.routes.values() {
            route
                .check(|cluster| self.clusters.contains_key(cluster))
                .map_err(|detail| SnapshotError::InvalidRoute {
                    route: route.name.clone(),
                    detail,
                })?;
        }
        for (name, res) in &self.policies.resiliency {
            let policies = &res.spec.policies;
            for (retry, policy) in &policies.retries {
                let invalid = |detail: String| SnapshotError::InvalidResiliency {
                    resiliency: name.clone(),
                    detail: format!("policies.retries.{retry}.{detail}"),
                };
                if policy.max_retries < -1 {
                    return Err(invalid(format!(
                        "maxRetries: {}; expected -1 (forever) or a count from 0",
                        policy.max_retries
                    )));
                }
                if let Some(codes) = policy
                    .matching
                    .as_ref()
                    .and_then(|m| m.http_status_codes.as_deref())
                {
                    crate::dapr::parse_status_codes(codes)
                        .map_err(|e| invalid(format!("matching.httpStatusCodes: {e}")))?;
                }
            }
            for (breaker, policy) in &policies.circuit_breakers {
                if let Some(trip) = &policy.trip {
                    crate::breaker::Trip::compile(trip).map_err(|e| {
                        SnapshotError::InvalidResiliency {
                            resiliency: name.clone(),
                            detail: format!("policies.circuitBreakers.{breaker}.trip: {e}"),
                        }
                    })?;
                }
            }
            let targets = &res.spec.targets;
            let apps = targets
                .apps
                .iter()
                .map(|(app, refs)| (format!("apps.{app}"), refs));
            let components = targets.components.iter().flat_map(|(component, sides)| {
                [("outbound", &sides.outbound), ("inbound", &sides.inbound)]
                    .into_iter()
                    .filter_map(move |(side, refs)| {
                        refs.as_ref()
                            .map(|refs| (format!("components.{component}.{side}"), refs))
                    })
            });
            for (target, refs) in apps.chain(components) {
                let checks = [
                    (
                        "timeout",
                        &refs.timeout,
                        policies.timeouts.keys().collect::<Vec<_>>(),
                    ),
                    ("retry", &refs.retry, policies.retries.keys().collect()),
                    (
                        "circuitBreaker",
                        &refs.circuit_breaker,
                        policies.circuit_breakers.keys().collect(),
                    ),
                ];
                for (field, policy, known) in checks {
                    if let Some(policy) = policy {
                        if !known.contains(&policy) {
                            return Err(SnapshotError::UnknownPolicy {
                                resiliency: name.clone(),
                                target: target.clone(),
                                field,
                                policy: policy.clone(),
                            });
                        }
                    }
                }
            }
        }
        for subscription in &self.subscriptions {
            crate::subscription::check(subscription).map_err(|(field, detail)| {
                SnapshotError::InvalidSubscription {
                    subscription: subscription.metadata.name.clone(),
                    field,
                    detail,
                }
            })?;
        }
        Ok(())
    }

    /// What a sidecar runs with when it is given no resources: a `state.in-memory` store named
    /// `statestore` and a `pubsub.in-memory` broker named `pubsub`, like the ones `dapr init`
    /// sets up, so state and pub/sub calls work with nothing else.
    pub fn embedded_defaults() -> Self {
        let component = |name: &str, component_type| Component {
            metadata: crate::dapr::ObjectMeta {
                name: name.to_string(),
                ..Default::default()
            },
            spec: crate::dapr::ComponentSpec {
                component_type,
                version: "v1".to_string(),
                metadata: Vec::new(),
                ignore_errors: false,
                init_timeout: None,
            },
            scopes: Vec::new(),
            auth: None,
        };
        let components = [
            component("statestore", crate::dapr::ComponentType::StateInMemory),
            component("pubsub", crate::dapr::ComponentType::PubsubInMemory),
        ];
        Snapshot {
            version: "embedded".to_string(),
            components: components
                .into_iter()
                .map(|c| (c.name().to_string(), c))
                .collect(),
            ..Snapshot::default()
        }
    }

    /// Components of one building block (`state`, `pubsub`, `secretstores`).
    pub fn components_of<'a>(&'a self, block: &'a str) -> impl Iterator<Item = &'a Component> + 'a {
        self.components
            .values()
            .filter(move |c| c.spec.component_type.block() == block)
    }
}
