//! Retry schedules: how long to wait before each retry, and when to give up — Dapr's
//! `Resiliency` `retries` policies, parsed once per configuration, and the bounded default
//! pub/sub deliveries use when no policy targets the component.
//!
//! - `constant`: every wait is `duration` (Dapr's default 5s);
//! - `exponential`: the first wait is `duration` (default 500ms, as Dapr's), each next one
//!   twice the last, capped at `maxInterval` (default 60s). No jitter: the schedule a user
//!   reads in the policy is the one that runs, and its total is known in advance;
//! - `maxRetries`: retries after the first attempt; `-1` retries forever.
//!
//! `matching.httpStatusCodes` (`"429,500-599"`) limits which statuses are retried; a transport
//! error is always retried.

use std::time::Duration;

use outrigger_config::dapr::{RetryBackoff, RetryPolicy};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetrySchedule {
    backoff: Backoff,
    /// `None`: forever.
    max_retries: Option<u32>,
    /// Status ranges retried; `None`: every failure.
    statuses: Option<Vec<(u16, u16)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backoff {
    Constant(Duration),
    Exponential { first: Duration, cap: Duration },
}

/// Waits beyond this are capped, whatever a policy says: a retry a day apart is a lost message.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);
/// Waits below this are raised to it.
const SHORTEST_WAIT: Duration = Duration::from_millis(1);

impl RetrySchedule {
    /// The schedule pub/sub deliveries follow when no `Resiliency` policy targets the
    /// component's inbound side: exponential from 1s, capped at 60s, 10 retries (11 attempts,
    /// 5 min 3 s of waiting in all).
    pub(crate) fn pubsub_default() -> RetrySchedule {
        RetrySchedule {
            backoff: Backoff::Exponential {
                first: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
            max_retries: Some(10),
            statuses: None,
        }
    }

    /// A Dapr `retries` policy; the error names the field that is wrong.
    pub(crate) fn from_policy(policy: &RetryPolicy) -> Result<RetrySchedule, String> {
        let backoff = match policy.policy {
            RetryBackoff::Constant => {
                Backoff::Constant(policy.duration.unwrap_or(Duration::from_secs(5)))
            }
            RetryBackoff::Exponential => Backoff::Exponential {
                first: policy
                    .duration
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_millis(500)),
                cap: policy.max_interval.unwrap_or(Duration::from_secs(60)),
            },
        };
        let max_retries = match policy.max_retries {
            -1 => None,
            n if n >= 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            n => {
                return Err(format!(
                    "maxRetries: {n}; expected -1 (forever) or a count from 0"
                ))
            }
        };
        let statuses = policy
            .matching
            .as_ref()
            .and_then(|m| m.http_status_codes.as_deref())
            .map(parse_statuses)
            .transpose()?;
        Ok(RetrySchedule {
            backoff,
            max_retries,
            statuses,
        })
    }

    /// The wait before retry `n` (1 for the first retry), or `None` when retries ran out.
    pub(crate) fn delay(&self, n: u32) -> Option<Duration> {
        if n == 0 || self.max_retries.is_some_and(|max| n > max) {
            return None;
        }
        let wait = match self.backoff {
            Backoff::Constant(d) => d,
            Backoff::Exponential { first, cap } => {
                let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                first.checked_mul(factor).unwrap_or(cap).min(cap)
            }
        };
        // A zero wait would turn "retry forever" into a hot loop.
        Some(wait.clamp(SHORTEST_WAIT, LONGEST_WAIT))
    }

    /// The waiting a message can go through before retries run out; `None` if they never do.
    pub(crate) fn budget(&self) -> Option<Duration> {
        let max = self.max_retries?;
        // Within 64 retries every wait has reached its cap (or the one-hour ceiling): sum
        // those, then count the rest at the capped wait — no loop over a huge maxRetries.
        let head = max.min(64);
        let mut total = (1..=head)
            .filter_map(|n| self.delay(n))
            .fold(Duration::ZERO, Duration::saturating_add);
        if max > head {
            let capped = self.delay(max).unwrap_or_default();
            total = total.saturating_add(capped.saturating_mul(max - head));
        }
        Some(total)
    }

    /// Attempts in all (the first and every retry); `None` if retries never run out.
    pub(crate) fn attempts(&self) -> Option<u32> {
        self.max_retries.map(|max| max.saturating_add(1))
    }

    /// Whether an invocation answered with `status` is retried: the policy's
    /// `matching.httpStatusCodes`, else any 5xx.
    pub(crate) fn retries_invocation_status(&self, status: u16) -> bool {
        match &self.statuses {
            None => (500..=599).contains(&status),
            Some(ranges) => ranges
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&status)),
        }
    }

    /// Whether a failure with this status (`None`: no response) is retried at all.
    pub(crate) fn retries_status(&self, status: Option<u16>) -> bool {
        match (status, &self.statuses) {
            (None, _) | (_, None) => true,
            (Some(status), Some(ranges)) => ranges
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&status)),
        }
    }
}

/// A retry policy in force for calls to one app: its schedule and the budget every call to
/// that app shares.
#[derive(Debug)]
pub(crate) struct AppRetry {
    pub(crate) schedule: RetrySchedule,
    pub(crate) budget: RetryBudget,
    /// `outrigger_retries_total` for the target app.
    pub(crate) retried: prometheus::IntCounter,
}

/// Linkerd's retry budget: over a 10 s window, retries may add at most 20 % to the calls plus
/// 10 a second, so retries can never multiply an overload — with every call failing, the app
/// sees about 1.2 × the calls, not 1 + maxRetries times.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    window: parking_lot::Mutex<BudgetWindow>,
}

