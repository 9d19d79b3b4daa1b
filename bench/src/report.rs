//! Turns the runs into what a reader needs: per scenario and load point the medians over
//! repetitions, and the headline ratios of Outrigger's two-hop chain against the best peer.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::runner::{median, LoadPoint, RunResult};
use crate::scenario::ScenarioName;

/// Medians over the repetitions of one scenario at one load point.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: ScenarioName,
    pub point: LoadPoint,
    pub repetitions: usize,
    pub requests: u64,
    pub errors: u64,
    pub throughput: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub cpu_s_per_1000: f64,
    /// Proxy CPU per request and per proxy on the path, microseconds (median).
    pub cpu_us_per_request_per_hop: Option<f64>,
    /// Spread over the repetitions: (min, max).
    pub p50_range_us: (f64, f64),
    pub p99_range_us: (f64, f64),
    pub cpu_us_per_hop_range: Option<(f64, f64)>,
    /// Latency samples above p99 in the thinnest repetition: a p99 resting on fewer than 100
    /// is mostly noise.
    pub min_samples_above_p99: u64,
    pub peak_rss_bytes: u64,
    /// Latency-by-percentile curve of the median repetition (by p50), for the plots.
    pub curve: Vec<(f64, f64)>,
}

impl Summary {
    /// Requests served per CPU-second of the scenario's proxies.
    pub fn requests_per_cpu_second(&self) -> Option<f64> {
        (self.cpu_s_per_1000 > 0.0).then(|| 1000.0 / self.cpu_s_per_1000)
    }
}

pub fn summarise(results: &[RunResult]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, ScenarioName), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        groups
            .entry((point_key(&r.point), r.scenario))
            .or_default()
            .push(r);
    }
    let mut out: Vec<Summary> = groups
        .into_values()
        .map(|runs| {
            let m = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
            let mut by_p50: Vec<&&RunResult> = runs.iter().collect();
            by_p50.sort_by(|a, b| a.report.latency.p50_us.total_cmp(&b.report.latency.p50_us));
            let range = |f: &dyn Fn(&RunResult) -> f64| {
                runs.iter()
                    .map(|r| f(r))
                    .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
            };
            let hops = runs[0].scenario.hops();
            let per_hop = |r: &RunResult| r.cpu_seconds_per_1000() * 1000.0 / f64::from(hops);
            Summary {
                scenario: runs[0].scenario,
                point: runs[0].point.clone(),
                repetitions: runs.len(),
                requests: runs.iter().map(|r| r.report.requests).sum(),
                errors: runs
                    .iter()
                    .map(|r| r.report.errors.values().sum::<u64>())
                    .sum(),
                throughput: m(&|r| r.report.throughput),
                p50_us: m(&|r| r.report.latency.p50_us),
                p90_us: m(&|r| r.report.latency.p90_us),
                p99_us: m(&|r| r.report.latency.p99_us),
                p999_us: m(&|r| r.report.latency.p999_us),
                max_us: m(&|r| r.report.latency.max_us),
                cpu_s_per_1000: m(&|r| r.cpu_seconds_per_1000()),
                cpu_us_per_request_per_hop: (hops > 0).then(|| m(&per_hop)),
                p50_range_us: range(&|r| r.report.latency.p50_us),
                p99_range_us: range(&|r| r.report.latency.p99_us),
                cpu_us_per_hop_range: (hops > 0).then(|| range(&per_hop)),
                min_samples_above_p99: runs.iter().map(|r| r.report.ok / 100).min().unwrap_or(0),
                peak_rss_bytes: runs.iter().map(|r| r.max_rss()).max().unwrap_or(0),
                curve: by_p50[by_p50.len() / 2].report.latency_curve.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        point_order(&a.point)
            .total_cmp(&point_order(&b.point))
            .then(a.scenario.cmp(&b.scenario))
    });
    out
}

fn point_key(point: &LoadPoint) -> String {
    format!("{:020.3}", point_order(point))
}

/// Saturation first, then rates ascending.
fn point_order(point: &LoadPoint) -> f64 {
    match point {
        LoadPoint::Saturation => -1.0,
        LoadPoint::Rate { rps } => *rps,
    }
}

