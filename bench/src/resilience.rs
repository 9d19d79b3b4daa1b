//! `outrigger bench --resilience`: three instances of an app behind their sidecars, one of
//! them misbehaving, called through a caller's sidecar at a fixed open-loop rate:
//!
//! - **slow** (+20 ms on every answer): round robin, least-request and peak-EWMA;
//! - **failing** (every other answer a 503): round robin without a retry policy, and round
//!   robin and peak-EWMA with one (`constant 5ms, maxRetries 2`), outlier detection on.
//!
//! For each: p50/p99 latency, the share of calls that failed, and the share the bad instance
//! served (from the caller's `/clusters`). Repetitions alternate the policies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use outrigger_load::{LoadSpec, Mode, Protocol};
use serde::Serialize;

use crate::procs::{free_port, median, start_sidecar, Proc, Sidecar, SidecarSpec};

pub(crate) struct Settings {
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) repetitions: usize,
    pub(crate) connections: usize,
    pub(crate) rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) case: &'static str,
    pub(crate) policy: &'static str,
    pub(crate) repetition: usize,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    /// The share of the calls the misbehaving instance was sent (attempts, retries included).
    pub(crate) bad_share: f64,
}

/// (case, policy, loadBalancer, with a retry policy)
const PLANS: &[(&str, &str, &str, bool)] = &[
    ("slow", "round robin", "roundRobin", false),
    ("slow", "least request", "leastRequest", false),
    ("slow", "peak EWMA", "peakEwma", false),
    ("failing", "round robin", "roundRobin", false),
    ("failing", "round robin + retries", "roundRobin", true),
    ("failing", "peak EWMA + retries", "peakEwma", true),
];

struct Caller {
    policy: &'static str,
    sidecar: Sidecar,
}

pub(crate) async fn measure(
    exe: &Path,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<Vec<Run>> {
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut runs = Vec::new();
    for case in ["slow", "failing"] {
        let misbehaviour: Vec<String> = match case {
            "slow" => vec!["--upstream-delay-ms".into(), "20".into()],
            _ => vec!["--upstream-fail-every".into(), "2".into()],
        };
        // The three instances of b: an upstream app and its sidecar each; the third misbehaves.
        let mut upstreams = Vec::new();
        let mut meshes = Vec::new();
        for i in 0..3 {
            let port = free_port()?;
            let mut args = vec![
                "bench".to_string(),
                "--serve-upstream".into(),
                port.to_string(),
            ];
            if i == 2 {
                args.extend(misbehaviour.iter().cloned());
            }
            let app = Proc::spawn(
                &format!("upstream b-{i}"),
                exe,
                &args,
                None,
                &logs.join(format!("{case}-upstream-{i}.log")),
            )?;
            let sidecar = start_sidecar(
                exe,
                &SidecarSpec {
                    app_id: "b",
                    app_port: Some(port),
                    resources: None,
                    log: &logs.join(format!("{case}-b-{i}.log")),
                    cpu: None,
                    extra: &["--log-level", "error"],
                },
            )?;
            meshes.push(sidecar.mesh);
            upstreams.push((app, sidecar));
        }
        let bad = meshes[2];
        let mut callers = Vec::new();
        for &(plan_case, policy, balancer, retries) in PLANS {
            if plan_case != case {
                continue;
            }
            let resources = work.join(format!("{case}-{balancer}-{retries}"));
            std::fs::create_dir_all(&resources)?;
            let endpoints: Vec<String> = meshes
                .iter()
                .map(|m| format!("{{address: \"{m}\"}}"))
                .collect();
            let mut yaml = format!(
                "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: b}}\nspec:\n  loadBalancer: {balancer}\n  endpoints: [{}]\n",
                endpoints.join(", ")
            );
            if retries {
                yaml.push_str("---\napiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: calls}\nspec:\n  policies:\n    retries:\n      quick: {policy: constant, duration: 5ms, maxRetries: 2}\n  targets:\n    apps:\n      b: {retry: quick}\n");
            }
            std::fs::write(resources.join("mesh.yaml"), yaml)?;
            let sidecar = start_sidecar(
                exe,
                &SidecarSpec {
                    app_id: "a",
                    app_port: None,
                    resources: Some(&resources),
                    log: &logs.join(format!("{case}-a-{balancer}-{retries}.log")),
                    cpu: None,
                    extra: &["--log-level", "error"],
                },
            )?;
            callers.push(Caller { policy, sidecar });
        }
        for repetition in 0..settings.repetitions {
            for caller in &callers {
                let before = endpoint_requests(caller.sidecar.admin)?;
                let mut spec = LoadSpec::get(format!(
                    "http://{}/v1.0/invoke/b/method/x",
                    caller.sidecar.http
                ));
                spec.protocol = Protocol::Http1;
                spec.connections = settings.connections;
                spec.mode = Mode::OpenLoop {
                    rate: settings.rate,
                };
                spec.warmup = settings.warmup;
                spec.duration = settings.duration;
                spec.timeout = Duration::from_secs(10);
                let report = outrigger_load::run(&spec).await?;
                let after = endpoint_requests(caller.sidecar.admin)?;
                let sent = |addr: &SocketAddr| {
                    let key = addr.to_string();
                    after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0)
                };
                let total: u64 = meshes.iter().map(sent).sum();
                let ok = report.status_counts.get(&200).copied().unwrap_or(0);
                runs.push(Run {
                    case,
                    policy: caller.policy,
                    repetition,
                    requests: report.requests,
                    failed: report.requests - ok,
                    p50_us: report.latency.p50_us,
                    p99_us: report.latency.p99_us,
                    bad_share: sent(&bad) as f64 / (total.max(1)) as f64,
                });
            }
        }
        drop(callers);
        drop(upstreams);
    }
    Ok(runs)
}

