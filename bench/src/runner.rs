//! The run plan: every scenario at saturation (closed loop), then at each fixed rate (open
//! loop) — 1000 req/s and half of the best peer's saturation throughput by default — each
//! repeated, with scenarios interleaved within every repetition so slow drifts of a shared
//! machine hit them all alike. Each run records the load report plus the proxies' CPU time
//! and peak RSS from /proc.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outrigger_load::{LoadReport, LoadSpec, Mode, Protocol};
use serde::Serialize;

use crate::procs::{cpu_seconds, rss_bytes};
use crate::scenario::{Scenario, ScenarioName};

pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub repetitions: usize,
    pub connections: usize,
    /// Fixed open-loop rates, in requests per second.
    pub rates: Vec<f64>,
    /// Also run at half of the best peer's saturation throughput.
    pub half_peer_saturation: bool,
    pub skip_saturation: bool,
}

/// Where on the load curve a run sits.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LoadPoint {
    Saturation,
    Rate { rps: f64 },
}

impl LoadPoint {
    pub fn label(&self) -> String {
        match self {
            LoadPoint::Saturation => "saturation".to_string(),
            LoadPoint::Rate { rps } => format!("{rps:.0} req/s"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: ScenarioName,
    pub point: LoadPoint,
    pub repetition: usize,
    pub report: LoadReport,
    /// CPU seconds the scenario's proxies used during the measured period.
    pub proxy_cpu_seconds: f64,
    /// Peak RSS of each proxy process during the run, bytes.
    pub proxy_peak_rss: Vec<u64>,
}

impl RunResult {
    pub fn cpu_seconds_per_1000(&self) -> f64 {
        if self.report.requests == 0 {
            return 0.0;
        }
        self.proxy_cpu_seconds * 1000.0 / self.report.requests as f64
    }

    pub fn max_rss(&self) -> u64 {
        self.proxy_peak_rss.iter().copied().max().unwrap_or(0)
    }
}

pub async fn run_all(
    scenarios: &[Scenario],
    settings: &Settings,
) -> anyhow::Result<Vec<RunResult>> {
    let mut results = Vec::new();
    let total_points = settings.rates.len()
        + usize::from(!settings.skip_saturation)
        + usize::from(settings.half_peer_saturation);
    let total = total_points * settings.repetitions * scenarios.len();
    let mut done = 0;

    let mut points: Vec<LoadPoint> = settings
        .rates
        .iter()
        .map(|rps| LoadPoint::Rate { rps: *rps })
        .collect();
    if !settings.skip_saturation {
        points.insert(0, LoadPoint::Saturation);
    }
    let mut index = 0;
    while index < points.len() {
        let point = points[index].clone();
        for repetition in 0..settings.repetitions {
            for scenario in scenarios {
                done += 1;
                let result = run_one(scenario, &point, repetition, settings).await?;
                eprintln!(
                    "[{done}/{total}] {:<15} {:<13} rep {}: {:>9.0} req/s  p50 {:>8.0} µs  p99 {:>8.0} µs  errors {}",
                    scenario.name.as_str(),
                    point.label(),
                    repetition + 1,
                    result.report.throughput,
                    result.report.latency.p50_us,
                    result.report.latency.p99_us,
                    result.report.errors.values().sum::<u64>()
                );
                results.push(result);
            }
        }
        if point == LoadPoint::Saturation && settings.half_peer_saturation {
            if let Some(rate) = half_of_best_peer(&results) {
                points.push(LoadPoint::Rate {
                    rps: rate.round().max(1.0),
                });
            }
        }
        index += 1;
    }
    Ok(results)
}

/// Half of the best peer's median saturation throughput (or of the best proxy scenario's when
/// no peer ran).
fn half_of_best_peer(results: &[RunResult]) -> Option<f64> {
    let mut by_scenario: BTreeMap<ScenarioName, Vec<f64>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.point == LoadPoint::Saturation) {
        by_scenario
            .entry(r.scenario)
            .or_default()
            .push(r.report.throughput);
    }
    let medians = |peers: bool| {
        by_scenario
            .iter()
            .filter(|(name, _)| {
                if peers {
                    name.is_peer()
                } else {
                    **name != ScenarioName::Direct
                }
            })
            .map(|(_, v)| median(v.clone()))
            .fold(None, |best: Option<f64>, m| {
                Some(best.map_or(m, |b| b.max(m)))
            })
    };
    medians(true)
        .or_else(|| medians(false))
        .map(|best| best / 2.0)
}

async fn run_one(
    scenario: &Scenario,
    point: &LoadPoint,
    repetition: usize,
    settings: &Settings,
) -> anyhow::Result<RunResult> {
    let mut spec = LoadSpec::get(scenario.url.clone());
    spec.protocol = Protocol::Http1;
    spec.connections = settings.connections;
    spec.timeout = Duration::from_secs(10);
    spec.mode = match point {
        LoadPoint::Saturation => Mode::ClosedLoop,
        LoadPoint::Rate { rps } => Mode::OpenLoop { rate: *rps },
    };
    // Warm up as a separate run so that the CPU accounting below covers the measured period only.
    if !settings.warmup.is_zero() {
        let mut warm = spec.clone();
        warm.duration = settings.warmup;
        warm.warmup = Duration::ZERO;
        outrigger_load::run(&warm).await?;
    }
    spec.duration = settings.duration;
    spec.warmup = Duration::ZERO;

    let pids = scenario.proxy_pids.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let pids = pids.clone();
        std::thread::spawn(move || {
            let mut peaks = vec![0u64; pids.len()];
            while !stop.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(rss_bytes(*pid));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peaks
        })
    };
    let cpu_before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let report = outrigger_load::run(&spec).await;
    let cpu_after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    stop.store(true, Ordering::Relaxed);
    let proxy_peak_rss = sampler.join().unwrap_or_default();
    Ok(RunResult {
        scenario: scenario.name,
        point: point.clone(),
        repetition,
        report: report?,
        proxy_cpu_seconds: (cpu_after - cpu_before).max(0.0),
        proxy_peak_rss,
    })
}

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
