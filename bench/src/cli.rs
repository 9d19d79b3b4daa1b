//! `outrigger bench [SCENARIO…] --out DIR`: start everything, run the plan, write the report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::procs::{cpu_count, pin_current_thread};
use crate::runner::{run_all, Settings};
use crate::scenario::{ScenarioName, Topology};
use crate::{peers, plot, report, upstream};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Scenarios to run [default: all]: direct, outrigger-1hop, outrigger-2hop, nginx-2hop, haproxy-2hop
    #[arg(value_enum)]
    scenarios: Vec<ScenarioName>,
    /// Where the report (report.md), raw results (results.json), plots (*.svg) and logs go
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Measured time per run (12 s at 1000 req/s puts 120 samples above p99)
    #[arg(long, default_value = "12s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each run
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Repetitions of every scenario at every load point (medians are reported)
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Client connections
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Fixed open-loop rates in requests per second, comma separated
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    rates: Vec<f64>,
    /// Skip the extra rate at half of the best peer's saturation throughput
    #[arg(long)]
    no_half_peer_rate: bool,
    /// Skip the closed-loop saturation runs
    #[arg(long)]
    no_saturation: bool,
    /// Response body size of the upstream app, bytes
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Do not pin the load generator and the servers to separate cores
    #[arg(long)]
    no_pin: bool,
    /// Do not apt-get install nginx/haproxy when missing
    #[arg(long)]
    no_install: bool,
    /// Instead of the scenarios: measure control-plane convergence for these numbers of
    /// simulated sidecars (e.g. 10,100,1000) and write convergence.md
    #[arg(long, value_delimiter = ',', value_name = "N,N,…")]
    convergence: Vec<usize>,
    /// Instead of the scenarios: measure a state GET through a sidecar (state.redis) against
    /// a direct Redis HGET of the same item, and write state-get.md (--body-bytes sets the
    /// value size)
    #[arg(long)]
    state_get: bool,
    /// Instead of the scenarios: measure Kafka publish throughput through a sidecar against a
    /// direct rdkafka producer (--connections publishes in flight, --body-bytes payloads), and
    /// publish → delivery latency through two sidecars on Redis Streams and Kafka; writes
    /// pubsub.md (needs redis-server and tansu)
    #[arg(long)]
    pubsub: bool,
    /// Instead of the scenarios: three instances of an app, one slow (+20 ms) and then one
    /// failing every other call — p50/p99 and errors through a sidecar for round robin,
    /// least-request and peak-EWMA, and with and without retries; writes resilience.md
    #[arg(long)]
    resilience: bool,
    /// Internal: serve the upstream app on this port and never return
    #[arg(long, hide = true)]
    serve_upstream: Option<u16>,
    /// Internal: the served upstream adds this many milliseconds to every answer
    #[arg(long, hide = true, default_value_t = 0)]
    upstream_delay_ms: u64,
    /// Internal: the served upstream answers every n-th call with 503
    #[arg(long, hide = true, default_value_t = 0)]
    upstream_fail_every: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; expected e.g. 500ms, 10s, 1m"))
}

