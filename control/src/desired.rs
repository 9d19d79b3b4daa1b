//! What every sidecar should have: the config directory's resources plus the registry's
//! endpoints, split by resource type, each type with a content-derived version (so versions
//! survive restarts of the control plane and reconnects of sidecars).

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use outrigger_config::{Cluster, Endpoint, LoadBalancer, Snapshot};
use outrigger_proto::mesh::v1 as mesh;
use outrigger_proto::Any;
use serde::Serialize;

use crate::registry::Registered;

/// One type's full resource set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeState {
    pub version: String,
    pub resources: Vec<Any>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub types: BTreeMap<&'static str, TypeState>,
}

impl Desired {
    pub fn build(snapshot: &Snapshot, registered: &[Registered]) -> Desired {
        let mut types = BTreeMap::new();
        types.insert(
            mesh::TYPE_CLUSTER,
            encode(mesh::TYPE_CLUSTER, snapshot.clusters.values()),
        );
        types.insert(
            mesh::TYPE_ENDPOINTS,
            encode(mesh::TYPE_ENDPOINTS, endpoints(registered).iter()),
        );
        types.insert(
            mesh::TYPE_POLICY,
            encode(mesh::TYPE_POLICY, snapshot.policies.resiliency.values()),
        );
        types.insert(
            mesh::TYPE_CONFIGURATION,
            encode(mesh::TYPE_CONFIGURATION, snapshot.configuration.iter()),
        );
        types.insert(
            mesh::TYPE_COMPONENT,
            encode(mesh::TYPE_COMPONENT, snapshot.components.values()),
        );
        types.insert(
            mesh::TYPE_SUBSCRIPTION,
            encode(mesh::TYPE_SUBSCRIPTION, snapshot.subscriptions.iter()),
        );
        types.insert(
            mesh::TYPE_ROUTE,
            encode(mesh::TYPE_ROUTE, snapshot.routes.values()),
        );
        Desired { types }
    }
}

/// The registered sidecars as one cluster per app id (namespaced ids as `<app>.<namespace>`).
fn endpoints(registered: &[Registered]) -> Vec<Cluster> {
    let mut by_app: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for sidecar in registered {
        let Ok(address) = outrigger_config::mesh::HostPort::parse(&sidecar.mesh_address) else {
            continue;
        };
        by_app
            .entry(sidecar.cluster_name())
            .or_default()
            .push(Endpoint { address, weight: 1 });
    }
    by_app
        .into_iter()
        .map(|(name, mut endpoints)| {
            endpoints.sort_by(|a, b| a.address.cmp(&b.address));
            endpoints.dedup();
            Cluster {
                name,
                load_balancer: LoadBalancer::RoundRobin,
                endpoints,
            }
        })
        .collect()
}

fn encode<'a, T: Serialize + 'a>(type_url: &str, items: impl Iterator<Item = &'a T>) -> TypeState {
    let resources: Vec<Any> = items
        .map(|item| Any {
            type_url: type_url.to_string(),
            value: serde_json::to_vec(item).unwrap_or_default(),
        })
        .collect();
    let mut hasher = DefaultHasher::new();
    for resource in &resources {
        resource.value.hash(&mut hasher);
    }
    TypeState {
        version: format!("{:016x}", hasher.finish()),
        resources,
    }
}
