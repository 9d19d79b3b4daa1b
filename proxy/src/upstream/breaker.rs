//! Circuit breakers from Dapr `Resiliency` `circuitBreakers` policies, with the state machine
//! daprd uses (sony/gobreaker): **closed** counts calls and opens when `trip` holds after a
//! failure (counts start over every `interval`, when one is set); **open** refuses calls at
//! once for `timeout` (daprd's default 60 s); then **half-open** lets `maxRequests` calls
//! through — that many successes in a row close it, one failure opens it again.
//!
//! What counts as a failure: a 5xx answer, or no answer (refused, reset, timed out) — as Envoy
//! counts. A 4xx is the caller's business and counts as a success (daprd would count it).
//!
//! A breaker belongs to one (target app, policy) pair and lives in [`Breakers`], outside the
//! per-swap configuration, so a swap that keeps the policy keeps the breaker's state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrigger_config::breaker::{Counts, Trip, DEFAULT_TRIP};
use outrigger_config::dapr::CircuitBreakerPolicy;
use parking_lot::Mutex;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a breaker stays open, whatever its `timeout` says.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// `since`: when the probes were last let through; a probe never recorded (its caller
    /// went away) is given up on after `timeout`, so half-open can never stick.
    HalfOpen {
        admitted: u32,
        since: Instant,
    },
}

impl Phase {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open { .. } => "open",
            Phase::HalfOpen { .. } => "half-open",
        }
    }
}

#[derive(Debug)]
struct State {
    phase: Phase,
    counts: Counts,
    counting_since: Instant,
    /// Moves on at every change of phase and every fresh count: a call's result counts only
    /// in the generation that admitted it.
    generation: u64,
}

impl State {
    fn new_generation(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.counts = Counts::default();
        self.counting_since = now;
        self.generation += 1;
    }
}

/// A call the breaker let through, tagged with the generation that admitted it. Its result is
/// ignored once the breaker has moved on (opened, half-opened, closed, or started a new count
/// interval), as gobreaker does: a slow failure from before a breaker closed cannot open it
/// again, nor a late success close a half-open breaker that did not admit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) struct Admission(u64);

#[derive(Debug)]
pub(crate) struct Breaker {
    pub(crate) name: String,
    max_requests: u32,
    interval: Option<Duration>,
    timeout: Duration,
    trip: Trip,
    state: Mutex<State>,
    /// `outrigger_circuit_breaker_transitions_total`, when metrics are kept.
    transitions: Option<prometheus::IntCounterVec>,
}

impl Breaker {
    /// A closed breaker for `policy` (whose trip expression was checked when the snapshot was
    /// validated; one that does not compile here falls back to daprd's default).
    pub(crate) fn new(name: &str, policy: &CircuitBreakerPolicy) -> Breaker {
        let trip = policy
            .trip
            .as_deref()
            .and_then(|t| Trip::compile(t).ok())
            .unwrap_or_else(|| Trip::compile(DEFAULT_TRIP).expect("the default trip compiles"));
        Breaker {
            name: name.to_string(),
            max_requests: policy.max_requests.max(1),
            interval: policy.interval.filter(|i| !i.is_zero()),
            timeout: policy
                .timeout
                .unwrap_or(DEFAULT_TIMEOUT)
                .min(LONGEST_TIMEOUT),
            trip,
            state: Mutex::new(State {
                phase: Phase::Closed,
                counts: Counts::default(),
                counting_since: Instant::now(),
                generation: 0,
            }),
            transitions: None,
        }
    }

    fn moved_to(&self, phase: &str) {
        if let Some(transitions) = &self.transitions {
            transitions
                .with_label_values(&[self.name.as_str(), phase])
                .inc();
        }
    }

