//! The Dapr components of a snapshot, opened for this app: its state stores and pub/sub
//! brokers (secret stores join as their building block arrives). Rebuilt on every configuration swap;
//! a component whose definition did not change keeps its running store, connections and all,
//! so swapping one component never disturbs requests to the others.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use outrigger_config::dapr::{Component, ComponentPolicyRefs, PolicyRefs, Resiliency};
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
    /// `targets.components.<name>.outbound`, set by every swap.
    pub(crate) outbound: arc_swap::ArcSwap<OutboundPolicy>,
}

impl StateComponent {
    pub(crate) fn name(&self) -> &str {
        self.definition.name()
    }

    /// Runs a call to the store (`call` makes one attempt) under its outbound policy. A
    /// backend failure or a timeout is a failure; an ETag conflict or a bad ETag is the
    /// caller's answer, neither retried nor counted against the breaker.
    pub(crate) async fn guarded<T, Fut>(&self, call: impl FnMut() -> Fut) -> Result<T, StateError>
    where
        Fut: std::future::Future<Output = Result<T, StateError>>,
    {
        let policy = self.outbound.load_full();
        policy
            .run(
                call,
                |e| matches!(e, StateError::Backend(_)),
                |failure| StateError::Backend(failure.to_string()),
            )
            .await
    }
}

/// What wraps every call the sidecar makes to a component (a state operation, a publish):
/// the `timeout`, `retry` and `circuitBreaker` that `targets.components.<name>.outbound`
/// names. Wrapped as daprd wraps them: each attempt's timeout inside the breaker inside the
/// retries.
#[derive(Debug, Default)]
pub(crate) struct OutboundPolicy {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetrySchedule>,
    pub(crate) breaker: Option<Arc<Breaker>>,
}

/// Why a policy ended a component call without an answer from the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyFailure {
    /// The breaker is open: the call was not made.
    BreakerOpen,
    /// The attempt took longer than the `timeout` policy.
    TimedOut(Duration),
}

impl std::fmt::Display for PolicyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyFailure::BreakerOpen => f.write_str("circuit breaker is open"),
            PolicyFailure::TimedOut(limit) => write!(
                f,
                "timed out after {} (resiliency timeout)",
                outrigger_config::duration::format(limit)
            ),
        }
    }
}

/// Retries a component call makes at most, whatever the policy (`maxRetries: -1` included):
/// a caller is waiting for the answer.
pub(crate) const MAX_COMPONENT_RETRIES: u32 = 10;

impl OutboundPolicy {
    /// Runs `call` (one attempt each time it is called) under this policy. `failed` says
    /// which errors are the component's failures (counted by the breaker and retried);
    /// `policy` turns a timeout or an open breaker into the caller's error. The answer is the
    /// last attempt's.
    pub(crate) async fn run<T, E, Fut>(
        &self,
        mut call: impl FnMut() -> Fut,
        failed: impl Fn(&E) -> bool,
        policy: impl Fn(PolicyFailure) -> E,
    ) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut retries = 0u32;
        loop {
            let admission = match &self.breaker {
                Some(breaker) => match breaker.allow() {
                    Some(admission) => Some((breaker, admission)),
                    None => return Err(policy(PolicyFailure::BreakerOpen)),
                },
                None => None,
            };
            let result = match self.timeout {
                Some(limit) => tokio::time::timeout(limit, call())
                    .await
                    .unwrap_or_else(|_| Err(policy(PolicyFailure::TimedOut(limit)))),
                None => call().await,
            };
            let failure = matches!(&result, Err(e) if failed(e));
            if let Some((breaker, admission)) = admission {
                breaker.record(admission, !failure);
            }
            let wait = self
                .retry
                .as_ref()
                .filter(|_| failure && retries < MAX_COMPONENT_RETRIES)
                .and_then(|schedule| schedule.delay(retries + 1));
            let Some(wait) = wait else {
                return result;
            };
            tokio::time::sleep(wait).await;
            retries += 1;
        }
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
                    outbound: Default::default(),
                })
            }
        };
        let outbound = outbound_policy(snapshot, name, app_id, breakers).map_err(|detail| {
            SnapshotError::InvalidComponent {
                component: name.to_string(),
                detail,
            }
        })?;
        store.outbound.store(Arc::new(outbound));
        stores.insert(name.to_string(), store);
    }
    Ok(stores)
}

