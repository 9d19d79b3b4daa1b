//! Load balancing across the instances of an app (`Cluster.spec.loadBalancer`), with real
//! sidecars and apps: three instances of b, one answering 20 ms late.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use support::*;

struct ThreeInstances {
    registry: tempfile::TempDir,
    _apps: Vec<EchoApp>,
    sidecars: Vec<SidecarProc>,
}

/// b-0 and b-1 answer at once, b-2 20 ms late; each behind its own sidecar of app b.
fn three_instances() -> ThreeInstances {
    let registry = tempfile::tempdir().unwrap();
    let apps: Vec<EchoApp> = (0..3)
        .map(|i| {
            let delay = (i == 2).then(|| Duration::from_millis(20));
            start_echo_app_with_delay(&format!("b-{i}"), delay)
        })
        .collect();
    let sidecars = apps
        .iter()
        .map(|app| {
            SidecarBuilder::new("b", registry.path())
                .app_port(app.port)
                .arg("--no-discovery")
                .start()
        })
        .collect();
    ThreeInstances {
        registry,
        _apps: apps,
        sidecars,
    }
}

/// A caller sidecar whose cluster `b` has the three instances and `policy`.
fn caller(instances: &ThreeInstances, policy: &str) -> (SidecarProc, tempfile::TempDir) {
    caller_with(instances, &format!("loadBalancer: {policy}"))
}

/// The same, with `spec` lines (`loadBalancer: …`, `hashOn: …`) for the cluster.
fn caller_with(instances: &ThreeInstances, spec: &str) -> (SidecarProc, tempfile::TempDir) {
    let resources = tempfile::tempdir().unwrap();
    let endpoints: Vec<String> = instances
        .sidecars
        .iter()
        .map(|s| format!("{{address: 127.0.0.1:{}}}", s.mesh.port()))
        .collect();
    std::fs::write(
        resources.path().join("cluster.yaml"),
        format!(
            "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: b}}\nspec:\n  {}\n  endpoints: [{}]\n",
            spec.replace('\n', "\n  "),
            endpoints.join(", ")
        ),
    )
    .unwrap();
    let sidecar = SidecarBuilder::new("a", instances.registry.path())
        .arg("--no-discovery")
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    (sidecar, resources)
}

