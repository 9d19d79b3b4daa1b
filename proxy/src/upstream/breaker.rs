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
}

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

    /// Whether a call may go now; a half-open breaker admits `maxRequests` calls.
    pub(crate) fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        match state.phase {
            Phase::Closed => {
                if self
                    .interval
                    .is_some_and(|i| now.duration_since(state.counting_since) >= i)
                {
                    state.counts = Counts::default();
                    state.counting_since = now;
                }
                true
            }
            Phase::Open { until } if now < until => false,
            Phase::Open { .. } => {
                tracing::info!(breaker = %self.name, "circuit breaker half-open: letting probes through");
                state.phase = Phase::HalfOpen {
                    admitted: 1,
                    since: now,
                };
                state.counts = Counts::default();
                self.moved_to("half-open");
                true
            }
            Phase::HalfOpen { admitted, since } if admitted < self.max_requests => {
                state.phase = Phase::HalfOpen {
                    admitted: admitted + 1,
                    since,
                };
                true
            }
            Phase::HalfOpen { since, .. }
                if now.saturating_duration_since(since) >= self.timeout =>
            {
                // The probes let through never reported back: let new ones through.
                state.phase = Phase::HalfOpen {
                    admitted: 1,
                    since: now,
                };
                true
            }
            Phase::HalfOpen { .. } => false,
        }
    }

    /// Records how an admitted call went.
    pub(crate) fn record(&self, success: bool) {
        self.record_at(success, Instant::now());
    }

    /// Gives back an admitted call that says nothing about the target (the caller went away
    /// or sent a malformed request): counted neither way, its half-open slot freed.
    pub(crate) fn release(&self) {
        let mut state = self.state.lock();
        if let Phase::HalfOpen { admitted, since } = state.phase {
            state.phase = Phase::HalfOpen {
                admitted: admitted.saturating_sub(1),
                since,
            };
        }
    }

    fn record_at(&self, success: bool, now: Instant) {
        let mut state = self.state.lock();
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
            state.phase = Phase::Open {
                until: now
                    .checked_add(self.timeout)
                    .unwrap_or_else(|| now + LONGEST_TIMEOUT),
            };
            state.counts = Counts::default();
            state.counting_since = now;
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
                state.phase = Phase::Closed;
                state.counts = Counts::default();
                state.counting_since = now;
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
        self.by_key
            .lock()
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
            assert!(b.allow_at(start));
            b.record_at(false, start);
        }
        assert!(matches!(b.phase(), Phase::Open { .. }));
        assert!(
            !b.allow_at(start + Duration::from_millis(999)),
            "fails fast"
        );
        let later = start + Duration::from_millis(1000);
        assert!(b.allow_at(later), "one half-open probe");
        assert!(!b.allow_at(later), "and only one");
        // A probe that never reports back is given up on after another timeout.
        let much_later = later + Duration::from_millis(1000);
        assert!(
            b.allow_at(much_later),
            "a lost probe does not stick half-open"
        );
        b.release();
        assert!(b.allow_at(much_later), "a released probe frees its slot");
        b.record_at(true, later);
        assert_eq!(b.phase(), Phase::Closed);
        assert!(b.allow_at(later));
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_successes_never_trip() {
        let b = breaker("consecutiveFailures > 1", 100, 2);
        let start = Instant::now();
        for _ in 0..10 {
            b.record_at(true, start);
        }
        assert_eq!(b.phase(), Phase::Closed);
        b.record_at(false, start);
        b.record_at(false, start);
        let later = start + Duration::from_millis(100);
        assert!(b.allow_at(later));
        assert!(b.allow_at(later), "maxRequests 2");
        b.record_at(false, later);
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
        assert!(!Arc::ptr_eq(&first, &breakers.get("b", "cb", &changed)));
    }
}