/// The policy `targets.components.<name>.outbound` names in the first `Resiliency` that
/// applies to `app_id` and targets the component's outbound side (none: calls go unwrapped).
fn outbound_policy(
    snapshot: &Snapshot,
    name: &str,
    app_id: &str,
    breakers: &Breakers,
) -> Result<OutboundPolicy, String> {
    if let Some((resiliency, refs)) = component_refs(snapshot, name, app_id, |s| &s.outbound) {
        let policies = &resiliency.spec.policies;
        let retry = refs
            .retry
            .as_ref()
            .and_then(|r| policies.retries.get(r).map(|policy| (r, policy)))
            .map(|(r, policy)| {
                RetrySchedule::from_policy(policy).map_err(|e| {
                    format!(
                        "resiliency {:?}: retries.{r}: {e}",
                        resiliency.metadata.name
                    )
                })
            })
            .transpose()?;
        let timeout = refs
            .timeout
            .as_ref()
            .and_then(|t| policies.timeouts.get(t))
            .map(|t| t.0);
        let breaker = refs.circuit_breaker.as_ref().and_then(|b| {
            let policy = policies.circuit_breakers.get(b)?;
            Some(breakers.get(&format!("components.{name}"), b, policy))
        });
        return Ok(OutboundPolicy {
            timeout,
            retry,
            breaker,
        });
    }
    Ok(OutboundPolicy::default())
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
    /// What wraps a publish: `targets.components.<name>.outbound`.
    pub(crate) outbound: OutboundPolicy,
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
    breakers: &Breakers,
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
        let outbound = outbound_policy(snapshot, name, app_id, breakers).map_err(invalid)?;
        brokers.insert(
            name.to_string(),
            Arc::new(PubSubEntry {
                component,
                retry,
                attempt_timeout,
                hold_limit,
                outbound,
            }),
        );
    }
    Ok(brokers)
}

/// The first `Resiliency` that applies to `app_id` and names policies for component `name`
/// on the side `side` picks, with those policy names.
fn component_refs<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    app_id: &str,
    side: impl Fn(&ComponentPolicyRefs) -> &Option<PolicyRefs>,
) -> Option<(&'a Resiliency, &'a PolicyRefs)> {
    snapshot
        .policies
        .resiliency
        .values()
        .find_map(|resiliency| {
            let in_scope =
                resiliency.scopes.is_empty() || resiliency.scopes.iter().any(|s| s == app_id);
            let sides = resiliency.spec.targets.components.get(name)?;
            let refs = side(sides).as_ref()?;
            in_scope.then_some((resiliency, refs))
        })
}

