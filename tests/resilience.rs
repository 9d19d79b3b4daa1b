//! Resiliency policies on invocations (`targets.apps.<id>`), with real sidecars and an app
//! that answers as each test scripts it.

mod support;

use serde_json::json;
use support::subscriber::{Answer, SubscriberApp};
use support::*;

struct Pair {
    _registry: tempfile::TempDir,
    _resources: tempfile::TempDir,
    app: SubscriberApp,
    _b: SidecarProc,
    a: SidecarProc,
}

/// App b behind its sidecar; a's sidecar with `resiliency` in its resources.
async fn pair(resiliency: &str) -> Pair {
    pair_with(resiliency, &[]).await
}

/// The same, with more flags for both sidecars (`--mesh-protocol h2`).
async fn pair_with(resiliency: &str, flags: &[&str]) -> Pair {
    let registry = tempfile::tempdir().unwrap();
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(resources.path().join("resiliency.yaml"), resiliency).unwrap();
    let app = SubscriberApp::start(None).await;
    let mut b = SidecarBuilder::new("b", registry.path()).app_port(app.port);
    let mut a = SidecarBuilder::new("a", registry.path())
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap());
    for flag in flags {
        b = b.arg(flag);
        a = a.arg(flag);
    }
    let (b, a) = (b.start(), a.start());
    Pair {
        _registry: registry,
        _resources: resources,
        app,
        _b: b,
        a,
    }
}