    /// Whether a call may go now (`None`: refused); a half-open breaker admits
    /// `maxRequests` calls.
    pub(crate) fn allow(&self) -> Option<Admission> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<Admission> {
        let mut state = self.state.lock();
        match state.phase {
            Phase::Closed => {
                if self
                    .interval
                    .is_some_and(|i| now.duration_since(state.counting_since) >= i)
                {
                    state.new_generation(Phase::Closed, now);
                }
            }
            Phase::Open { until } if now < until => return None,
            Phase::Open { .. } => {
                tracing::info!(breaker = %self.name, "circuit breaker half-open: letting probes through");
                state.new_generation(
                    Phase::HalfOpen {
                        admitted: 1,
                        since: now,
                    },
                    now,
                );
                self.moved_to("half-open");
            }
            Phase::HalfOpen { admitted, since } if admitted < self.max_requests => {
                state.phase = Phase::HalfOpen {
                    admitted: admitted + 1,
                    since,
                };
            }
            Phase::HalfOpen { since, .. }
                if now.saturating_duration_since(since) >= self.timeout =>
            {
                // The probes let through never reported back: let new ones through (and
                // ignore the lost ones, should they report after all).
                state.new_generation(
                    Phase::HalfOpen {
                        admitted: 1,
                        since: now,
                    },
                    now,
                );
            }
            Phase::HalfOpen { .. } => return None,
        }
        Some(Admission(state.generation))
    }

    /// Records how an admitted call went.
    pub(crate) fn record(&self, admission: Admission, success: bool) {
        self.record_at(admission, success, Instant::now());
    }

    /// Gives back an admitted call that says nothing about the target (the caller went away
    /// or sent a malformed request): counted neither way, its half-open slot freed.
    pub(crate) fn release(&self, admission: Admission) {
        let mut state = self.state.lock();
        if admission.0 != state.generation {
            return;
        }
        if let Phase::HalfOpen { admitted, since } = state.phase {
            state.phase = Phase::HalfOpen {
                admitted: admitted.saturating_sub(1),
                since,
            };
        }
    }

    fn record_at(&self, admission: Admission, success: bool, now: Instant) {
        let mut state = self.state.lock();
        if admission.0 != state.generation {
            return;
        }
        let counts = &mut state.counts;
        counts.requests += 1;
        if success {
            counts.total_successes += 1;
            counts.consecutive_successes += 1;
            counts.consecutive_failures = 0;
        } else {
            counts.total_failures += 1;
            counts.consecutive_failures += 1;
            counts.consecutive_successes = 0;
        }
        let open = |state: &mut State| {
            let until = now
                .checked_add(self.timeout)
                .unwrap_or_else(|| now + LONGEST_TIMEOUT);
            state.new_generation(Phase::Open { until }, now);
            self.moved_to("open");
        };
        match state.phase {
            Phase::Closed if !success && self.trip.trips(&state.counts) => {
                tracing::warn!(breaker = %self.name, timeout = ?self.timeout, "circuit breaker open");
                open(&mut state);
            }
            Phase::HalfOpen { .. } if !success => {
                tracing::warn!(breaker = %self.name, "circuit breaker probe failed: open again");
                open(&mut state);
            }
            Phase::HalfOpen { .. }
                if state.counts.consecutive_successes >= u64::from(self.max_requests) =>
            {
                tracing::info!(breaker = %self.name, "circuit breaker closed");
                state.new_generation(Phase::Closed, now);
                self.moved_to("closed");
            }
            _ => {}
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.state.lock().phase
    }
}

/// Every breaker in use, by (target, policy name, policy) — kept across configuration swaps.
#[derive(Default)]
pub(crate) struct Breakers {
    by_key: Mutex<HashMap<String, Arc<Breaker>>>,
    transitions: Option<prometheus::IntCounterVec>,
}

impl Breakers {
    /// Breakers whose transitions are counted in `transitions`.
    pub(crate) fn with_metrics(transitions: prometheus::IntCounterVec) -> Breakers {
        Breakers {
            by_key: Mutex::default(),
            transitions: Some(transitions),
        }
    }

