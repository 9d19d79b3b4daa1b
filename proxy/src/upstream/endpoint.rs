//! One upstream endpoint (a sidecar's mesh address, or the local app) and what is known about
//! it: its parsed address, its idle connections, its HTTP/2 connection, and the outcome of
//! every request sent to it. An [`Endpoint`] is keyed by address in [`Endpoints`] and shared
//! by every cluster and discovery entry that names that address, so its pool and its
//! statistics survive configuration swaps and membership changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::h2::H2Connection;
use super::pool::Http1Pool;

/// Where an endpoint is: an IP address parsed once, or a name resolved when a connection is
/// opened (never per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointAddr {
    Ip(SocketAddr),
    Name(String),
}

impl EndpointAddr {
    pub(crate) fn parse(address: &str) -> EndpointAddr {
        match address.parse::<SocketAddr>() {
            Ok(ip) => EndpointAddr::Ip(ip),
            Err(_) => EndpointAddr::Name(address.to_string()),
        }
    }

    /// The socket address to connect to.
    pub(crate) async fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            EndpointAddr::Ip(ip) => Ok(*ip),
            EndpointAddr::Name(name) => tokio::net::lookup_host(name.as_str())
                .await?
                .next()
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{name} resolved to no address"),
                    )
                }),
        }
    }
}

/// What went wrong with one request to an endpoint, for outcome accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Connect,
    Timeout,
    /// Reset, closed early, or a malformed answer.
    Protocol,
}

/// The result of one request to an endpoint, reported after every request: the seam where
/// retries, circuit breakers, outlier detection and latency-aware balancing plug in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) status: Option<u16>,
    pub(crate) latency: Duration,
    pub(crate) failure: Option<FailureKind>,
}

/// Counters of one endpoint. Relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    pub(crate) in_flight: AtomicU32,
    pub(crate) requests: AtomicU64,
    /// Connect failures, timeouts, protocol errors and 5xx answers.
    pub(crate) failures: AtomicU64,
    pub(crate) consecutive_failures: AtomicU32,
    /// Exponentially weighted moving average of latency, in microseconds.
    pub(crate) latency_ewma_us: AtomicU64,
    /// The peak-EWMA latency estimate the `peakEwma` balancer reads.
    pub(crate) peak: Mutex<PeakEwma>,
    /// Outlier detection: until when this endpoint is ejected (milliseconds since
    /// [`clock_base`], 0: never), and how often it was. An atomic, not a lock: every pick
    /// of a multi-endpoint set reads it.
    pub(crate) ejected_until_ms: AtomicU64,
    pub(crate) ejections: AtomicU32,
}

/// Envoy's outlier-detection defaults: this many consecutive failures (5xx answers, connect
/// failures, resets, timeouts) eject an endpoint for the base time × the number of times it
/// was ejected, at most the longest; sets skip ejected endpoints (at most a tenth of a set, but
/// at least one — `EndpointSet::pick_for`).
pub(crate) const EJECT_AFTER_FAILURES: u32 = 5;
pub(crate) const EJECTION_BASE: Duration = Duration::from_secs(30);
pub(crate) const EJECTION_LONGEST: Duration = Duration::from_secs(300);

/// Linkerd's peak-EWMA: a latency sample above the estimate replaces it at once (peaks count
/// in full); one below pulls it down with a weight that decays over [`PEAK_EWMA_DECAY`], so an
/// endpoint that got slow is avoided at once and trusted again only gradually.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PeakEwma {
    estimate_ns: f64,
    updated: Option<Instant>,
}

/// The instant ejection deadlines count from (the first time anything asks).
fn clock_base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds since [`clock_base`], plus one so that 0 never means "now".
pub(crate) fn millis_now() -> u64 {
    clock_base().elapsed().as_millis() as u64 + 1
}

/// The estimate of an endpoint nothing was measured on yet (Linkerd's default RTT).
pub(crate) const PEAK_EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast a lower sample pulls the estimate down (Linkerd's decay).
pub(crate) const PEAK_EWMA_DECAY: Duration = Duration::from_secs(10);
/// The latency a failed request (5xx, refused, reset, timed out) counts as, at least.
pub(crate) const PEAK_EWMA_FAILURE_PENALTY: Duration = Duration::from_millis(250);

impl PeakEwma {
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        self.estimate_ns = match self.updated {
            None => rtt,
            Some(_) if rtt > self.estimate_ns => rtt,
            Some(then) => {
                let elapsed = now.saturating_duration_since(then).as_nanos() as f64;
                let weight = (-elapsed / PEAK_EWMA_DECAY.as_nanos() as f64).exp();
                self.estimate_ns * weight + rtt * (1.0 - weight)
            }
        };
        self.updated = Some(now);
    }

    /// The estimate in nanoseconds at `now` (the default RTT before any sample). Between
    /// samples it decays toward zero over [`PEAK_EWMA_DECAY`] (as tower's peak-EWMA does), so
    /// an endpoint left alone for a while is tried again and measured afresh.
    /// The decayed estimate, if anything was measured.
    pub(crate) fn measured_ns(&self, now: Instant) -> Option<f64> {
        self.updated.map(|_| self.estimate_ns(now))
    }

    pub(crate) fn estimate_ns(&self, now: Instant) -> f64 {
        match self.updated {
            None => PEAK_EWMA_DEFAULT_RTT.as_nanos() as f64,
            Some(then) => {
                let idle = now.saturating_duration_since(then).as_nanos() as f64;
                self.estimate_ns * (-idle / PEAK_EWMA_DECAY.as_nanos() as f64).exp()
            }
        }
    }
}

