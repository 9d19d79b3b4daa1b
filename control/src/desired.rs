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

/// The most a sidecar accepts in one discovery message (its decoding limit), and so the most
/// one type's resource set may weigh when pushed.
pub const PUSH_LIMIT: usize = 16 * 1024 * 1024;

/// One type's full resource set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeState {
    pub version: String,
    pub resources: Vec<Any>,
    /// Each resource's kind, name and encoded size, in the order of `resources`.
    pub sizes: Vec<(&'static str, String, usize)>,
}

impl TypeState {
    /// What the type's push message weighs on the wire, near enough (payloads and type URLs).
    pub fn encoded_len(&self) -> usize {
        self.resources
            .iter()
            .map(|r| r.value.len() + r.type_url.len() + 8)
            .sum()
    }
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
            encode(
                mesh::TYPE_CLUSTER,
                snapshot
                    .clusters
                    .values()
                    .map(|c| ("Cluster", c.name.clone(), c)),
            ),
        );
        let endpoints = endpoints(registered);
        types.insert(
            mesh::TYPE_ENDPOINTS,
            encode(
                mesh::TYPE_ENDPOINTS,
                endpoints.iter().map(|c| ("Endpoints", c.name.clone(), c)),
            ),
        );
        types.insert(
            mesh::TYPE_POLICY,
            encode(
                mesh::TYPE_POLICY,
                snapshot
                    .policies
                    .resiliency
                    .iter()
                    .map(|(name, r)| ("Resiliency", name.clone(), r)),
            ),
        );
        types.insert(
            mesh::TYPE_CONFIGURATION,
            encode(
                mesh::TYPE_CONFIGURATION,
                snapshot
                    .configuration
                    .iter()
                    .map(|c| ("Configuration", c.metadata.name.clone(), c)),
            ),
        );
        types.insert(
            mesh::TYPE_COMPONENT,
            encode(
                mesh::TYPE_COMPONENT,
                snapshot
                    .components
                    .values()
                    .map(|c| ("Component", c.name().to_string(), c)),
            ),
        );
        types.insert(
            mesh::TYPE_SUBSCRIPTION,
            encode(
                mesh::TYPE_SUBSCRIPTION,
                snapshot
                    .subscriptions
                    .iter()
                    .map(|s| ("Subscription", s.metadata.name.clone(), s)),
            ),
        );
        types.insert(
            mesh::TYPE_ROUTE,
            encode(
                mesh::TYPE_ROUTE,
                snapshot
                    .routes
                    .values()
                    .map(|r| ("Route", r.name.clone(), r)),
            ),
        );
        Desired { types }
    }

    /// The types whose resource set is over [`PUSH_LIMIT`], with their size.
    pub fn oversized(&self) -> Vec<(&'static str, usize)> {
        self.types
            .iter()
            .map(|(type_url, state)| (*type_url, state.encoded_len()))
            .filter(|(_, len)| *len > PUSH_LIMIT)
            .collect()
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
                load_balancer: LoadBalancer::default(),
                hash_on: None,
                endpoints,
            }
        })
        .collect()
}

fn encode<'a, T: Serialize + 'a>(
    type_url: &str,
    items: impl Iterator<Item = (&'static str, String, &'a T)>,
) -> TypeState {
    let mut resources = Vec::new();
    let mut sizes = Vec::new();
    for (kind, name, item) in items {
        let value = serde_json::to_vec(item).unwrap_or_default();
        sizes.push((kind, name, value.len()));
        resources.push(Any {
            type_url: type_url.to_string(),
            value,
        });
    }
    let mut hasher = DefaultHasher::new();
    for resource in &resources {
        resource.value.hash(&mut hasher);
    }
    TypeState {
        version: format!("{:016x}", hasher.finish()),
        resources,
        sizes,
    }
}