#[derive(Debug)]
struct BudgetWindow {
    started: std::time::Instant,
    calls: u64,
    retries: u64,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUDGET_RATIO: f64 = 0.2;
const BUDGET_MIN_PER_SECOND: f64 = 10.0;

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            window: parking_lot::Mutex::new(BudgetWindow {
                started: std::time::Instant::now(),
                calls: 0,
                retries: 0,
            }),
        }
    }
}

impl RetryBudget {
    fn current(&self) -> parking_lot::MutexGuard<'_, BudgetWindow> {
        let mut window = self.window.lock();
        if window.started.elapsed() >= BUDGET_WINDOW {
            *window = BudgetWindow {
                started: std::time::Instant::now(),
                calls: 0,
                retries: 0,
            };
        }
        window
    }

    /// Counts a call (its first attempt).
    pub(crate) fn call(&self) {
        self.current().calls += 1;
    }

    /// Takes one retry from the budget, if it has one.
    pub(crate) fn try_retry(&self) -> bool {
        let mut window = self.current();
        let seconds = window.started.elapsed().as_secs_f64().max(1.0);
        let allowed = window.calls as f64 * BUDGET_RATIO + seconds * BUDGET_MIN_PER_SECOND;
        if (window.retries as f64) < allowed {
            window.retries += 1;
            true
        } else {
            false
        }
    }
}

/// `"429,500-599"` into ranges (the config crate's reading, so the two never disagree).
fn parse_statuses(text: &str) -> Result<Vec<(u16, u16)>, String> {
    outrigger_config::dapr::parse_status_codes(text)
        .map_err(|e| format!("matching.httpStatusCodes: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_config::dapr::RetryMatching;

    fn policy(
        kind: RetryBackoff,
        duration: Option<u64>,
        max: Option<u64>,
        retries: i64,
    ) -> RetryPolicy {
        RetryPolicy {
            policy: kind,
            duration: duration.map(Duration::from_millis),
            max_interval: max.map(Duration::from_millis),
            max_retries: retries,
            matching: None,
        }
    }

    #[test]
    fn the_default_doubles_from_one_second_to_a_minute_ten_times() {
        let schedule = RetrySchedule::pubsub_default();
        let waits: Vec<u64> = (1..=11)
            .map_while(|n| schedule.delay(n))
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(schedule.budget(), Some(Duration::from_secs(303)));
    }

    #[test]
    fn constant_and_exponential_policies_follow_their_fields() {
        let constant =
            RetrySchedule::from_policy(&policy(RetryBackoff::Constant, Some(200), None, 3))
                .unwrap();
        assert_eq!(constant.delay(1), Some(Duration::from_millis(200)));
        assert_eq!(constant.delay(3), Some(Duration::from_millis(200)));
        assert_eq!(constant.delay(4), None);
        assert_eq!(constant.budget(), Some(Duration::from_millis(600)));
        let forever =
            RetrySchedule::from_policy(&policy(RetryBackoff::Exponential, None, Some(2000), -1))
                .unwrap();
        assert_eq!(forever.delay(1), Some(Duration::from_millis(500)));
        assert_eq!(forever.delay(3), Some(Duration::from_millis(2000)));
        assert_eq!(forever.delay(1000), Some(Duration::from_millis(2000)));
        assert_eq!(forever.budget(), None);
        assert!(
            RetrySchedule::from_policy(&policy(RetryBackoff::Constant, None, None, -2)).is_err()
        );
    }

    #[test]
    fn matching_limits_the_statuses_retried_but_never_transport_errors() {
        let mut p = policy(RetryBackoff::Constant, Some(1), None, 1);
        p.matching = Some(RetryMatching {
            http_status_codes: Some("429, 500-503".into()),
            grpc_status_codes: None,
        });
        let schedule = RetrySchedule::from_policy(&p).unwrap();
        assert!(schedule.retries_status(Some(429)));
        assert!(schedule.retries_status(Some(502)));
        assert!(!schedule.retries_status(Some(504)));
        assert!(schedule.retries_status(None));
        p.matching = Some(RetryMatching {
            http_status_codes: Some("500-99x".into()),
            grpc_status_codes: None,
        });
        let error = RetrySchedule::from_policy(&p).unwrap_err();
        assert!(error.contains("\"500-99x\""), "{error}");
    }

    #[test]
    fn a_huge_max_retries_has_a_budget_without_looping_or_overflowing() {
        let huge = RetrySchedule::from_policy(&policy(
            RetryBackoff::Exponential,
            Some(100),
            Some(2000),
            i64::from(u32::MAX),
        ))
        .unwrap();
        // 100 + 200 + … capped at 2 s: the first five waits are 3.1 s, the rest 2 s each.
        let expected = Duration::from_millis(100 + 200 + 400 + 800 + 1600)
            + Duration::from_secs(2) * 59
            + Duration::from_secs(2).saturating_mul(u32::MAX - 64);
        assert_eq!(huge.budget(), Some(expected));
        let constant = RetrySchedule::from_policy(&policy(
            RetryBackoff::Constant,
            Some(3_600_000),
            None,
            i64::MAX,
        ))
        .unwrap();
        assert_eq!(
            constant.budget(),
            Some(Duration::from_secs(3600).saturating_mul(u32::MAX))
        );
    }

    #[test]
    fn the_budget_allows_a_fifth_of_the_calls_plus_ten_a_second() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.call();
        }
        // Within the first second: 100 × 0.2 + 10.
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 30);
    }
}