pub(crate) struct Endpoint {
    /// As configured (`host:port`), for messages and the config dump.
    pub(crate) address: String,
    pub(crate) addr: EndpointAddr,
    pub(crate) pool: Http1Pool,
    pub(crate) h2: H2Connection,
    pub(crate) stats: EndpointStats,
    /// `outrigger_upstream_ejections_total`; this endpoint's series appears at its first
    /// ejection, so endpoints never ejected add no series.
    ejected_metric: Option<prometheus::IntCounterVec>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(address: &str) -> Endpoint {
        Endpoint {
            address: address.to_string(),
            addr: EndpointAddr::parse(address),
            pool: Http1Pool::default(),
            h2: H2Connection::default(),
            stats: EndpointStats::default(),
            ejected_metric: None,
        }
    }

    /// Marks a request as started; the guard marks it finished.
    pub(crate) fn begin(&self) -> InFlightGuard<'_> {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self)
    }

    /// Records how a request went.
    pub(crate) fn report(&self, outcome: &Outcome) {
        let stats = &self.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let failed = outcome.failure.is_some() || outcome.status.is_some_and(|s| s >= 500);
        if failed {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            let consecutive = stats.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if consecutive >= EJECT_AFTER_FAILURES {
                self.eject();
            }
        } else if stats.consecutive_failures.load(Ordering::Relaxed) != 0 {
            stats.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let sample = u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX);
        let old = stats.latency_ewma_us.load(Ordering::Relaxed);
        let next = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        stats.latency_ewma_us.store(next, Ordering::Relaxed);
        // A failure costs peak-EWMA as much as a very slow answer: a fast-failing endpoint
        // must not look like the fastest one.
        let sample = if failed {
            outcome.latency.max(PEAK_EWMA_FAILURE_PENALTY)
        } else {
            outcome.latency
        };
        stats.peak.lock().observe(sample, Instant::now());
    }

    /// Ejects the endpoint (unless it already is): for 30 s × its ejections so far, at most
    /// 300 s. Its consecutive failures start over.
    fn eject(&self) {
        let now = millis_now();
        let until = &self.stats.ejected_until_ms;
        let current = until.load(Ordering::Relaxed);
        if current > now {
            return;
        }
        let times = self.stats.ejections.load(Ordering::Relaxed) + 1;
        let time = EJECTION_BASE.saturating_mul(times).min(EJECTION_LONGEST);
        let deadline = now + time.as_millis() as u64;
        // Two failures racing to eject: one wins, the other sees it ejected.
        if until
            .compare_exchange(current, deadline, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.stats.ejections.fetch_add(1, Ordering::Relaxed);
        self.stats.consecutive_failures.store(0, Ordering::Relaxed);
        if let Some(metric) = &self.ejected_metric {
            metric.with_label_values(&[self.address.as_str()]).inc();
        }
        tracing::warn!(endpoint = %self.address, ejections = times, seconds = time.as_secs(), "endpoint ejected after {EJECT_AFTER_FAILURES} consecutive failures");
    }

    /// Whether outlier detection has the endpoint out of rotation right now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.is_ejected_at(millis_now())
    }

    /// The same, at `now` (from [`millis_now`]), for checking many endpoints at once.
    pub(crate) fn is_ejected_at(&self, now: u64) -> bool {
        self.stats.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// The peak-EWMA cost of sending this endpoint one more request, compared with `other`:
    /// the latency estimate × (requests in flight + 1). An endpoint nothing was measured on yet
    /// is presumed as fast as the one it is compared with (Linkerd's 30 ms when neither was
    /// measured), so a new instance gets its share at once under light load instead of
    /// waiting for a 30 ms presumption to decay below the others' measured latency.
    pub(crate) fn peak_ewma_cost(&self, other: &Endpoint) -> f64 {
        let now = Instant::now();
        // One lock at a time: holding ours while taking the other's would deadlock with a
        // pick on another thread comparing the same two endpoints the other way round.
        let own = self.stats.peak.lock().measured_ns(now);
        let estimate = own
            .or_else(|| other.stats.peak.lock().measured_ns(now))
            .unwrap_or(PEAK_EWMA_DEFAULT_RTT.as_nanos() as f64);
        let pending = self.stats.in_flight.load(Ordering::Relaxed) as f64;
        estimate * (pending + 1.0)
    }
}

/// Held while a request to an endpoint is in flight.
pub(crate) struct InFlightGuard<'a>(&'a Endpoint);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every endpoint in use, by address. Holds them weakly: an endpoint lives as long as some
/// endpoint set names it, and comes back with fresh state if it is named again later.
#[derive(Default)]
pub(crate) struct Endpoints {
    by_address: Mutex<HashMap<String, Weak<Endpoint>>>,
    /// `outrigger_upstream_ejections_total`, when metrics are kept.
    ejections: Option<prometheus::IntCounterVec>,
}