    /// The breaker for calls to `target` under `policy` named `name`: the existing one when
    /// the same policy already guarded that target, else a new, closed one.
    pub(crate) fn get(
        &self,
        target: &str,
        name: &str,
        policy: &CircuitBreakerPolicy,
    ) -> Arc<Breaker> {
        let key = format!("{target}\u{0}{name}\u{0}{policy:?}");
        let mut by_key = self.by_key.lock();
        if !by_key.contains_key(&key) {
            // A breaker only this map still holds belongs to a configuration that is gone.
            by_key.retain(|_, breaker| Arc::strong_count(breaker) > 1);
        }
        by_key
            .entry(key)
            .or_insert_with(|| {
                let mut breaker = Breaker::new(&format!("{target}/{name}"), policy);
                breaker.transitions = self.transitions.clone();
                Arc::new(breaker)
            })
            .clone()
    }

    /// Every breaker, for `/clusters`.
    pub(crate) fn all(&self) -> Vec<Arc<Breaker>> {
        self.by_key.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(trip: &str, timeout_ms: u64, max_requests: u32) -> Breaker {
        Breaker::new(
            "b/cb",
            &CircuitBreakerPolicy {
                max_requests,
                interval: None,
                timeout: Some(Duration::from_millis(timeout_ms)),
                trip: Some(trip.to_string()),
            },
        )
    }

    #[test]
    fn closed_then_open_then_half_open_then_closed() {
        let b = breaker("consecutiveFailures > 3", 1000, 1);
        let start = Instant::now();
        for _ in 0..4 {
            let admitted = b.allow_at(start).unwrap();
            b.record_at(admitted, false, start);
        }
        assert!(matches!(b.phase(), Phase::Open { .. }));
        assert!(
            b.allow_at(start + Duration::from_millis(999)).is_none(),
            "fails fast"
        );
        let later = start + Duration::from_millis(1000);
        let lost = b.allow_at(later).expect("one half-open probe");
        assert!(b.allow_at(later).is_none(), "and only one");
        // A probe that never reports back is given up on after another timeout.
        let much_later = later + Duration::from_millis(1000);
        let released = b
            .allow_at(much_later)
            .expect("a lost probe does not stick half-open");
        b.release(released);
        let probe = b
            .allow_at(much_later)
            .expect("a released probe frees its slot");
        b.record_at(lost, false, much_later);
        assert!(
            matches!(b.phase(), Phase::HalfOpen { .. }),
            "the lost probe, reporting late, is ignored"
        );
        b.record_at(probe, true, much_later);
        assert_eq!(b.phase(), Phase::Closed);
        assert!(b.allow_at(much_later).is_some());
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_successes_never_trip() {
        let b = breaker("consecutiveFailures > 1", 100, 2);
        let start = Instant::now();
        for _ in 0..10 {
            let admitted = b.allow_at(start).unwrap();
            b.record_at(admitted, true, start);
        }
        assert_eq!(b.phase(), Phase::Closed);
        let slow = b.allow_at(start).unwrap();
        for _ in 0..2 {
            let admitted = b.allow_at(start).unwrap();
            b.record_at(admitted, false, start);
        }
        let later = start + Duration::from_millis(100);
        let probe = b.allow_at(later).unwrap();
        assert!(b.allow_at(later).is_some(), "maxRequests 2");
        b.record_at(slow, true, later);
        assert!(
            matches!(b.phase(), Phase::HalfOpen { .. }),
            "a call admitted while closed is no probe: its success closes nothing"
        );
        b.record_at(probe, false, later);
        assert!(matches!(b.phase(), Phase::Open { .. }));
    }

    #[test]
    fn a_swap_that_keeps_the_policy_keeps_the_breaker() {
        let breakers = Breakers::default();
        let policy = CircuitBreakerPolicy {
            max_requests: 1,
            interval: None,
            timeout: None,
            trip: None,
        };
        let first = breakers.get("b", "cb", &policy);
        assert!(Arc::ptr_eq(&first, &breakers.get("b", "cb", &policy)));
        let changed = CircuitBreakerPolicy {
            max_requests: 2,
            ..policy.clone()
        };
        let second = breakers.get("b", "cb", &changed);
        assert!(!Arc::ptr_eq(&first, &second));
        // Once the configuration that used the first is gone, the map lets go of it too.
        drop(first);
        let _third = breakers.get("c", "cb", &policy);
        assert_eq!(breakers.all().len(), 2, "b under the changed policy, and c");
    }
}
