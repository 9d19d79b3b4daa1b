//! `outrigger bench` end to end, tiny: every scenario (direct, Outrigger 1 and 2 hops on one
//! and on the default worker threads, 2 hops over mTLS, nginx and haproxy 2 hops) really runs, and the report, raw results and plots are written. Counts and
//! presence only — performance is never asserted in tests.

mod support;

use std::process::Command;

use serde_json::Value;
use support::outrigger_bin;

const SCENARIOS: [&str; 9] = [
    "direct",
    "outrigger-1hop",
    "outrigger-2hop",
    "outrigger-2hop-mt",
    "outrigger-2hop-mtls",
    "nginx-2hop",
    "haproxy-2hop",
    "nginx-2hop-tls",
    "haproxy-2hop-tls",
];

#[test]
fn a_tiny_bench_run_reports_every_scenario_with_nonzero_counts() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(outrigger_bin())
        .args(["bench", "--out"])
        .arg(out.path())
        .args([
            "--duration",
            "400ms",
            "--warmup",
            "100ms",
            "--repetitions",
            "1",
        ])
        .args(["--rates", "200", "--connections", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("added latency p50 at 200 req/s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("throughput per proxy CPU-second at saturation"),
        "{stdout}"
    );
    for line in [
        "proxy CPU per request per hop at saturation: outrigger-2hop ",
        "p50 at 200 req/s: outrigger-2hop ",
        "p99 at 200 req/s: outrigger-2hop ",
        "samples above it per run (too few for a stable p99",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }

    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for section in ["## saturation (closed loop)", "## 200 req/s (open loop"] {
        assert!(report.contains(section), "missing {section}:\n{report}");
    }
    for scenario in SCENARIOS {
        assert!(
            report.contains(&format!("| {scenario} |")),
            "missing {scenario}:\n{report}"
        );
    }

    let results: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let summaries = results["summaries"].as_array().unwrap();
    // saturation, 200 req/s and half of the best peer's saturation rate, for every scenario
    assert_eq!(summaries.len(), 3 * SCENARIOS.len(), "{results:#}");
    for summary in summaries {
        let name = summary["scenario"].as_str().unwrap();
        assert!(SCENARIOS.contains(&name), "{name}");
        assert!(
            summary["requests"].as_u64().unwrap() > 0,
            "no requests: {summary}"
        );
        assert_eq!(summary["errors"].as_u64().unwrap(), 0, "errors: {summary}");
        assert!(summary["throughput"].as_f64().unwrap() > 0.0, "{summary}");
        if name != "direct" {
            assert!(
                summary["peak_rss_bytes"].as_u64().unwrap() > 0,
                "no RSS sampled: {summary}"
            );
        }
    }
    for plot in ["latency-200rps.svg", "saturation.svg"] {
        let svg = std::fs::read_to_string(out.path().join(plot)).unwrap();
        assert!(svg.starts_with("<svg"), "{plot} is not an SVG");
    }
}

#[test]
fn a_tiny_convergence_run_reports_every_size() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(outrigger_bin())
        .args(["bench", "--convergence", "2,5", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(out.path().join("convergence.md")).unwrap();
    for size in ["| 2 |", "| 5 |"] {
        assert!(report.contains(size), "missing {size}:\n{report}");
    }
}

#[test]
fn a_tiny_state_get_run_compares_the_sidecar_with_direct_redis() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(outrigger_bin())
        .args([
            "bench",
            "--state-get",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
        ])
        .args(["--repetitions", "2", "--body-bytes", "256", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("state-get.json")).unwrap()).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 4, "two repetitions of two paths: {runs:?}");
    for run in runs {
        assert!(run["requests"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
        assert!(run["p50_us"].as_f64().unwrap() > 0.0, "{run}");
    }
    let report = std::fs::read_to_string(out.path().join("state-get.md")).unwrap();
    assert!(report.contains("| ratio sidecar / direct |"), "{report}");
}

#[test]
fn a_tiny_pubsub_run_compares_the_sidecar_with_a_direct_producer_and_times_deliveries() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(outrigger_bin())
        .args(["bench", "--pubsub", "--duration", "1s", "--warmup", "200ms"])
        .args(["--repetitions", "1", "--connections", "4", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("pubsub.json")).unwrap()).unwrap();
    let throughput = results["throughput"].as_array().unwrap();
    let paths: Vec<&str> = throughput
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["sidecar", "direct-rdkafka"], "{results}");
    for run in throughput {
        assert!(run["published"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
    }
    let latency = results["latency"].as_array().unwrap();
    let paths: Vec<(&str, &str)> = latency
        .iter()
        .map(|r| (r["broker"].as_str().unwrap(), r["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            ("redis", "sidecar"),
            ("redis", "direct"),
            ("kafka", "sidecar"),
            ("kafka", "direct")
        ],
        "{results}"
    );
    for run in latency {
        assert!(run["delivered"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["late"], 0, "{run}");
        assert!(run["p50_us"].as_f64().unwrap() > 0.0, "{run}");
    }
    let report = std::fs::read_to_string(out.path().join("pubsub.md")).unwrap();
    assert!(report.contains("| ratio sidecar / direct |"), "{report}");
    assert!(report.contains("| Kafka (tansu) | "), "{report}");
    assert!(report.contains("| Redis Streams | "), "{report}");
}

#[test]
fn a_tiny_resilience_run_reports_every_policy_around_a_bad_instance() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(outrigger_bin())
        .args([
            "bench",
            "--resilience",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ])
        .args([
            "--repetitions",
            "1",
            "--rates",
            "100",
            "--connections",
            "4",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("resilience.json")).unwrap())
            .unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 6, "{runs:?}");
    for run in runs {
        assert!(run["requests"].as_u64().unwrap() > 0, "{run}");
        assert!(run["p50_us"].as_f64().unwrap() > 0.0, "{run}");
    }
    let with_retries = runs
        .iter()
        .find(|r| r["policy"] == "round robin + retries")
        .unwrap();
    assert_eq!(
        with_retries["failed"], 0,
        "retries cover a 50 % failing instance: {with_retries}"
    );
    let report = std::fs::read_to_string(out.path().join("resilience.md")).unwrap();
    assert!(report.contains("| slow | peak EWMA |"), "{report}");
}