/// The headline: Outrigger 2-hop against the best peer 2-hop.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Headline {
    pub rate_rps: Option<f64>,
    pub best_peer_p50: Option<String>,
    pub added_p50_us: Option<(f64, f64)>,
    pub added_p50_ratio: Option<f64>,
    pub best_peer_p99: Option<String>,
    pub added_p99_us: Option<(f64, f64)>,
    pub added_p99_ratio: Option<f64>,
    pub best_peer_cpu: Option<String>,
    pub requests_per_cpu_second: Option<(f64, f64)>,
    pub cpu_ratio: Option<f64>,
    pub outrigger_rss_mb: Option<f64>,
    pub peer_rss_mb: BTreeMap<String, f64>,
    /// Outrigger 2-hop's proxy CPU per request per hop ÷ the best peer's, at saturation:
    /// (median, min, max) of the per-repetition ratios.
    pub cpu_per_hop_ratio: Option<Ratio>,
    /// Outrigger 2-hop's p50 and p99 ÷ the best peer's at the lowest fixed rate.
    pub p50_ratio: Option<Ratio>,
    pub p99_ratio: Option<Ratio>,
    /// Latency samples above p99 in the thinnest run at that rate.
    pub min_samples_above_p99: Option<u64>,
}

/// A ratio taken within each repetition (the scenarios of a repetition run back to back),
/// then summarised over repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub peer: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The two medians the ratio compares: Outrigger's, then the peer's.
    pub values: (f64, f64),
}

impl Ratio {
    fn text(&self) -> String {
        format!(
            "ratio {:.2} (repetitions {:.2}–{:.2})",
            self.median, self.min, self.max
        )
    }
}

