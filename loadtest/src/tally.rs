//! What gets recorded: the measured window that decides which exchanges count, and one
//! connection's tally of them (latency histogram of 2xx/3xx answers, counts by status and by
//! error kind). Each connection keeps its own tally, so recording takes no lock; they merge once.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Latencies are recorded in microseconds, from 1 us to 60 s, to 3 significant figures.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;
const SIGNIFICANT_FIGURES: u8 = 3;

/// The run's timeline: warm-up from `start` to `measure_from`, then the measured period to `end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
}

impl Window {
    pub(crate) fn new(start: Instant, warmup: Duration, duration: Duration) -> Self {
        let measure_from = start + warmup;
        Window {
            start,
            measure_from,
            end: measure_from + duration,
        }
    }

    /// Whether an exchange is recorded: it must have been scheduled (open loop) or sent (closed
    /// loop) in the measured period, and be over by its end. Exchanges started in the warm-up
    /// are warm-up load even if they finish later; exchanges still running at the end are
    /// awaited (each is bounded by the timeout) so the server sees whole exchanges rather than
    /// resets, but not counted, so that `requests / duration` is a rate over exactly `duration`.
    pub(crate) fn records(&self, scheduled: Instant, done: Instant) -> bool {
        scheduled >= self.measure_from && done <= self.end
    }

    /// Length of the measured period.
    pub(crate) fn measured(&self) -> Duration {
        self.end - self.measure_from
    }
}

/// Why an exchange failed; the names are the keys of `LoadReport::errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// TCP connect or protocol handshake failed (or timed out).
    Connect,
    /// No complete answer within the per-request timeout.
    Timeout,
    /// The connection broke while sending or reading.
    Io,
    Status4xx,
    Status5xx,
}

impl ErrorKind {
    const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Status4xx,
        ErrorKind::Status5xx,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Status4xx => "status_4xx",
            ErrorKind::Status5xx => "status_5xx",
        }
    }
}

/// How one exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A whole response was read, with this status.
    Answered(u16),
    /// No whole response.
    Failed(ErrorKind),
}

/// Counts and latencies of the recorded exchanges of one connection (or, merged, of a run).
#[derive(Debug)]
pub(crate) struct Tally {
    /// Microseconds, of 2xx/3xx answers only.
    pub(crate) latency: Histogram<u64>,
    /// Answered exchanges, any status.
    pub(crate) requests: u64,
    /// Answered with 2xx or 3xx.
    pub(crate) ok: u64,
    pub(crate) statuses: BTreeMap<u16, u64>,
    errors: [u64; ErrorKind::ALL.len()],
    /// Open loop: sends due in the measured period that were never made, because the run
    /// ended while the generator was still behind a slower target.
    pub(crate) missed: u64,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Tally {
            latency: Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
                .expect("constant histogram bounds are valid"),
            requests: 0,
            ok: 0,
            statuses: BTreeMap::new(),
            errors: [0; ErrorKind::ALL.len()],
            missed: 0,
        }
    }

    pub(crate) fn record(&mut self, outcome: Outcome, latency: Duration) {
        let status = match outcome {
            Outcome::Failed(kind) => {
                self.errors[kind as usize] += 1;
                return;
            }
            Outcome::Answered(status) => status,
        };
        self.requests += 1;
        *self.statuses.entry(status).or_insert(0) += 1;
        match status {
            200..=399 => {
                self.ok += 1;
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                // Above the 60 s ceiling only with a longer timeout; keep it as 60 s.
                self.latency.saturating_record(micros);
            }
            400..=499 => self.errors[ErrorKind::Status4xx as usize] += 1,
            500..=599 => self.errors[ErrorKind::Status5xx as usize] += 1,
            _ => {}
        }
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        self.latency
            .add(&other.latency)
            .expect("tallies share histogram bounds");
        self.requests += other.requests;
        self.ok += other.ok;
        self.missed += other.missed;
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_insert(0) += count;
        }
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
    }

    /// Error counts by kind name, leaving out kinds that did not occur.
    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        ErrorKind::ALL
            .iter()
            .zip(self.errors)
            .filter(|(_, count)| *count > 0)
            .map(|(kind, count)| (kind.name().to_string(), count))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_started_in_warmup_is_not_recorded_even_if_it_ends_in_the_measured_period() {
        let start = Instant::now();
        let window = Window::new(start, Duration::from_secs(1), Duration::from_secs(1));
        let sent = start + Duration::from_millis(900);
        assert!(!window.records(sent, start + Duration::from_millis(1100)));
    }

    #[test]
    fn exchange_finishing_after_the_end_is_not_recorded() {
        let start = Instant::now();
        let window = Window::new(start, Duration::ZERO, Duration::from_secs(1));
        assert!(window.records(start, start + Duration::from_secs(1)));
        assert!(!window.records(start, start + Duration::from_millis(1001)));
    }

    #[test]
    fn status_500_counts_as_a_request_and_a_5xx_error_but_not_ok() {
        let mut tally = Tally::new();
        tally.record(Outcome::Answered(500), Duration::from_millis(1));
        assert_eq!((tally.requests, tally.ok), (1, 0));
        assert_eq!(
            tally.errors(),
            BTreeMap::from([("status_5xx".to_string(), 1)])
        );
        assert_eq!(tally.latency.len(), 0);
    }

    #[test]
    fn merged_tally_sums_counts_and_latencies() {
        let mut a = Tally::new();
        a.record(Outcome::Answered(200), Duration::from_micros(100));
        a.record(Outcome::Failed(ErrorKind::Timeout), Duration::from_secs(1));
        let mut b = Tally::new();
        b.record(Outcome::Answered(200), Duration::from_micros(300));
        b.record(Outcome::Answered(404), Duration::from_micros(300));
        a.merge(&b);
        assert_eq!((a.requests, a.ok), (3, 2));
        assert_eq!(a.statuses, BTreeMap::from([(200, 2), (404, 1)]));
        assert_eq!(
            a.errors(),
            BTreeMap::from([("status_4xx".to_string(), 1), ("timeout".to_string(), 1)])
        );
        assert_eq!(a.latency.len(), 2);
    }
}