/// The retry schedule and attempt timeout of `targets.components.<name>.inbound` in the
/// `Resiliency` resources that apply to `app_id`, or the pub/sub defaults.
fn inbound_policy(
    snapshot: &Snapshot,
    name: &str,
    app_id: &str,
) -> Result<(RetrySchedule, Option<Duration>), String> {
    if let Some((resiliency, refs)) = component_refs(snapshot, name, app_id, |s| &s.inbound) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use outrigger_config::dapr::{CircuitBreakerPolicy, RetryBackoff, RetryPolicy};
    use tokio::time::Instant;

    use super::*;

    fn exponential(first_ms: u64, cap_ms: u64, max_retries: i64) -> RetrySchedule {
        RetrySchedule::from_policy(&RetryPolicy {
            policy: RetryBackoff::Exponential,
            duration: Some(Duration::from_millis(first_ms)),
            max_interval: Some(Duration::from_millis(cap_ms)),
            max_retries,
            matching: None,
        })
        .unwrap()
    }

    /// Runs `policy` over a call that takes `takes` and fails every time; returns the error
    /// and when each attempt started, relative to the first.
    async fn always_failing(policy: &OutboundPolicy, takes: Duration) -> (String, Vec<u128>) {
        let starts = Mutex::new(Vec::new());
        let result: Result<(), String> = policy
            .run(
                || async {
                    starts.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(takes).await;
                    Err("backend down".to_string())
                },
                |_| true,
                |failure| failure.to_string(),
            )
            .await;
        let starts = starts.into_inner().unwrap();
        let offsets = starts
            .iter()
            .map(|t| t.duration_since(starts[0]).as_millis())
            .collect();
        (result.unwrap_err(), offsets)
    }

    #[tokio::test(start_paused = true)]
    async fn exponential_backoff_waits_double_up_to_the_cap_and_max_retries_holds() {
        let policy = OutboundPolicy {
            retry: Some(exponential(100, 1000, 5)),
            ..OutboundPolicy::default()
        };
        let (error, starts) = always_failing(&policy, Duration::ZERO).await;
        assert_eq!(error, "backend down", "the last attempt's answer");
        // Waits of 100, 200, 400, 800 and 1000 ms (capped): 1 + maxRetries attempts.
        assert_eq!(starts, [0, 100, 300, 700, 1500, 2500]);
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_has_its_own_timeout_inside_the_retries() {
        let policy = OutboundPolicy {
            timeout: Some(Duration::from_millis(100)),
            retry: Some(exponential(50, 50, 2)),
            ..OutboundPolicy::default()
        };
        let (error, starts) = always_failing(&policy, Duration::from_secs(2)).await;
        assert_eq!(error, "timed out after 100ms (resiliency timeout)");
        // Each attempt is cut at 100 ms, then 50 ms of backoff.
        assert_eq!(starts, [0, 150, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn forever_is_held_to_ten_retries_and_an_open_breaker_stops_them() {
        let forever = OutboundPolicy {
            retry: Some(exponential(10, 10, -1)),
            ..OutboundPolicy::default()
        };
        let (_, starts) = always_failing(&forever, Duration::ZERO).await;
        assert_eq!(starts.len(), 1 + MAX_COMPONENT_RETRIES as usize);

        let breaker = Arc::new(Breaker::new(
            "components.store/cb",
            &CircuitBreakerPolicy {
                max_requests: 1,
                interval: None,
                timeout: Some(Duration::from_secs(30)),
                trip: Some("consecutiveFailures > 2".to_string()),
            },
        ));
        let guarded = OutboundPolicy {
            retry: Some(exponential(10, 10, 5)),
            breaker: Some(breaker.clone()),
            ..OutboundPolicy::default()
        };
        let (error, starts) = always_failing(&guarded, Duration::ZERO).await;
        assert_eq!(
            (error.as_str(), starts.len()),
            ("circuit breaker is open", 3),
            "the third failure opens the breaker; the next retry is refused without a call"
        );
        assert_eq!(breaker.phase().name(), "open");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_not_a_failure_is_neither_retried_nor_counted() {
        let breaker = Arc::new(Breaker::new(
            "components.store/cb",
            &CircuitBreakerPolicy {
                max_requests: 1,
                interval: None,
                timeout: None,
                trip: Some("consecutiveFailures > 0".to_string()),
            },
        ));
        let policy = OutboundPolicy {
            retry: Some(exponential(10, 10, 5)),
            breaker: Some(breaker.clone()),
            ..OutboundPolicy::default()
        };
        let calls = Mutex::new(0);
        let result: Result<(), StateError> = policy
            .run(
                || async {
                    *calls.lock().unwrap() += 1;
                    Err(StateError::EtagMismatch {
                        key: "k".into(),
                        detail: "changed".into(),
                    })
                },
                |e| matches!(e, StateError::Backend(_)),
                |failure| StateError::Backend(failure.to_string()),
            )
            .await;
        assert!(matches!(result, Err(StateError::EtagMismatch { .. })));
        assert_eq!(*calls.lock().unwrap(), 1);
        assert_eq!(breaker.phase().name(), "closed");
    }
}