/// `total` calls from 4 concurrent clients; how many each instance answered.
async fn spread(caller: &SidecarProc, total: usize) -> HashMap<String, usize> {
    let url = caller.url("/v1.0/invoke/b/method/who");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, next) = (url.clone(), next.clone());
            tokio::spawn(async move {
                let http = client();
                let mut seen = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < total {
                    let response = http.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    seen.push(
                        response.headers()["x-echo-app"]
                            .to_str()
                            .unwrap()
                            .to_string(),
                    );
                }
                seen
            })
        })
        .collect();
    let mut counts = HashMap::new();
    for worker in workers {
        for name in worker.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn peak_ewma_sends_a_slow_instance_under_a_tenth_where_round_robin_sends_a_third() {
    let instances = three_instances();
    let (round_robin, _rr) = caller(&instances, "roundRobin");
    let (peak_ewma, _pe) = caller(&instances, "peakEwma");
    let rr = spread(&round_robin, 300).await;
    assert_eq!(rr.values().sum::<usize>(), 300);
    assert_eq!(
        rr.get("b-2"),
        Some(&100),
        "round robin: a third each {rr:?}"
    );
    let ewma = spread(&peak_ewma, 300).await;
    assert_eq!(ewma.values().sum::<usize>(), 300);
    let slow = ewma.get("b-2").copied().unwrap_or(0);
    let clusters = get_json(peak_ewma.admin_url("/clusters")).await;
    assert!(
        slow < 30,
        "peak-EWMA sent the slow instance {slow} of 300: {ewma:?}\n{clusters}"
    );
    assert!(
        ewma.get("b-0").copied().unwrap_or(0) > 100 && ewma.get("b-1").copied().unwrap_or(0) > 100,
        "the fast ones share the rest: {ewma:?}"
    );
    let slow_address = format!("127.0.0.1:{}", instances.sidecars[2].mesh.port());
    let shown = clusters["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == slow_address.as_str())
        .unwrap_or_else(|| panic!("{clusters}"));
    assert!(
        shown["peak_ewma_us"].as_f64().unwrap() >= 20_000.0,
        "the slow one's estimate is shown: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn least_request_answers_every_call_across_the_instances() {
    let instances = three_instances();
    let (least_request, _lr) = caller(&instances, "leastRequest");
    let counts = spread(&least_request, 150).await;
    assert_eq!(counts.values().sum::<usize>(), 150);
    assert_eq!(counts.len(), 3, "every instance served some: {counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_load_balancer_is_a_startup_error_naming_the_field() {
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("cluster.yaml"),
        "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec:\n  loadBalancer: fastest\n  endpoints: [{address: 127.0.0.1:1}]\n",
    )
    .unwrap();
    let stderr = refused_start(resources.path());
    assert!(
        stderr.contains("cluster.yaml:5:17: spec.loadBalancer: unknown variant `fastest`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ring_hash_sends_each_key_to_one_instance_and_keyless_calls_round_robin() {
    let instances = three_instances();
    let (ring, _r) = caller_with(
        &instances,
        "loadBalancer: ringHash\nhashOn: {header: x-user}",
    );
    let (by_query, _q) = caller_with(
        &instances,
        "loadBalancer: ringHash\nhashOn: {query: metadata.partitionKey}",
    );
    let http = client();
    let mut owners = HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let response = http
                .get(ring.url("/v1.0/invoke/b/method/who"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let served = response.headers()["x-echo-app"]
                .to_str()
                .unwrap()
                .to_string();
            let first = owners.entry(user).or_insert_with(|| served.clone());
            assert_eq!(*first, served, "user-{user} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "30 keys spread over the three: {owners:?}"
    );
    // The same key as a query parameter lands where the header did: one ring, one hash.
    for user in 0..30 {
        let response = http
            .get(by_query.url(&format!(
                "/v1.0/invoke/b/method/who?metadata.partitionKey=user-{user}"
            )))
            .send()
            .await
            .unwrap();
        let served = response.headers()["x-echo-app"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(owners[&user], served, "user-{user} by query");
    }
    // Without the header: round robin.
    let keyless = spread(&ring, 30).await;
    assert_eq!(keyless.values().sum::<usize>(), 30);
    assert_eq!(keyless.len(), 3, "{keyless:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ring_hash_without_hash_on_is_a_startup_error_naming_the_field() {
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("cluster.yaml"),
        "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec:\n  loadBalancer: ringHash\n  endpoints: [{address: 127.0.0.1:1}]\n",
    )
    .unwrap();
    let stderr = refused_start(resources.path());
    assert!(
        stderr.contains("cluster.yaml:1:1: cluster \"b\": spec.hashOn: ringHash needs hashOn: {header: NAME} or {query: NAME}"),
        "{stderr}"
    );
}

/// A `Resiliency` timeout for the target app bounds invocations of it: 504 naming the app, the
/// instance and the limit, after the retries the policy allows; a quick call is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_resiliency_timeout_for_the_target_app_answers_504_naming_it() {
    let instances = three_instances();
    let resources = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{}", instances.sidecars[0].mesh.port());
    std::fs::write(
        resources.path().join("mesh.yaml"),
        format!(
            "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: b}}\nspec:\n  endpoints: [{{address: {endpoint}}}]\n---\napiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {{name: limits}}\nspec:\n  policies:\n    timeouts: {{fast: 100ms}}\n    retries:\n      twice: {{policy: constant, duration: 10ms, maxRetries: 2}}\n  targets:\n    apps:\n      b: {{timeout: fast, retry: twice}}\n"
        ),
    )
    .unwrap();
    let caller = SidecarBuilder::new("a", instances.registry.path())
        .arg("--no-discovery")
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    let started = std::time::Instant::now();
    let response = client()
        .get(caller.url("/v1.0/invoke/b/method/slow?ms=2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert_eq!(
        body["message"],
        format!(
            "failed to invoke, id: b, err: no response from {endpoint} within the timeout of 100ms"
        )
    );
    let quick = client()
        .get(caller.url("/v1.0/invoke/b/method/slow?ms=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), 200);
    let metrics = metrics_text(&caller).await;
    assert!(
        metrics.contains("outrigger_timeouts_total{app_id=\"b\"} 1"),
        "{metrics}"
    );
    // Each attempt timed out and was retried per the policy: two retries, then the 504.
    assert!(
        metrics.contains("outrigger_retries_total{app_id=\"b\"} 2"),
        "{metrics}"
    );
}

/// Three instances of b under steady load, one killed with SIGKILL: no client request fails
/// (a retry policy and fail-over cover the calls it held; outlier detection takes it out of
/// rotation after five consecutive failures), and `/clusters` shows it ejected.
#[tokio::test(flavor = "multi_thread")]
async fn killing_an_instance_under_load_fails_no_request_and_ejects_it() {
    let instances = three_instances();
    let (caller, resources) = caller(&instances, "roundRobin");
    std::fs::write(
        resources.path().join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: calls}\nspec:\n  policies:\n    retries:\n      quick: {policy: constant, duration: 10ms, maxRetries: 3}\n  targets:\n    apps:\n      b: {retry: quick}\n",
    )
    .unwrap();
    drop(caller);
    let caller = SidecarBuilder::new("a", instances.registry.path())
        .arg("--no-discovery")
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    let url = caller.url("/v1.0/invoke/b/method/who");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed = format!("127.0.0.1:{}", instances.sidecars[2].mesh.port());
    instances.sidecars[2]
        .proc
        .signal(nix::sys::signal::Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "{ok} calls");
    let clusters = get_json(caller.admin_url("/clusters")).await;
    let shown = clusters["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == killed.as_str())
        .unwrap_or_else(|| panic!("{clusters}"))
        .clone();
    assert_eq!(shown["ejected"], true, "{shown}");
    assert_eq!(shown["ejections"], 1, "{shown}");
    let metrics = metrics_text(&caller).await;
    let line = format!("outrigger_upstream_ejections_total{{endpoint=\"{killed}\"}} 1");
    assert!(metrics.contains(&line), "{line}\n{metrics}");
}
