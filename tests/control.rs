//! The control plane pushing routes to real sidecars: route swaps under load with zero failed
//! requests, NACKs for a configuration the sidecars refuse (and recovery when it is fixed),
//! and the data path surviving the control plane's death.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Replaces the route file atomically (write + rename), as an editor or a deploy tool would.
fn write_route(dir: &Path, cluster: &str) {
    let yaml = format!("apiVersion: outrigger.dev/v1alpha1\nkind: Route\nmetadata: {{name: b}}\nspec:\n  app: b\n  backends: [{{cluster: {cluster}}}]\n");
    let tmp = dir.join(".route.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("route.yaml")).unwrap();
}

struct Setup {
    _backends: TwoVersions,
    config: tempfile::TempDir,
    control: ControlProc,
    a: SidecarProc,
}

fn setup() -> Setup {
    let backends = TwoVersions::start();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("clusters.yaml"),
        backends.clusters_yaml(),
    )
    .unwrap();
    write_route(config.path(), "b-v1");
    let control = start_control(config.path());
    let a = SidecarBuilder::new("a", backends.registry.path())
        .arg("--no-discovery")
        .arg("--control-plane")
        .arg(&format!("http://{}", control.listen))
        .start();
    Setup {
        _backends: backends,
        config,
        control,
        a,
    }
}

/// Which app answers a call from a to b right now ("" when the call fails).
async fn served_by(http: &reqwest::Client, a: &SidecarProc) -> String {
    match http.get(a.url("/v1.0/invoke/b/method/probe")).send().await {
        Ok(r) if r.status() == 200 => r.headers()["x-echo-app"].to_str().unwrap().to_string(),
        _ => String::new(),
    }
}

/// Polls until calls are served by `app`; bounded so a broken push fails the test.
async fn until_served_by(http: &reqwest::Client, a: &SidecarProc, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if served_by(http, a).await == app {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("calls never reached {app}");
}

async fn sidecar_a(control: &ControlProc) -> Value {
    let sidecars: Value = support::get_json(format!("http://{}/sidecars", control.admin)).await;
    sidecars
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app_id"] == "a")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Calls b through a from `workers` loops until stopped; counts successes and failures.
fn steady_load(
    a: &SidecarProc,
    workers: usize,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let handles = (0..workers)
        .map(|_| {
            let (stop, ok, failed, url) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                a.url("/v1.0/invoke/b/method/load"),
            );
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    (stop, ok, failed, handles)
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_route_swaps_under_load_fail_no_request() {
    let setup = setup();
    let http = client();
    until_served_by(&http, &setup.a, "b-v1").await;
    let (stop, ok, failed, workers) = steady_load(&setup.a, 4);
    for swap in 0..50 {
        let (cluster, app) = if swap % 2 == 0 {
            ("b-v2", "b-v2")
        } else {
            ("b-v1", "b-v1")
        };
        write_route(setup.config.path(), cluster);
        until_served_by(&http, &setup.a, app).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load to mean anything: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during route swaps"
    );
    let a = sidecar_a(&setup.control).await;
    assert!(a["last_nack"].is_null(), "{a}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_cluster_is_nacked_traffic_stays_on_the_last_good_route_and_a_fix_clears_it() {
    let setup = setup();
    let http = client();
    until_served_by(&http, &setup.a, "b-v1").await;
    write_route(setup.config.path(), "b-v9");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut nack = Value::Null;
    while Instant::now() < deadline && nack.is_null() {
        nack = sidecar_a(&setup.control).await["last_nack"].clone();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        nack["type_url"], "type.outrigger.dev/mesh.v1.Route",
        "{nack}"
    );
    assert_eq!(
        nack["message"],
        "route \"b\": rules[0].backends[0].cluster: unknown cluster \"b-v9\""
    );
    for _ in 0..10 {
        assert_eq!(
            served_by(&http, &setup.a).await,
            "b-v1",
            "traffic left the last good route"
        );
    }
    write_route(setup.config.path(), "b-v2");
    until_served_by(&http, &setup.a, "b-v2").await;
    assert!(sidecar_a(&setup.control).await["last_nack"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_control_plane_under_load_fails_no_request_and_a_restart_reconverges() {
    let mut setup = setup();
    let http = client();
    until_served_by(&http, &setup.a, "b-v1").await;
    let (stop, ok, failed, workers) = steady_load(&setup.a, 4);
    setup.control.proc.signal(nix::sys::signal::Signal::SIGKILL);
    setup.control.proc.wait_exit(Duration::from_secs(10));
    let before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before + 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The route changes while the control plane is away, then it comes back on the same port.
    write_route(setup.config.path(), "b-v2");
    let mut command = Command::new(outrigger_bin());
    command
        .args(["control", "--config-dir"])
        .arg(setup.config.path())
        .args([
            "--listen",
            &setup.control.listen.to_string(),
            "--admin",
            "127.0.0.1:0",
        ]);
    let (restarted, line) = spawn_until("control plane (restarted)", command, |l| {
        l.contains("control plane listening")
    });
    until_served_by(&http, &setup.a, "b-v2").await;
    // The sidecar re-registered with the new control plane and acknowledged its route.
    let restarted = ControlProc {
        proc: restarted,
        listen: field(&line, "listen"),
        admin: field(&line, "admin"),
    };
    let a = sidecar_a(&restarted).await;
    assert!(
        a["acked"]["type.outrigger.dev/mesh.v1.Route"].is_string(),
        "{a}"
    );
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the control plane was away"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_instance_registered_with_the_control_plane_gets_traffic_and_leaves_cleanly() {
    let registry = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let control = start_control(config.path());
    let cp = format!("http://{}", control.listen);
    let with_cp = |b: SidecarBuilder| b.arg("--no-discovery").arg("--control-plane").arg(&cp);
    let app1 = start_echo_app("b-1");
    let _b1 = with_cp(SidecarBuilder::new("b", registry.path()).app_port(app1.port)).start();
    let a = with_cp(SidecarBuilder::new("a", registry.path())).start();
    let http = client();
    // b is known only through the control plane's registry (discovery is off everywhere).
    until_served_by(&http, &a, "b-1").await;

    let app2 = start_echo_app("b-2");
    let mut b2 = with_cp(SidecarBuilder::new("b", registry.path()).app_port(app2.port)).start();
    until_served_by(&http, &a, "b-2").await;
    // Under concurrent load both instances serve a fair share.
    let seen = support::concurrent_spread(&a.url("/v1.0/invoke/b/method/slow?ms=20"), 40).await;
    assert_eq!(seen.values().sum::<usize>(), 40, "{seen:?}");
    assert!(seen.get("b-1").is_some_and(|n| *n >= 5), "{seen:?}");
    assert!(seen.get("b-2").is_some_and(|n| *n >= 5), "{seen:?}");

    // The second instance dies: its stream closes, the control plane drops it, and calls keep
    // succeeding throughout (a refused connection moves on to the other instance).
    b2.proc.signal(nix::sys::signal::Signal::SIGKILL);
    b2.proc.wait_exit(Duration::from_secs(10));
    for _ in 0..50 {
        assert_eq!(served_by(&http, &a).await, "b-1");
    }
    let sidecars: Value = support::get_json(format!("http://{}/sidecars", control.admin)).await;
    let bs = sidecars
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["app_id"] == "b")
        .count();
    assert_eq!(bs, 1, "{sidecars:#}");
}
