//! The configuration a request runs against: the snapshot, and what is built from it once per
//! swap — endpoint sets per cluster, compiled routes, opened state stores. Built next to the
//! previous one so that unchanged parts (endpoint sets, running stores) carry over.

use std::collections::HashMap;
use std::sync::Arc;

use outrigger_config::{Snapshot, SnapshotError};

use crate::components::{open_pubsubs, open_state_stores, PubSubEntry, StateComponent};
use crate::metrics::{AppMetrics, Direction, Metrics};
use crate::routing::{CompiledRoute, CompiledRule};
use crate::upstream::breaker::{Breaker, Breakers};
use crate::upstream::retry::{AppRetry, RetrySchedule};
use crate::upstream::{EndpointSet, Endpoints};

/// Where calls to one app id go when no route rule picks: its endpoints and its metric
/// handles.
pub(crate) struct AppTarget {
    pub(crate) endpoints: Arc<EndpointSet>,
    pub(crate) metrics: Arc<AppMetrics>,
}

pub(crate) struct ActiveConfig {
    pub(crate) snapshot: Arc<Snapshot>,
    /// One target per snapshot cluster, by cluster name.
    pub(crate) clusters: HashMap<String, Arc<AppTarget>>,
    /// The compiled route of each target app id that has one.
    pub(crate) routes: HashMap<String, CompiledRoute>,
    /// The state stores this app may use, by component name.
    pub(crate) state_stores: HashMap<String, Arc<StateComponent>>,
    /// The pub/sub brokers this app may use, by component name.
    pub(crate) pubsubs: HashMap<String, Arc<PubSubEntry>>,
    /// `Resiliency` policies for invocations, by target app id (`targets.apps.<id>` of the
    /// resources that apply to this app).
    pub(crate) app_policies: HashMap<String, Arc<AppPolicy>>,
}

/// What `Resiliency` says about calls to one app.
#[derive(Debug, Default)]
pub(crate) struct AppPolicy {
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) retry: Option<AppRetry>,
    pub(crate) breaker: Option<Arc<Breaker>>,
}

/// Where one invocation goes: the endpoints, the route rule that chose them (for its timeout
/// and header rewrite) if a route did, and the metric handles of the target app id.
pub(crate) struct Resolved {
    pub(crate) endpoints: Arc<EndpointSet>,
    pub(crate) rule: Option<Arc<CompiledRule>>,
    pub(crate) metrics: Arc<AppMetrics>,
}

/// What building a configuration needs besides the snapshot.
pub(crate) struct BuildContext<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) endpoints: &'a Endpoints,
    pub(crate) metrics: &'a Metrics,
    pub(crate) breakers: &'a Breakers,
}

impl ActiveConfig {
    pub(crate) fn build(
        snapshot: Arc<Snapshot>,
        previous: Option<&ActiveConfig>,
        context: &BuildContext<'_>,
    ) -> Result<ActiveConfig, SnapshotError> {
        let state_stores = open_state_stores(
            &snapshot,
            context.app_id,
            previous.map(|p| &p.state_stores),
            context.breakers,
        )?;
        let pubsubs = open_pubsubs(
            &snapshot,
            context.app_id,
            previous.map(|p| &p.pubsubs),
            context.breakers,
        )?;
        let clusters: HashMap<String, Arc<AppTarget>> = snapshot
            .clusters
            .values()
            .map(|cluster| {
                let mut targets: Vec<(String, u32)> = cluster
                    .endpoints
                    .iter()
                    .map(|e| (e.address.as_str().to_string(), e.weight))
                    .collect();
                targets.sort();
                let target = match previous.and_then(|p| p.clusters.get(&cluster.name)) {
                    Some(existing)
                        if existing.endpoints.same_members(&targets)
                            && existing.endpoints.policy == cluster.load_balancer
                            && existing.endpoints.hash_on == cluster.hash_on =>
                    {
                        existing.clone()
                    }
                    _ => Arc::new(AppTarget {
                        endpoints: Arc::new(EndpointSet::new(
                            context.endpoints,
                            targets,
                            cluster.load_balancer,
                            cluster.hash_on.clone(),
                        )),
                        metrics: context.metrics.app(Direction::Outbound, &cluster.name),
                    }),
                };
                (cluster.name.clone(), target)
            })
            .collect();
        let sets: HashMap<String, Arc<EndpointSet>> = clusters
            .iter()
            .map(|(name, target)| (name.clone(), target.endpoints.clone()))
            .collect();
        let routes = snapshot
            .routes
            .iter()
            .map(|(app, route)| {
                let metrics = context.metrics.app(Direction::Outbound, app);
                (app.clone(), CompiledRoute::compile(route, &sets, metrics))
            })
            .collect();
        let app_policies = app_policies(&snapshot, context)?;
        Ok(ActiveConfig {
            app_policies,
            snapshot,
            clusters,
            routes,
            state_stores,
            pubsubs,
        })
    }