pub fn run(args: BenchArgs) -> ExitCode {
    if let Some(port) = args.serve_upstream {
        let misbehaviour = upstream::Misbehaviour {
            delay: Duration::from_millis(args.upstream_delay_ms),
            fail_every: args.upstream_fail_every,
        };
        return match upstream::serve_with(port, args.body_bytes, misbehaviour) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upstream: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outrigger bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if !args.convergence.is_empty() {
        return convergence(&args);
    }
    if args.state_get {
        return state_get(&args);
    }
    if args.pubsub {
        return pubsub(&args);
    }
    if args.resilience {
        return resilience(&args);
    }
    let mut scenarios = if args.scenarios.is_empty() {
        ScenarioName::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    scenarios.sort();
    scenarios.dedup();
    if scenarios.iter().any(|s| s.is_peer()) && !args.no_install {
        peers::ensure_installed()?;
    }
    anyhow::ensure!(args.repetitions >= 1, "--repetitions must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(
        args.rates.iter().all(|r| *r > 0.0),
        "--rates must be positive"
    );

    let (cpus, server_cpu) = pin_generator(&args);
    let OutputDirs { out, work, exe } = OutputDirs::create(&args.out)?;

    let topology = Topology::start(&scenarios, &exe, &work, server_cpu, args.body_bytes)?;
    let settings = Settings {
        duration: args.duration,
        warmup: args.warmup,
        repetitions: args.repetitions,
        connections: args.connections,
        rates: args.rates.clone(),
        half_peer_saturation: !args.no_half_peer_rate && !args.no_saturation,
        skip_saturation: args.no_saturation,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(run_all(&topology.scenarios, &settings))?;
    drop(topology);

    let summaries = report::summarise(&results);
    let headline = report::headline(&results, &summaries);
    let context = context_text(&args, server_cpu.is_some(), cpus);
    std::fs::write(
        out.join("report.md"),
        report::markdown(&summaries, &headline, &context),
    )?;
    let raw = serde_json::json!({ "context": context, "headline": headline, "summaries": summaries, "runs": results });
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&raw)?)?;
    let plots = plot::write_all(&summaries, &out)?;

    println!(
        "outrigger bench: report in {}",
        out.join("report.md").display()
    );
    for plot in plots {
        println!("  plot: {}", plot.display());
    }
    for line in headline.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// The report directory (created), its `work` subdirectory and this binary.
struct OutputDirs {
    out: PathBuf,
    work: PathBuf,
    exe: PathBuf,
}

impl OutputDirs {
    fn create(out: &Path) -> anyhow::Result<OutputDirs> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let out = out.canonicalize()?;
        let work = out.join("work");
        std::fs::create_dir_all(&work)?;
        let exe = std::env::current_exe().context("finding the outrigger binary")?;
        Ok(OutputDirs { out, work, exe })
    }
}

/// Pins this process (the load generator) to core 0 unless `--no-pin` or one core; servers
/// then go on core 1 and compete only with their own kind, which keeps runs comparable on a
/// small shared machine. Returns the CPU count (read before pinning narrows it) and the
/// servers' core.
fn pin_generator(args: &BenchArgs) -> (usize, Option<usize>) {
    let cpus = cpu_count();
    let pin = !args.no_pin && cpus >= 2;
    if pin {
        pin_current_thread(0);
    }
    (cpus, pin.then_some(1))
}

fn context_text(args: &BenchArgs, pinned: bool, cpus: usize) -> String {
    let command: Vec<String> = std::env::args().collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "- date: {}\n- command: `{}`\n- machine: {} CPUs ({cpu}), Linux {}\n- settings: {} connections, HTTP/1.1 client, {:?} measured + {:?} warm-up per run, {} repetitions, {}-byte responses\n- pinning: {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        command.join(" "),
        cpus,
        kernel.trim(),
        args.connections,
        args.duration,
        args.warmup,
        args.repetitions,
        args.body_bytes,
        if pinned { "load generator on CPU 0, every server on CPU 1" } else { "none" }
    )
}

fn convergence(args: &BenchArgs) -> anyhow::Result<()> {
    // Each simulated sidecar holds a connection (two descriptors on this host): lift the soft
    // open-files limit to the hard one, inherited by the control plane we start.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let OutputDirs { out, work, exe } = OutputDirs::create(&args.out)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for &n in &args.convergence {
        let result = runtime.block_on(crate::convergence::measure(&exe, &work, n))?;
        println!(
            "{:>5} sidecars: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  control-plane CPU {:.3} s  RSS {:.1} MB",
            result.sidecars, result.p50_ms, result.p99_ms, result.max_ms, result.cpu_seconds, result.rss_mb
        );
        results.push(result);
    }
    let command: Vec<String> = std::env::args().collect();
    std::fs::write(
        out.join("convergence.md"),
        crate::convergence::markdown(&results, &command.join(" ")),
    )?;
    println!(
        "outrigger bench: convergence report in {}",
        out.join("convergence.md").display()
    );
    Ok(())
}