/// Requests each endpoint was sent so far, from the caller's `/clusters`.
fn endpoint_requests(admin: SocketAddr) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /clusters HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no body in /clusters")?;
    let json: serde_json::Value = serde_json::from_str(body).context("/clusters is not JSON")?;
    Ok(json["endpoints"]
        .as_array()
        .map(|endpoints| {
            endpoints
                .iter()
                .filter_map(|e| Some((e["address"].as_str()?.to_string(), e["requests"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// One line per (case, policy): medians over the repetitions.
pub(crate) fn summary(runs: &[Run]) -> Vec<String> {
    PLANS
        .iter()
        .map(|&(case, policy, _, _)| {
            let of = |f: fn(&Run) -> f64| {
                median(
                    runs.iter()
                        .filter(|r| r.case == case && r.policy == policy)
                        .map(f)
                        .collect(),
                )
            };
            format!(
                "| {case} | {policy} | {:.1} | {:.1} | {:.2} % | {:.1} % |",
                of(|r| r.p50_us) / 1000.0,
                of(|r| r.p99_us) / 1000.0,
                of(|r| r.failed as f64 * 100.0 / r.requests.max(1) as f64),
                of(|r| r.bad_share * 100.0),
            )
        })
        .collect()
}

pub(crate) fn markdown(runs: &[Run], command: &str, settings: &Settings) -> String {
    let mut out = format!(
        "# Resilience: balancing and retries around a bad instance\n\n\
         - command: `{command}`\n\
         - three instances of b (an upstream app behind its own sidecar each); the third adds 20 ms to every answer (`slow`) or answers every other call with 503 (`failing`)\n\
         - a caller's sidecar per policy (cluster b with that `loadBalancer`; `+ retries`: a Resiliency retry policy `constant 5ms, maxRetries 2`); outlier detection is always on\n\
         - open loop at {} requests/s over {} connections, {:?} measured after {:?} warm-up, {} repetitions alternating the policies; medians\n\n\
         | case | policy | p50 (ms) | p99 (ms) | failed | sent to the bad instance |\n|---|---|---:|---:|---:|---:|\n",
        settings.rate, settings.connections, settings.duration, settings.warmup, settings.repetitions
    );
    for line in summary(runs) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("\n## Runs\n\n| case | policy | repetition | requests | failed | p50 (µs) | p99 (µs) | bad share |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.3} |\n",
            r.case, r.policy, r.repetition, r.requests, r.failed, r.p50_us, r.p99_us, r.bad_share
        ));
    }
    out
}
