//! The Dapr components of a snapshot, opened for this app: its state stores and pub/sub
//! brokers (secret stores join as their building block arrives). Rebuilt on every configuration swap;
//! a component whose definition did not change keeps its running store, connections and all,
//! so swapping one component never disturbs requests to the others.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use outrigger_config::dapr::Component;
use outrigger_config::{Snapshot, SnapshotError};
use outrigger_pubsub::OpenedPubSub;
use outrigger_state::{OpenedStore, StateError};

use crate::upstream::breaker::{Breaker, Breakers};
use crate::upstream::retry::RetrySchedule;

/// One state store component as requests use it.
#[derive(Debug)]
pub(crate) struct StateComponent {
    /// The definition it was opened from, to tell whether a new snapshot changed it.
    definition: Component,
    pub(crate) opened: OpenedStore,
    /// The circuit breaker of `targets.components.<name>.outbound`, set by every swap.
    pub(crate) breaker: arc_swap::ArcSwapOption<Breaker>,
}

impl StateComponent {
    pub(crate) fn name(&self) -> &str {
        self.definition.name()
    }

    /// Runs one call to the store under its circuit breaker, if it has one: refused at once
    /// while the breaker is open; a backend failure (not an ETag conflict) counts against it.
    pub(crate) async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let breaker = self.breaker.load_full();
        if let Some(breaker) = &breaker {
            if !breaker.allow() {
                return Err(StateError::Backend("circuit breaker is open".into()));
            }
        }
        let result = call.await;
        if let Some(breaker) = &breaker {
            breaker.record(!matches!(result, Err(StateError::Backend(_))));
        }
        result
    }
}

/// The state stores a snapshot gives `app_id`, by component name: components scoped to other
/// apps are left out, as daprd does.
pub(crate) fn open_state_stores(
    snapshot: &Snapshot,
    app_id: &str,
    previous: Option<&HashMap<String, Arc<StateComponent>>>,
    breakers: &Breakers,
) -> Result<HashMap<String, Arc<StateComponent>>, SnapshotError> {
    let mut stores = HashMap::new();
    for component in snapshot.components_of("state") {
        if !in_scope(component, app_id) {
            continue;
        }
        let name = component.name();
        let kept = previous
            .and_then(|p| p.get(name))
            .filter(|existing| existing.definition == *component);
        let store = match kept {
            Some(existing) => existing.clone(),
            None => {
                let opened = outrigger_state::open(component, app_id).map_err(|detail| {
                    SnapshotError::InvalidComponent {
                        component: name.to_string(),
                        detail,
                    }
                })?;
                Arc::new(StateComponent {
                    definition: component.clone(),
                    opened,
                    breaker: Default::default(),
                })
            }
        };
        store
            .breaker
            .store(outbound_breaker(snapshot, name, app_id, breakers));
        stores.insert(name.to_string(), store);
    }
    Ok(stores)
}

/// The breaker `targets.components.<name>.outbound` names in the first `Resiliency` that
/// applies to `app_id` and targets the component.
fn outbound_breaker(
    snapshot: &Snapshot,
    name: &str,
    app_id: &str,
    breakers: &Breakers,
) -> Option<Arc<Breaker>> {
    snapshot
        .policies
        .resiliency
        .values()
        .find_map(|resiliency| {
            if !resiliency.scopes.is_empty() && !resiliency.scopes.iter().any(|s| s == app_id) {
                return None;
            }
            let refs = resiliency
                .spec
                .targets
                .components
                .get(name)?
                .outbound
                .as_ref()?;
            let breaker = refs.circuit_breaker.as_ref()?;
            let policy = resiliency.spec.policies.circuit_breakers.get(breaker)?;
            Some(breakers.get(&format!("components.{name}"), breaker, policy))
        })
}

/// One pub/sub component as publishes and subscriptions use it.
#[derive(Debug)]
pub(crate) struct PubSubComponent {
    definition: Component,
    pub(crate) opened: OpenedPubSub,
}

impl PubSubComponent {
    pub(crate) fn name(&self) -> &str {
        self.definition.name()
    }
}

/// A pub/sub component with how its deliveries are retried: the `Resiliency` policy that
/// targets its inbound side, or the default. Rebuilt on every swap (a policy may change while
/// the component does not); the broker inside is kept.
#[derive(Debug)]
pub(crate) struct PubSubEntry {
    pub(crate) component: Arc<PubSubComponent>,
    pub(crate) retry: RetrySchedule,
    /// Each delivery attempt's limit: the inbound `timeout` policy, else [`DELIVERY_TIMEOUT`].
    pub(crate) attempt_timeout: Duration,
    /// The longest one message may be held: every wait and every attempt of the schedule;
    /// `None` when retries never run out.
    pub(crate) hold_limit: Option<Duration>,
}