const POLICY: &str = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: calls}
spec:
  policies:
    retries:
      three: {policy: constant, duration: 20ms, maxRetries: 3}
      twice-on-5xx: {policy: constant, duration: 10ms, maxRetries: 2, matching: {httpStatusCodes: \"500-599\"}}
  targets:
    apps:
      b: {retry: three}
";

async fn call(pair: &Pair, id: &str) -> (u16, String) {
    let response = client()
        .post(pair.a.url("/v1.0/invoke/b/method/work"))
        .header("content-type", "application/json")
        .body(json!({ "id": id }).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn attempts(pair: &Pair, id: &str) -> usize {
    pair.app
        .deliveries()
        .iter()
        .filter(|d| d.body["id"] == id)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_503s_then_success_reach_the_caller_as_200_after_three_attempts() {
    let pair = pair(POLICY).await;
    pair.app.script(|_, _, before| match before {
        0 | 1 => Answer::status(503, r#"{"busy":true}"#),
        _ => Answer::status(200, r#"{"done":true}"#),
    });
    let (status, body) = call(&pair, "flaky").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, r#"{"done":true}"#);
    assert_eq!(attempts(&pair, "flaky"), 3);
    let metrics = metrics_text(&pair.a).await;
    assert!(
        metrics.contains("outrigger_retries_total{app_id=\"b\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_hold_over_an_h2_mesh_hop_and_for_an_h2_client() {
    let pair = pair_with(POLICY, &["--mesh-protocol", "h2"]).await;
    // Each call id fails its first two attempts.
    let failures = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let counts = failures.clone();
    pair.app.script(move |_, body, _| {
        let id = body["id"].as_str().unwrap_or_default().to_string();
        let mut counts = counts.lock().unwrap();
        let seen = counts.entry(id.clone()).or_insert(0);
        *seen += 1;
        if *seen <= 2 {
            Answer::status(503, r#"{"busy":true}"#)
        } else {
            Answer::status(200, &format!(r#"{{"id":"{id}"}}"#))
        }
    });
    // An HTTP/1.1 client, the mesh hop in HTTP/2.
    let (status, body) = call(&pair, "h1-client").await;
    assert_eq!((status, body.as_str()), (200, r#"{"id":"h1-client"}"#));
    assert_eq!(attempts(&pair, "h1-client"), 3);
    // An HTTP/2 client (prior knowledge) on the Dapr port.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(pair.a.url("/v1.0/invoke/b/method/work"))
        .header("content-type", "application/json")
        .body(json!({ "id": "h2-client" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"id":"h2-client"}"#);
    assert_eq!(attempts(&pair, "h2-client"), 3);
    let metrics = metrics_text(&pair.a).await;
    assert!(
        metrics.contains("outrigger_retries_total{app_id=\"b\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_max_retries_and_the_last_answer_goes_to_the_caller() {
    let pair = pair(POLICY).await;
    pair.app
        .script(|_, _, before| Answer::status(503, &format!(r#"{{"attempt":{before}}}"#)));
    let (status, body) = call(&pair, "down").await;
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"attempt":3}"#, "the fourth answer, untouched");
    assert_eq!(attempts(&pair, "down"), 4, "1 + maxRetries");
}

#[tokio::test(flavor = "multi_thread")]
async fn matching_status_codes_leave_a_404_alone() {
    let pair = pair(&POLICY.replace("b: {retry: three}", "b: {retry: twice-on-5xx}")).await;
    pair.app.script(|_, body, _| {
        if body["id"] == "missing" {
            Answer::status(404, "{}")
        } else {
            Answer::status(500, "{}")
        }
    });
    let (status, _) = call(&pair, "missing").await;
    assert_eq!(status, 404);
    assert_eq!(attempts(&pair, "missing"), 1, "a 404 is not retried");
    let (status, _) = call(&pair, "broken").await;
    assert_eq!(status, 500);
    assert_eq!(attempts(&pair, "broken"), 3, "a 500 is, twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_retry_policy_is_a_startup_error_naming_the_field() {
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("resiliency.yaml"),
        POLICY.replace(
            "maxRetries: 3}",
            "maxRetries: 3, matching: {httpStatusCodes: \"5xx\"}}",
        ),
    )
    .unwrap();
    let stderr = refused_start(resources.path());
    assert!(
        stderr.contains("resiliency.yaml:1:1: resiliency \"calls\": policies.retries.three.matching.httpStatusCodes: \"5xx\" is not a status code"),
        "{stderr}"
    );
}

/// With b failing every call, retries stay within the budget (a fifth of the calls plus ten
/// a second), not 1 + maxRetries attempts per call.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_app_gets_retries_within_the_budget_not_four_times_the_calls() {
    const CALLS: usize = 300;
    let pair = pair(&POLICY.replace("duration: 20ms", "duration: 1ms")).await;
    pair.app.script(|_, _, _| Answer::status(503, "{}"));
    let started = std::time::Instant::now();
    for i in 0..CALLS {
        let (status, _) = call(&pair, &format!("c{i}")).await;
        assert_eq!(status, 503);
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    let attempts = pair.app.deliveries().len();
    let budget = CALLS as f64 * 1.2 + 10.0 * seconds;
    assert!(
        (attempts as f64) <= budget,
        "{attempts} attempts for {CALLS} calls in {seconds} s (budget {budget})"
    );
    assert!(attempts > CALLS, "some retries were made: {attempts}");
    eprintln!(
        "{attempts} attempts for {CALLS} calls in {seconds} s (without a budget: {})",
        CALLS * 4
    );
}

/// `consecutiveFailures > 3`: the fifth call fails fast without reaching the app; after the
/// breaker's timeout one half-open probe goes through, and its success closes the breaker.
#[tokio::test(flavor = "multi_thread")]
async fn a_circuit_breaker_opens_fails_fast_probes_once_and_closes() {
    let pair = pair(
        "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: calls}
spec:
  policies:
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 300ms, trip: consecutiveFailures > 3}
  targets:
    apps:
      b: {circuitBreaker: cb}
",
    )
    .await;
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    pair.app.script(move |_, _, _| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::status(200, "{}")
        } else {
            Answer::status(500, "{}")
        }
    });
    for i in 0..4 {
        let (status, _) = call(&pair, &format!("f{i}")).await;
        assert_eq!(status, 500, "call {i} reaches the app and fails");
    }
    let (status, body) = call(&pair, "fast").await;
    assert_eq!(status, 500);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert_eq!(
        body["message"],
        "failed to invoke, id: b, err: circuit breaker is open"
    );
    assert_eq!(
        attempts(&pair, "fast"),
        0,
        "the fifth call never reached the app"
    );
    let clusters = get_json(pair.a.admin_url("/clusters")).await;
    assert_eq!(
        clusters["circuit_breakers"],
        json!([{"name": "b/cb", "state": "open"}]),
        "{clusters}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, _) = call(&pair, "probe").await;
    assert_eq!(status, 200, "the half-open probe goes through");
    assert_eq!(attempts(&pair, "probe"), 1);
    let (status, _) = call(&pair, "after").await;
    assert_eq!(status, 200, "closed again");
    let clusters = get_json(pair.a.admin_url("/clusters")).await;
    assert_eq!(clusters["circuit_breakers"][0]["state"], "closed");
    let dump = get_json(pair.a.admin_url("/config_dump")).await;
    assert_eq!(
        dump["policies_in_force"]["apps"]["b"]["circuit_breaker"],
        json!({"name": "b/cb", "state": "closed"}),
        "{dump}"
    );
    let metrics = metrics_text(&pair.a).await;
    for state in ["open", "half-open", "closed"] {
        let line = format!(
            "outrigger_circuit_breaker_transitions_total{{breaker=\"b/cb\",state=\"{state}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_trip_expression_is_a_startup_error_naming_the_field() {
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: calls}\nspec:\n  policies:\n    circuitBreakers:\n      cb: {trip: consecutiveFailures >}\n  targets:\n    apps:\n      b: {circuitBreaker: cb}\n",
    )
    .unwrap();
    let stderr = refused_start(resources.path());
    assert!(
        stderr.contains("resiliency.yaml:1:1: resiliency \"calls\": policies.circuitBreakers.cb.trip: invalid CEL expression \"consecutiveFailures >\""),
        "{stderr}"
    );
}

/// The same breaker on a state store's outbound side: with its Redis down, four failing calls
/// reach for Redis, the fifth fails fast; once Redis is back, the half-open probe closes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_store_breaker_opens_while_redis_is_down_and_closes_when_it_is_back() {
    let mut redis = support::backends::RedisServer::start(false);
    let registry = tempfile::tempdir().unwrap();
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("store.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - {{name: redisHost, value: \"{}\"}}\n  - {{name: dialTimeout, value: 500ms}}\n---\napiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {{name: store}}\nspec:\n  policies:\n    circuitBreakers:\n      cb: {{maxRequests: 1, timeout: 300ms, trip: consecutiveFailures > 3}}\n  targets:\n    components:\n      statestore:\n        outbound: {{circuitBreaker: cb}}\n",
            redis.address()
        ),
    )
    .unwrap();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    let get = || async {
        let response = client()
            .get(a.url("/v1.0/state/statestore/k"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };
    assert_eq!(get().await.0, 204, "Redis up: nothing stored yet");
    redis.kill();
    for i in 0..4 {
        let (status, body) = get().await;
        assert_eq!(status, 500, "{body}");
        assert!(
            !body.contains("circuit breaker is open"),
            "call {i} reached for Redis: {body}"
        );
    }
    let (status, body) = get().await;
    assert_eq!(status, 500);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errorCode"], "ERR_STATE_GET");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .ends_with("circuit breaker is open"),
        "{body}"
    );
    redis.restart();
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = get().await;
        if status == 204 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    let clusters = get_json(a.admin_url("/clusters")).await;
    assert_eq!(
        clusters["circuit_breakers"],
        json!([{"name": "components.statestore/cb", "state": "closed"}]),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_publish_calls_follow_their_outbound_timeout_and_retry_policies() {
    let mut redis = support::backends::RedisServer::start(false);
    let registry = tempfile::tempdir().unwrap();
    let resources = tempfile::tempdir().unwrap();
    let host = redis.address();
    let component = |name: &str, kind: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n  - {{name: redisHost, value: \"{host}\"}}\n  - {{name: dialTimeout, value: 200ms}}\n---\n"
        )
    };
    let yaml = format!(
        "{}{}{}apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {{name: stores}}\nspec:\n  policies:\n    timeouts:\n      quick: 100ms\n    retries:\n      patient: {{policy: constant, duration: 100ms, maxRetries: 30}}\n  targets:\n    components:\n      hasty:\n        outbound: {{timeout: quick}}\n      steady:\n        outbound: {{timeout: quick, retry: patient}}\n      events:\n        outbound: {{retry: patient}}\n",
        component("hasty", "state.redis"),
        component("steady", "state.redis"),
        component("events", "pubsub.redis"),
    );
    std::fs::write(resources.path().join("components.yaml"), yaml).unwrap();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    let http = client();
    let get = |store: &'static str| {
        let http = http.clone();
        let url = a.url(&format!("/v1.0/state/{store}/k"));
        async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    assert_eq!(
        get("hasty").await.0,
        204,
        "Redis answers: nothing stored yet"
    );
    assert_eq!(get("steady").await.0, 204);

    // Redis stops answering for 600 ms: the store with a timeout alone fails at 100 ms,
    // naming the limit; the one that also retries gets its answer once Redis is back.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "600", "ALL"]), "OK");
    let (hasty, steady) = tokio::join!(get("hasty"), get("steady"));
    assert_eq!(hasty.0, 500, "{}", hasty.1);
    let error: serde_json::Value = serde_json::from_str(&hasty.1).unwrap();
    assert_eq!(error["errorCode"], "ERR_STATE_GET");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .ends_with("timed out after 100ms (resiliency timeout)"),
        "{error}"
    );
    assert_eq!(steady, (204, String::new()), "retried until Redis answered");

    // Redis is down when the publish starts and back 300 ms later: the publish is retried
    // and lands exactly once.
    redis.kill();
    let publish = {
        let http = http.clone();
        let url = a.url("/v1.0/publish/events/orders");
        tokio::spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(r#"{"order":1}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    redis.restart();
    assert_eq!(publish.await.unwrap(), 204);
    assert_eq!(redis.cli(&["XLEN", "orders"]), "1");
}