impl Endpoints {
    /// Endpoints whose outlier ejections are counted in `ejections`.
    pub(crate) fn with_metrics(ejections: prometheus::IntCounterVec) -> Endpoints {
        Endpoints {
            by_address: Mutex::default(),
            ejections: Some(ejections),
        }
    }

    /// The endpoint at `address`, shared with every other set that names it.
    pub(crate) fn get(&self, address: &str) -> Arc<Endpoint> {
        let mut map = self.by_address.lock();
        if let Some(existing) = map.get(address).and_then(Weak::upgrade) {
            return existing;
        }
        // Forget endpoints nobody names any more before adding one.
        map.retain(|_, e| e.strong_count() > 0);
        let mut endpoint = Endpoint::new(address);
        endpoint.ejected_metric = self.ejections.clone();
        let endpoint = Arc::new(endpoint);
        map.insert(address.to_string(), Arc::downgrade(&endpoint));
        endpoint
    }

    /// Every live endpoint.
    pub(crate) fn all(&self) -> Vec<Arc<Endpoint>> {
        self.by_address
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Closes idle connections that are too old or that their peer closed.
    pub(crate) fn sweep(&self) {
        for endpoint in self.all() {
            endpoint.pool.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_threads_comparing_the_same_unmeasured_pair_both_ways_never_deadlock() {
        // The pick on one thread costs (a, b) while another costs (b, a); with neither
        // measured each reads the other's estimate. Holding one lock while taking the other
        // deadlocked the sidecar's two workers at cold start under concurrent calls.
        let endpoints = Endpoints::default();
        let (a, b) = (endpoints.get("127.0.0.1:1"), endpoints.get("127.0.0.1:2"));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for (x, y) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            let done = done_tx.clone();
            std::thread::spawn(move || {
                for _ in 0..200_000 {
                    std::hint::black_box(x.peak_ewma_cost(&y));
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..2 {
            done_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a cost computation deadlocked");
        }
    }

    #[test]
    fn an_address_names_one_endpoint_while_someone_holds_it() {
        let endpoints = Endpoints::default();
        let a = endpoints.get("127.0.0.1:1");
        let again = endpoints.get("127.0.0.1:1");
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(a.addr, EndpointAddr::Ip("127.0.0.1:1".parse().unwrap()));
        assert_eq!(
            endpoints.get("b.local:80").addr,
            EndpointAddr::Name("b.local:80".into())
        );
        drop((a, again));
        assert_eq!(endpoints.all().len(), 0);
    }

    #[test]
    fn outcomes_update_the_counters() {
        let endpoints = Endpoints::default();
        let e = endpoints.get("127.0.0.1:1");
        let ok = Outcome {
            status: Some(200),
            latency: Duration::from_micros(100),
            failure: None,
        };
        let bad = Outcome {
            status: None,
            latency: Duration::from_micros(900),
            failure: Some(FailureKind::Connect),
        };
        e.report(&bad);
        e.report(&bad);
        assert_eq!(e.stats.consecutive_failures.load(Ordering::Relaxed), 2);
        e.report(&ok);
        assert_eq!(e.stats.consecutive_failures.load(Ordering::Relaxed), 0);
        assert_eq!(e.stats.requests.load(Ordering::Relaxed), 3);
        assert_eq!(e.stats.failures.load(Ordering::Relaxed), 2);
        assert_eq!(
            e.stats.latency_ewma_us.load(Ordering::Relaxed),
            (900 * 7 + 100) / 8
        );
        {
            let _guard = e.begin();
            assert_eq!(e.stats.in_flight.load(Ordering::Relaxed), 1);
        }
        assert_eq!(e.stats.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays_toward_lower_samples() {
        let start = Instant::now();
        let mut peak = PeakEwma::default();
        assert_eq!(
            peak.estimate_ns(start),
            30e6,
            "the default RTT before any sample"
        );
        peak.observe(Duration::from_millis(1), start);
        assert_eq!(peak.estimate_ns(start), 1e6);
        let at = start + Duration::from_millis(1);
        peak.observe(Duration::from_millis(50), at);
        assert_eq!(peak.estimate_ns(at), 50e6, "a peak counts in full");
        // Left alone for one decay period, the estimate is down to 1/e of itself.
        let idle = peak.estimate_ns(at + PEAK_EWMA_DECAY);
        assert!((idle - 50e6 * (-1.0f64).exp()).abs() < 1.0, "{idle}");
        // One decay period later a 1 ms sample pulls it 1 - 1/e of the way down.
        let later = at + PEAK_EWMA_DECAY;
        peak.observe(Duration::from_millis(1), later);
        let expected = 50e6 * (-1.0f64).exp() + 1e6 * (1.0 - (-1.0f64).exp());
        let got = peak.estimate_ns(later);
        assert!((got - expected).abs() < 1.0, "{got}");
    }
}