/// A delivery attempt's limit when no `timeout` policy targets the component's inbound side.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The pub/sub brokers a snapshot gives `app_id`, by component name, with their delivery
/// policies. A Redis `processingTimeout` shorter than what a message may be held for is
/// refused: another consumer would take the message over while this one still retries it.
pub(crate) fn open_pubsubs(
    snapshot: &Snapshot,
    app_id: &str,
    previous: Option<&HashMap<String, Arc<PubSubEntry>>>,
) -> Result<HashMap<String, Arc<PubSubEntry>>, SnapshotError> {
    let mut brokers = HashMap::new();
    for component in snapshot.components_of("pubsub") {
        if !in_scope(component, app_id) {
            continue;
        }
        let name = component.name();
        let invalid = |detail: String| SnapshotError::InvalidComponent {
            component: name.to_string(),
            detail,
        };
        let kept = previous
            .and_then(|p| p.get(name))
            .filter(|existing| existing.component.definition == *component)
            .map(|existing| existing.component.clone());
        let component = match kept {
            Some(existing) => existing,
            None => Arc::new(PubSubComponent {
                definition: component.clone(),
                opened: outrigger_pubsub::open(component, app_id).map_err(invalid)?,
            }),
        };
        let (retry, timeout) = inbound_policy(snapshot, name, app_id).map_err(invalid)?;
        let attempt_timeout = timeout.unwrap_or(DELIVERY_TIMEOUT);
        let hold_limit = retry.budget().map(|waits| {
            let attempts = retry.attempts().unwrap_or(1);
            waits.saturating_add(attempt_timeout.saturating_mul(attempts))
        });
        if let Some(processing) = component.opened.settings.processing_timeout {
            let fits = hold_limit.is_some_and(|hold| hold <= processing);
            if !fits {
                let hold = hold_limit.map_or("forever (maxRetries -1)".to_string(), |h| {
                    outrigger_config::duration::format(&h)
                });
                return Err(invalid(format!(
                    "component {name:?}: processingTimeout: {} is shorter than a message may be held for its retries ({hold}: every backoff wait and every attempt's timeout); another consumer would take over messages this one still retries. Raise processingTimeout, shorten the retry policy, or set redeliverInterval to 0",
                    outrigger_config::duration::format(&processing)
                )));
            }
        }
        brokers.insert(
            name.to_string(),
            Arc::new(PubSubEntry {
                component,
                retry,
                attempt_timeout,
                hold_limit,
            }),
        );
    }
    Ok(brokers)
}

/// The retry schedule and attempt timeout of `targets.components.<name>.inbound` in the
/// `Resiliency` resources that apply to `app_id`, or the pub/sub defaults.
fn inbound_policy(
    snapshot: &Snapshot,
    name: &str,
    app_id: &str,
) -> Result<(RetrySchedule, Option<Duration>), String> {
    for resiliency in snapshot.policies.resiliency.values() {
        if !resiliency.scopes.is_empty() && !resiliency.scopes.iter().any(|s| s == app_id) {
            continue;
        }
        let Some(refs) = resiliency
            .spec
            .targets
            .components
            .get(name)
            .and_then(|sides| sides.inbound.as_ref())
        else {
            continue;
        };
        let policies = &resiliency.spec.policies;
        let retry = match refs.retry.as_ref().and_then(|r| policies.retries.get(r)) {
            Some(policy) => RetrySchedule::from_policy(policy).map_err(|e| {
                format!(
                    "resiliency {:?}: retries.{}: {e}",
                    resiliency.metadata.name,
                    refs.retry.as_deref().unwrap_or_default()
                )
            })?,
            None => RetrySchedule::pubsub_default(),
        };
        let timeout = refs
            .timeout
            .as_ref()
            .and_then(|t| policies.timeouts.get(t))
            .map(|t| t.0);
        return Ok((retry, timeout));
    }
    Ok((RetrySchedule::pubsub_default(), None))
}

/// Whether a component serves `app_id`: no `scopes` means every app.
pub(crate) fn in_scope(component: &Component, app_id: &str) -> bool {
    in_scope_names(&component.scopes, app_id)
}

/// Whether a resource's `scopes` include `app_id`: no scopes means every app.
pub(crate) fn in_scope_names(scopes: &[String], app_id: &str) -> bool {
    scopes.is_empty() || scopes.iter().any(|s| s == app_id)
}
