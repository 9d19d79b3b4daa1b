//! The result of a run: counts, throughput and latency percentiles of the measured period, as
//! a serde type the benchmark harness stores, and as a wrk-like text summary for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::LoadSpec;
use crate::tally::Tally;

/// Percentiles of the latency curve, chosen to show the tail (as wrk2 prints them).
const CURVE_PERCENTILES: [f64; 11] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

/// What a run measured.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LoadReport {
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    /// Requests/second asked for (open loop only).
    pub target_rate: Option<f64>,
    /// `http1` or `http2`.
    pub protocol: String,
    pub connections: usize,
    /// Length of the measured period, warm-up excluded.
    pub duration_secs: f64,
    /// Exchanges answered in the measured period, any status.
    pub requests: u64,
    /// Of which 2xx/3xx.
    pub ok: u64,
    /// `ok / duration_secs`.
    pub throughput: f64,
    pub status_counts: BTreeMap<u16, u64>,
    /// Open loop: requests due in the measured period that were never sent because the target
    /// could not keep up and the run ended on time.
    #[serde(default)]
    pub missed: u64,
    /// By kind: `connect`, `timeout`, `io`, `status_4xx`, `status_5xx`; kinds that did not
    /// occur are left out.
    pub errors: BTreeMap<String, u64>,
    /// Over ok requests.
    pub latency: Percentiles,
    /// (percentile, micros) points for plotting a latency-by-percentile curve, e.g. 0,50,75,90,95,99,99.5,99.9,99.95,99.99,100
    pub latency_curve: Vec<(f64, f64)>,
}

/// Latency of ok requests, in microseconds (zero when there were none).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

// === impl LoadReport ===

impl LoadReport {
    pub(crate) fn new(spec: &LoadSpec, tally: &Tally, measured: Duration) -> Self {
        let duration_secs = measured.as_secs_f64();
        let histogram = &tally.latency;
        let (latency, latency_curve) = if histogram.is_empty() {
            (Percentiles::default(), Vec::new())
        } else {
            let at = |percentile: f64| histogram.value_at_quantile(percentile / 100.0) as f64;
            let latency = Percentiles {
                p50_us: at(50.0),
                p90_us: at(90.0),
                p99_us: at(99.0),
                p999_us: at(99.9),
                max_us: histogram.max() as f64,
                mean_us: histogram.mean(),
            };
            let curve = CURVE_PERCENTILES
                .iter()
                .map(|&percentile| {
                    let micros = if percentile == 0.0 {
                        histogram.min()
                    } else {
                        histogram.value_at_quantile(percentile / 100.0)
                    };
                    (percentile, micros as f64)
                })
                .collect();
            (latency, curve)
        };
        LoadReport {
            mode: spec.mode.name().to_string(),
            target_rate: spec.mode.target_rate(),
            protocol: spec.protocol.name().to_string(),
            connections: spec.connections,
            duration_secs,
            requests: tally.requests,
            ok: tally.ok,
            throughput: if duration_secs > 0.0 {
                tally.ok as f64 / duration_secs
            } else {
                0.0
            },
            status_counts: tally.statuses.clone(),
            missed: tally.missed,
            errors: tally.errors(),
            latency,
            latency_curve,
        }
    }

    /// A human summary in the spirit of wrk's output: what ran, latency percentiles and the
    /// distribution, counts, errors and the throughput.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let rate = match self.target_rate {
            Some(rate) => format!(" at {rate} req/s"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{} {}{rate}, {} connections, {:.2}s measured",
            self.mode, self.protocol, self.connections, self.duration_secs
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  Latency    {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let _ = writeln!(
            out,
            "             {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            micros(l.p50_us),
            micros(l.p90_us),
            micros(l.p99_us),
            micros(l.p999_us),
            micros(l.max_us),
            micros(l.mean_us),
        );
        if !self.latency_curve.is_empty() {
            let corrected = if self.target_rate.is_some() {
                " (from scheduled send times, corrected for coordinated omission)"
            } else {
                ""
            };
            let _ = writeln!(out, "  Latency distribution{corrected}");
            for (percentile, us) in &self.latency_curve {
                let _ = writeln!(out, "    {percentile:>7.3}%  {:>9}", micros(*us));
            }
        }
        let _ = writeln!(
            out,
            "  {} requests in {:.2}s, {} ok (2xx/3xx)",
            self.requests, self.duration_secs, self.ok
        );
        if !self.status_counts.is_empty() {
            let statuses: Vec<String> = self
                .status_counts
                .iter()
                .map(|(status, count)| format!("{status}: {count}"))
                .collect();
            let _ = writeln!(out, "  Status     {}", statuses.join(", "));
        }
        if self.missed > 0 {
            let _ = writeln!(
                out,
                "  Missed     {} requests due in the measured period were never sent: the target could not keep up with the rate",
                self.missed
            );
        }
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            let _ = writeln!(out, "  Errors     {}", errors.join(", "));
        }
        let _ = write!(out, "Requests/sec: {:.2}", self.throughput);
        if let Some(rate) = self.target_rate {
            let _ = write!(out, " (target {rate:.2})");
        }
        out.push('\n');
        out
    }
}

/// `850us`, `1.25ms`, `2.50s`: the unit that keeps three significant figures readable.
fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_print_in_the_unit_that_fits() {
        assert_eq!(micros(850.0), "850us");
        assert_eq!(micros(1_250.0), "1.25ms");
        assert_eq!(micros(2_500_000.0), "2.50s");
    }
}
