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
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint's mesh address (`host:port` of its sidecar's mesh listener).
    pub address: HostPort,
    pub weight: u32,
}

/// How a cluster picks an endpoint. Round robin is the only policy so far; least-request and
/// peak-EWMA arrive with the resilience work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
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
    /// A component the sidecar cannot open (bad metadata); the text names component and field.
    #[error("{detail}")]
    InvalidComponent { component: String, detail: String },
    #[error("resiliency {resiliency:?}: targets.apps.{app}.{field}: unknown policy {policy:?}")]
    UnknownPolicy {
        resiliency: String,
        app: String,
        field: &'static str,
        policy: String,
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
            for (app, refs) in &res.spec.targets.apps {
                let checks = [
                    (
                        "timeout",
                        refs.timeout.as_ref(),
                        policies
                            .timeouts
                            .contains_key(refs.timeout.as_deref().unwrap_or_default()),
                    ),
                    (
                        "retry",
                        refs.retry.as_ref(),
                        policies
                            .retries
                            .contains_key(refs.retry.as_deref().unwrap_or_default()),
                    ),
                    (
                        "circuitBreaker",
                        refs.circuit_breaker.as_ref(),
                        policies
                            .circuit_breakers
                            .contains_key(refs.circuit_breaker.as_deref().unwrap_or_default()),
                    ),
                ];
                for (field, policy, known) in checks {
                    if let (Some(policy), false) = (policy, known) {
                        return Err(SnapshotError::UnknownPolicy {
                            resiliency: name.clone(),
                            app: app.clone(),
                            field,
                            policy: policy.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// What a sidecar runs with when it is given no resources: a `state.in-memory` store named
    /// `statestore`, like the one `dapr init` sets up, so state calls work with nothing else.
    pub fn embedded_defaults() -> Self {
        let statestore = Component {
            metadata: crate::dapr::ObjectMeta {
                name: "statestore".to_string(),
                ..Default::default()
            },
            spec: crate::dapr::ComponentSpec {
                component_type: crate::dapr::ComponentType::StateInMemory,
                version: "v1".to_string(),
                metadata: Vec::new(),
                ignore_errors: false,
                init_timeout: None,
            },
            scopes: Vec::new(),
            auth: None,
        };
        Snapshot {
            version: "embedded".to_string(),
            components: BTreeMap::from([(statestore.name().to_string(), statestore)]),
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