/// `ours ÷ peer` per repetition at `point`, for the peer whose median of `metric` is best
/// (lowest): its median and spread.
fn per_repetition_ratio(
    results: &[RunResult],
    summaries: &[Summary],
    point: &LoadPoint,
    metric: &dyn Fn(&RunResult) -> f64,
    summary_metric: &dyn Fn(&Summary) -> Option<f64>,
) -> Option<Ratio> {
    let best = summaries
        .iter()
        .filter(|s| s.scenario.is_peer() && &s.point == point)
        .filter_map(|s| Some((s.scenario, summary_metric(s)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let ours = summaries
        .iter()
        .find(|s| s.scenario == ScenarioName::Outrigger2Hop && &s.point == point)
        .and_then(summary_metric)?;
    let run = |name: ScenarioName, repetition: usize| {
        results
            .iter()
            .find(|r| r.scenario == name && &r.point == point && r.repetition == repetition)
    };
    let ratios: Vec<f64> = results
        .iter()
        .filter(|r| r.scenario == ScenarioName::Outrigger2Hop && &r.point == point)
        .filter_map(|r| {
            let peer = metric(run(best.0, r.repetition)?);
            (peer > 0.0).then(|| metric(r) / peer)
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    Some(Ratio {
        peer: best.0.as_str().to_string(),
        median: median(ratios.clone()),
        min: ratios.iter().copied().fold(f64::MAX, f64::min),
        max: ratios.iter().copied().fold(f64::MIN, f64::max),
        values: (ours, best.1),
    })
}

pub fn headline(results: &[RunResult], summaries: &[Summary]) -> Headline {
    let mut h = Headline::default();
    let rate = summaries
        .iter()
        .filter_map(|s| match s.point {
            LoadPoint::Rate { rps } => Some(rps),
            LoadPoint::Saturation => None,
        })
        .fold(None, |acc: Option<f64>, r| {
            Some(acc.map_or(r, |a| a.min(r)))
        });
    let find = |name: ScenarioName, point: &LoadPoint| {
        summaries
            .iter()
            .find(|s| s.scenario == name && &s.point == point)
    };
    if let Some(rps) = rate {
        h.rate_rps = Some(rps);
        let point = LoadPoint::Rate { rps };
        if let (Some(direct), Some(ours)) = (
            find(ScenarioName::Direct, &point),
            find(ScenarioName::Outrigger2Hop, &point),
        ) {
            for (field, pick) in [("p50", 0), ("p99", 1)] {
                let lat = |s: &Summary| if pick == 0 { s.p50_us } else { s.p99_us };
                let ours_added = lat(ours) - lat(direct);
                let best = [ScenarioName::Nginx2Hop, ScenarioName::Haproxy2Hop]
                    .iter()
                    .filter_map(|n| find(*n, &point))
                    .map(|s| (s.scenario.as_str().to_string(), lat(s) - lat(direct)))
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                if let Some((peer, peer_added)) = best {
                    let ratio = (peer_added > 0.0).then(|| ours_added / peer_added);
                    if field == "p50" {
                        h.best_peer_p50 = Some(peer);
                        h.added_p50_us = Some((ours_added, peer_added));
                        h.added_p50_ratio = ratio;
                    } else {
                        h.best_peer_p99 = Some(peer);
                        h.added_p99_us = Some((ours_added, peer_added));
                        h.added_p99_ratio = ratio;
                    }
                }
            }
        }
        for s in summaries.iter().filter(|s| s.point == point) {
            let mb = s.peak_rss_bytes as f64 / (1024.0 * 1024.0);
            match s.scenario {
                ScenarioName::Outrigger2Hop => h.outrigger_rss_mb = Some(mb),
                n if n.is_peer() => {
                    h.peer_rss_mb.insert(n.as_str().to_string(), mb);
                }
                _ => {}
            }
        }
    }
    let sat = LoadPoint::Saturation;
    let per_hop = |r: &RunResult| r.cpu_seconds_per_1000() * 1000.0 / f64::from(r.scenario.hops());
    h.cpu_per_hop_ratio = per_repetition_ratio(results, summaries, &sat, &per_hop, &|s| {
        s.cpu_us_per_request_per_hop
    });
    if let Some(rps) = rate {
        let point = LoadPoint::Rate { rps };
        h.p50_ratio = per_repetition_ratio(
            results,
            summaries,
            &point,
            &|r| r.report.latency.p50_us,
            &|s| Some(s.p50_us),
        );
        h.p99_ratio = per_repetition_ratio(
            results,
            summaries,
            &point,
            &|r| r.report.latency.p99_us,
            &|s| Some(s.p99_us),
        );
        h.min_samples_above_p99 = summaries
            .iter()
            .filter(|s| s.point == point)
            .map(|s| s.min_samples_above_p99)
            .min();
    }
    if let Some(ours) =
        find(ScenarioName::Outrigger2Hop, &sat).and_then(Summary::requests_per_cpu_second)
    {
        let best = [ScenarioName::Nginx2Hop, ScenarioName::Haproxy2Hop]
            .iter()
            .filter_map(|n| find(*n, &sat))
            .filter_map(|s| {
                Some((
                    s.scenario.as_str().to_string(),
                    s.requests_per_cpu_second()?,
                ))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((peer, theirs)) = best {
            h.best_peer_cpu = Some(peer);
            h.requests_per_cpu_second = Some((ours, theirs));
            h.cpu_ratio = Some(ours / theirs);
        }
    }
    h
}

impl Headline {
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let rate = self
            .rate_rps
            .map_or("-".to_string(), |r| format!("{r:.0} req/s"));
        if let (Some((ours, theirs)), Some(peer)) = (self.added_p50_us, &self.best_peer_p50) {
            lines.push(format!(
                "added latency p50 at {rate}: outrigger-2hop {ours:.0} µs vs {peer} {theirs:.0} µs → ratio {} (goal ≤ 0.5)",
                fmt_ratio(self.added_p50_ratio)
            ));
        }
        if let (Some((ours, theirs)), Some(peer)) = (self.added_p99_us, &self.best_peer_p99) {
            lines.push(format!(
                "added latency p99 at {rate}: outrigger-2hop {ours:.0} µs vs {peer} {theirs:.0} µs → ratio {} (goal ≤ 0.5)",
                fmt_ratio(self.added_p99_ratio)
            ));
        }
        if let (Some((ours, theirs)), Some(peer)) =
            (self.requests_per_cpu_second, &self.best_peer_cpu)
        {
            lines.push(format!(
                "throughput per proxy CPU-second at saturation: outrigger-2hop {ours:.0} vs {peer} {theirs:.0} → ratio {} (goal ≥ 1.5)",
                fmt_ratio(self.cpu_ratio)
            ));
        }
        if let Some(ratio) = &self.cpu_per_hop_ratio {
            lines.push(format!(
                "proxy CPU per request per hop at saturation: outrigger-2hop {:.1} µs vs {} {:.1} µs → {} (goal ≤ 1.0, aiming at 0.67)",
                ratio.values.0,
                ratio.peer,
                ratio.values.1,
                ratio.text()
            ));
        }
        for (label, ratio) in [("p50", &self.p50_ratio), ("p99", &self.p99_ratio)] {
            if let Some(ratio) = ratio {
                lines.push(format!(
                    "{label} at {rate}: outrigger-2hop {:.0} µs vs {} {:.0} µs → {}{}",
                    ratio.values.0,
                    ratio.peer,
                    ratio.values.1,
                    ratio.text(),
                    if label == "p50" {
                        " (goal ≤ 1.0)"
                    } else {
                        ""
                    }
                ));
            }
        }
        if let Some(samples) = self.min_samples_above_p99 {
            let verdict = if samples >= 100 {
                "enough for a stable p99"
            } else {
                "too few for a stable p99: run longer (--duration)"
            };
            lines.push(format!(
                "p99 at {rate} rests on at least {samples} samples above it per run ({verdict})"
            ));
        }
        if let Some(mb) = self.outrigger_rss_mb {
            let peers: Vec<String> = self
                .peer_rss_mb
                .iter()
                .map(|(n, m)| format!("{n} {m:.1} MB"))
                .collect();
            lines.push(format!(
                "peak RSS per proxy at {rate}: outrigger {mb:.1} MB (goal ≤ 15 MB); {}",
                if peers.is_empty() {
                    "no peers ran".to_string()
                } else {
                    peers.join(", ")
                }
            ));
        }
        if lines.is_empty() {
            lines.push(
                "no headline: it needs direct, outrigger-2hop and a peer scenario at a fixed rate"
                    .to_string(),
            );
        }
        lines
    }
}

fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or("n/a".to_string(), |r| format!("{r:.2}"))
}

pub fn markdown(summaries: &[Summary], headline: &Headline, context: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Outrigger benchmark report\n\n{context}\n\n## Headline\n"
    );
    for line in headline.lines() {
        let _ = writeln!(md, "- {line}");
    }
    let mut current: Option<String> = None;
    for s in summaries {
        let label = s.point.label();
        if current.as_deref() != Some(label.as_str()) {
            let mode = if s.point == LoadPoint::Saturation {
                "closed loop"
            } else {
                "open loop, latency from scheduled send time"
            };
            let _ = writeln!(md, "\n## {label} ({mode})\n");
            let _ = writeln!(
                md,
                "| scenario | req/s | p50 µs (min–max) | p90 µs | p99 µs (min–max) | p99.9 µs | max µs | errors | proxy CPU s / 1000 req | CPU µs / req / hop (min–max) | peak proxy RSS MB | requests |"
            );
            let _ = writeln!(
                md,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            current = Some(label);
        }
        let per_hop = match (s.cpu_us_per_request_per_hop, s.cpu_us_per_hop_range) {
            (Some(m), Some((lo, hi))) => format!("{m:.1} ({lo:.1}–{hi:.1})"),
            _ => "—".to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.0} | {} | {:.4} | {} | {:.1} | {} |",
            s.scenario.as_str(),
            s.throughput,
            s.p50_us,
            s.p50_range_us.0,
            s.p50_range_us.1,
            s.p90_us,
            s.p99_us,
            s.p99_range_us.0,
            s.p99_range_us.1,
            s.p999_us,
            s.max_us,
            s.errors,
            s.cpu_s_per_1000,
            per_hop,
            s.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            s.requests
        );
    }
    let _ = writeln!(
        md,
        "\nMedians over the repetitions, with their spread (min–max); `requests` and `errors` are\n\
         totals. Ratios in the headline are taken within each repetition (the scenarios of one\n\
         repetition run back to back) and summarised over repetitions. Proxy CPU and RSS cover the\n\
         proxies on the scenario's path only (none for `direct`). Plots: `latency-<rate>rps.svg`\n\
         (latency by percentile at each fixed rate), `saturation.svg` (throughput at saturation).\n\
         Raw runs: `results.json`."
    );
    md
}
