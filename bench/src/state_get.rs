//! `outrigger bench --state-get`: the latency of reading one state item through the sidecar
//! (`GET /v1.0/state/statestore/bench`, a `state.redis` component) against reading the same
//! item from Redis directly (`HGET <appId>||bench data`), from the same process, one request
//! at a time. Repetitions alternate the two; medians of the per-run percentiles are reported.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use outrigger_load::{LoadSpec, Mode, Protocol};
use serde::Serialize;

use crate::procs::{free_port, median, start_redis, wait_http_ok, Proc};

pub(crate) struct Settings {
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) repetitions: usize,
    pub(crate) server_cpu: Option<usize>,
    pub(crate) value_bytes: usize,
}

/// One measured run of one path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) path: &'static str,
    pub(crate) repetition: usize,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

const APP_ID: &str = "bench";
const KEY: &str = "bench";

pub(crate) async fn measure(
    exe: &Path,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<Vec<Run>> {
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let (_redis, redis_port) = start_redis(
        &work.join("redis"),
        &logs.join("redis.log"),
        settings.server_cpu,
    )?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))?;
    let mut direct = connect_when_up(&client).await?;

    let resources = work.join("state-resources");
    std::fs::create_dir_all(&resources)?;
    std::fs::write(
        resources.join("statestore.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: 127.0.0.1:{redis_port}\n"
        ),
    )?;
    let http_port = free_port()?;
    let args: Vec<String> = [
        "sidecar",
        "--app-id",
        APP_ID,
        "--no-discovery",
        // One sidecar, no mesh hop: no certificate authority to create.
        "--mtls",
        "off",
        "--threads",
        "1",
        "--log-level",
        "warn",
        "--admin-port",
        "0",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        "--dapr-http-port".into(),
        http_port.to_string(),
        "--mesh-listen-address".into(),
        "127.0.0.1".into(),
        "--mesh-port".into(),
        free_port()?.to_string(),
        "--resources-path".into(),
        resources.display().to_string(),
    ])
    .collect();
    let mut sidecar = Proc::spawn(
        "outrigger sidecar",
        exe,
        &args,
        settings.server_cpu,
        &logs.join("sidecar.log"),
    )?;
    let http_addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_http_ok(
        &mut sidecar,
        http_addr,
        "/v1.0/metadata",
        Duration::from_secs(30),
    )?;

    // The item: a JSON string of the requested size, saved through the sidecar.
    let value = serde_json::Value::String("x".repeat(settings.value_bytes.saturating_sub(2)));
    let body = serde_json::json!([{ "key": KEY, "value": value }]).to_string();
    let mut save = LoadSpec::get(format!("http://{http_addr}/v1.0/state/statestore"));
    save.method = http::Method::POST;
    save.body = body.into();
    save.mode = Mode::ClosedLoop;
    save.connections = 1;
    save.warmup = Duration::ZERO;
    save.duration = Duration::from_millis(50);
    let saved = outrigger_load::run(&save).await?;
    anyhow::ensure!(
        saved.ok > 0 && saved.status_counts.keys().all(|s| *s == 204),
        "seeding the item through the sidecar failed: {:?} {:?}",
        saved.status_counts,
        saved.errors
    );
    let storage_key = format!("{APP_ID}||{KEY}");
    let stored: Vec<u8> = redis::cmd("HGET")
        .arg(&storage_key)
        .arg("data")
        .query_async(&mut direct)
        .await?;
    anyhow::ensure!(
        stored.len() == settings.value_bytes,
        "seeded {} bytes, expected {}",
        stored.len(),
        settings.value_bytes
    );

    let mut runs = Vec::new();
    for repetition in 0..settings.repetitions {
        let mut spec = LoadSpec::get(format!("http://{http_addr}/v1.0/state/statestore/{KEY}"));
        spec.protocol = Protocol::Http1;
        spec.connections = 1;
        spec.mode = Mode::ClosedLoop;
        spec.warmup = settings.warmup;
        spec.duration = settings.duration;
        spec.timeout = Duration::from_secs(10);
        let report = outrigger_load::run(&spec).await?;
        let errors = report.requests - report.status_counts.get(&200).copied().unwrap_or(0);
        runs.push(Run {
            path: "sidecar",
            repetition,
            requests: report.requests,
            errors,
            p50_us: report.latency.p50_us,
            p99_us: report.latency.p99_us,
        });
        runs.push(direct_run(&mut direct, &storage_key, settings, repetition).await?);
    }
    Ok(runs)
}

async fn connect_when_up(
    client: &redis::Client,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("redis-server never accepted connections")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `HGET` the item back to back for the warm-up, then for the measured period.
async fn direct_run(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    settings: &Settings,
    repetition: usize,
) -> anyhow::Result<Run> {
    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut requests, mut errors) = (0u64, 0u64);
    let warm_until = Instant::now() + settings.warmup;
    let end = warm_until + settings.duration;
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let got: redis::RedisResult<Vec<u8>> = redis::cmd("HGET")
            .arg(key)
            .arg("data")
            .query_async(connection)
            .await;
        let elapsed = start.elapsed();
        if start >= warm_until {
            requests += 1;
            match got {
                Ok(v) if v.len() == settings.value_bytes => {
                    histogram.record(elapsed.as_nanos() as u64)?;
                }
                _ => errors += 1,
            }
        }
    }
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Run {
        path: "direct-redis",
        repetition,
        requests,
        errors,
        p50_us: us(0.5),
        p99_us: us(0.99),
    })
}

/// The medians over repetitions: (sidecar p50, p99, direct p50, p99).
pub(crate) fn medians(runs: &[Run]) -> (f64, f64, f64, f64) {
    let of = |path: &str, f: fn(&Run) -> f64| {
        median(runs.iter().filter(|r| r.path == path).map(f).collect())
    };
    (
        of("sidecar", |r| r.p50_us),
        of("sidecar", |r| r.p99_us),
        of("direct-redis", |r| r.p50_us),
        of("direct-redis", |r| r.p99_us),
    )
}

pub(crate) fn markdown(runs: &[Run], command: &str, settings: &Settings) -> String {
    let (s50, s99, d50, d99) = medians(runs);
    let mut out = format!(
        "# State GET: through the sidecar vs direct Redis\n\n\
         - command: `{command}`\n\
         - one client, one request at a time (closed loop, 1 connection), {:?} measured after {:?} warm-up, {} repetitions alternating the two paths\n\
         - sidecar: `GET /v1.0/state/statestore/{KEY}` (state.redis, `--threads 1`); direct: `HGET {APP_ID}||{KEY} data` over one multiplexed redis-rs connection\n\
         - value: {} bytes; Redis and the sidecar pinned to one core, the client to another when pinning is on\n\n\
         | path | p50 (µs) | p99 (µs) |\n|---|---:|---:|\n\
         | direct Redis HGET | {d50:.0} | {d99:.0} |\n\
         | through the sidecar | {s50:.0} | {s99:.0} |\n\
         | ratio sidecar / direct | {:.2} | {:.2} |\n\
         | added by the sidecar | {:.0} | {:.0} |\n\n\
         ## Runs\n\n| repetition | path | requests | errors | p50 (µs) | p99 (µs) |\n|---:|---|---:|---:|---:|---:|\n",
        settings.duration,
        settings.warmup,
        settings.repetitions,
        settings.value_bytes,
        s50 / d50.max(f64::MIN_POSITIVE),
        s99 / d99.max(f64::MIN_POSITIVE),
        s50 - d50,
        s99 - d99,
    );
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} |\n",
            r.repetition, r.path, r.requests, r.errors, r.p50_us, r.p99_us
        ));
    }
    out
}