    /// What `Resiliency` policies say about invocations of `app_id`, if they say anything.
    pub(crate) fn app_policy(&self, app_id: &str) -> Option<Arc<AppPolicy>> {
        self.app_policies.get(app_id).cloned()
    }

    /// The route rule or cluster that serves `app_id`, if the configuration names one.
    pub(crate) fn resolve(
        &self,
        app_id: &str,
        request: &crate::routing::RequestView<'_>,
    ) -> Option<Resolved> {
        if let Some(route) = self.routes.get(app_id) {
            if let Some(rule) = route.select(request) {
                return Some(Resolved {
                    endpoints: rule.pick_backend(),
                    rule: Some(rule.clone()),
                    metrics: route.metrics.clone(),
                });
            }
        }
        self.clusters.get(app_id).map(|target| Resolved {
            endpoints: target.endpoints.clone(),
            rule: None,
            metrics: target.metrics.clone(),
        })
    }
}

/// `targets.apps.<id>` of every `Resiliency` that applies to `app_id` (no `scopes`, or listed
/// in them); the first resource (by name) naming a target wins. Policy names were checked when
/// the snapshot was validated; a retry policy that cannot run is an error naming it.
fn app_policies(
    snapshot: &Snapshot,
    context: &BuildContext<'_>,
) -> Result<HashMap<String, Arc<AppPolicy>>, SnapshotError> {
    let (app_id, breakers) = (context.app_id, context.breakers);
    let mut policies = HashMap::new();
    for resiliency in snapshot.policies.resiliency.values() {
        if !resiliency.scopes.is_empty() && !resiliency.scopes.iter().any(|s| s == app_id) {
            continue;
        }
        let named = &resiliency.spec.policies;
        for (target, refs) in &resiliency.spec.targets.apps {
            if policies.contains_key(target) {
                continue;
            }
            let timeout = refs
                .timeout
                .as_ref()
                .and_then(|t| named.timeouts.get(t))
                .map(|t| t.0);
            let retry = match refs.retry.as_ref() {
                Some(name) => match named.retries.get(name) {
                    Some(policy) => Some(AppRetry {
                        schedule: RetrySchedule::from_policy(policy).map_err(|detail| {
                            SnapshotError::InvalidResiliency {
                                resiliency: resiliency.metadata.name.clone(),
                                detail: format!("policies.retries.{name}.{detail}"),
                            }
                        })?,
                        budget: Default::default(),
                        retried: context
                            .metrics
                            .resilience
                            .retries
                            .with_label_values(&[target.as_str()]),
                    }),
                    None => None,
                },
                None => None,
            };
            let breaker = refs.circuit_breaker.as_ref().and_then(|name| {
                let policy = named.circuit_breakers.get(name)?;
                Some(breakers.get(target, name, policy))
            });
            policies.insert(
                target.clone(),
                Arc::new(AppPolicy {
                    timeout,
                    retry,
                    breaker,
                }),
            );
        }
    }
    Ok(policies)
}