fn state_get(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.repetitions >= 1, "--repetitions must be at least 1");
    let (_, server_cpu) = pin_generator(args);
    let OutputDirs { out, work, exe } = OutputDirs::create(&args.out)?;
    let settings = crate::state_get::Settings {
        duration: args.duration,
        warmup: args.warmup,
        repetitions: args.repetitions,
        server_cpu,
        value_bytes: args.body_bytes.max(2),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runs = runtime.block_on(crate::state_get::measure(&exe, &work, &settings))?;
    let command: Vec<String> = std::env::args().collect();
    std::fs::write(
        out.join("state-get.md"),
        crate::state_get::markdown(&runs, &command.join(" "), &settings),
    )?;
    std::fs::write(
        out.join("state-get.json"),
        serde_json::to_vec_pretty(&runs)?,
    )?;
    let (s50, s99, d50, d99) = crate::state_get::medians(&runs);
    println!(
        "outrigger bench: state GET report in {}",
        out.join("state-get.md").display()
    );
    println!("  direct Redis HGET    p50 {d50:.0} µs  p99 {d99:.0} µs");
    println!("  through the sidecar  p50 {s50:.0} µs  p99 {s99:.0} µs");
    println!(
        "  ratio p50 {:.2}  p99 {:.2}  added p50 {:.0} µs",
        s50 / d50.max(f64::MIN_POSITIVE),
        s99 / d99.max(f64::MIN_POSITIVE),
        s50 - d50
    );
    Ok(())
}

fn pubsub(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.repetitions >= 1, "--repetitions must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    let OutputDirs { out, work, exe } = OutputDirs::create(&args.out)?;
    let settings = crate::pubsub::Settings {
        duration: args.duration,
        warmup: args.warmup,
        repetitions: args.repetitions,
        in_flight: args.connections,
        payload_bytes: args.body_bytes.max(2),
    };
    // Two worker threads: the direct producer's side runs in this process and should not be
    // starved next to the in-process subscriber app.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = runtime.block_on(crate::pubsub::measure(&exe, &work, &settings))?;
    let command: Vec<String> = std::env::args().collect();
    std::fs::write(
        out.join("pubsub.md"),
        crate::pubsub::markdown(&results, &command.join(" "), &settings),
    )?;
    std::fs::write(
        out.join("pubsub.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let (sidecar, direct) = crate::pubsub::throughput_medians(&results);
    println!(
        "outrigger bench: pub/sub report in {}",
        out.join("pubsub.md").display()
    );
    println!("  Kafka publishes/s: direct rdkafka {direct:.0}  through the sidecar {sidecar:.0}  ratio {:.2}", sidecar / direct.max(f64::MIN_POSITIVE));
    for (broker, label) in [("redis", "Redis Streams"), ("kafka", "Kafka")] {
        let (d50, d99) = crate::pubsub::latency_medians(&results, broker, "direct");
        let (s50, s99) = crate::pubsub::latency_medians(&results, broker, "sidecar");
        println!("  publish -> delivery, {label}: direct p50 {d50:.0} µs p99 {d99:.0} µs; through two sidecars p50 {s50:.0} µs p99 {s99:.0} µs");
    }
    Ok(())
}

fn resilience(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.repetitions >= 1, "--repetitions must be at least 1");
    let OutputDirs { out, work, exe } = OutputDirs::create(&args.out)?;
    let settings = crate::resilience::Settings {
        duration: args.duration,
        warmup: args.warmup,
        repetitions: args.repetitions,
        connections: args.connections,
        rate: args.rates.first().copied().unwrap_or(1000.0).min(500.0),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let runs = runtime.block_on(crate::resilience::measure(&exe, &work, &settings))?;
    let command: Vec<String> = std::env::args().collect();
    std::fs::write(
        out.join("resilience.md"),
        crate::resilience::markdown(&runs, &command.join(" "), &settings),
    )?;
    std::fs::write(
        out.join("resilience.json"),
        serde_json::to_vec_pretty(&runs)?,
    )?;
    println!(
        "outrigger bench: resilience report in {}",
        out.join("resilience.md").display()
    );
    for line in crate::resilience::summary(&runs) {
        println!("  {line}");
    }
    Ok(())
}
