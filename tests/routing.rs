//! Routes from mesh YAML in standalone mode: rules matched on path, method and headers,
//! weighted splits across clusters (canary), per-rule timeouts and header rewrites — all on
//! the explicit invocation path, with real sidecars and apps.

mod support;

use serde_json::Value;
use support::*;

struct Canary {
    _backends: TwoVersions,
    _resources: tempfile::TempDir,
    a: SidecarProc,
}

fn start_canary() -> Canary {
    let backends = TwoVersions::start();
    let resources = tempfile::tempdir().unwrap();
    let route = "apiVersion: outrigger.dev/v1alpha1
kind: Route
metadata: {name: b}
spec:
  app: b
  rules:
  - match:
      headers: [{name: x-canary, exact: \"true\"}]
    backends: [{cluster: b-v2}]
  - match: {pathPrefix: /v2/, method: POST}
    backends: [{cluster: b-v2}]
    requestHeaders:
      add: {x-route: canary}
      remove: [x-debug]
  - match: {path: /slow}
    backends: [{cluster: b-v1}]
    timeout: 300ms
  backends:
  - {cluster: b-v1, weight: 90}
  - {cluster: b-v2, weight: 10}
";
    let yaml = format!("{}---\n{route}", backends.clusters_yaml());
    std::fs::write(resources.path().join("routes.yaml"), yaml).unwrap();
    let a = SidecarBuilder::new("a", backends.registry.path())
        .arg("--no-discovery")
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    Canary {
        _backends: backends,
        _resources: resources,
        a,
    }
}

async fn served_by(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    response.headers()["x-echo-app"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_match_sends_the_call_to_the_canary() {
    let canary = start_canary();
    let http = client();
    let to_v2 = http
        .get(canary.a.url("/v1.0/invoke/b/method/items"))
        .header("x-canary", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(to_v2).await, "b-v2");
    // Matching is on the exact value: unit tests in proxy/src/routing.rs cover the misses.
}

#[tokio::test(flavor = "multi_thread")]
async fn path_prefix_and_method_match_and_the_rule_rewrites_request_headers() {
    let canary = start_canary();
    let http = client();
    let response = http
        .post(canary.a.url("/v1.0/invoke/b/method/v2/orders?x=1"))
        .header("x-debug", "1")
        .header("x-keep", "yes")
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-echo-app"], "b-v2");
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/v2/orders?x=1");
    assert_eq!(echo["headers"]["x-route"], "canary");
    assert_eq!(echo["headers"]["x-keep"], "yes");
    assert!(
        echo["headers"].get("x-debug").is_none(),
        "x-debug was not removed: {echo}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catch_all_splits_90_10_exactly_over_every_100_calls() {
    let canary = start_canary();
    let http = client();
    let mut v2 = 0;
    for _ in 0..100 {
        // GET on /v2/… does not match the POST-only rule, so it falls to the weighted split.
        let response = http
            .get(canary.a.url("/v1.0/invoke/b/method/v2/orders"))
            .send()
            .await
            .unwrap();
        if served_by(response).await == "b-v2" {
            v2 += 1;
        }
    }
    assert_eq!(v2, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_timeout_answers_504_naming_the_app_and_the_limit() {
    let canary = start_canary();
    let response = client()
        .get(canary.a.url("/v1.0/invoke/b/method/slow?ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("failed to invoke, id: b, err: no response from 127.0.0.1:"),
        "{message}"
    );
    assert!(
        message.ends_with("within the timeout of 300ms"),
        "{message}"
    );
    // A quick call on the same rule is unaffected.
    let quick = client()
        .get(canary.a.url("/v1.0/invoke/b/method/slow?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(quick).await, "b-v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_dump_shows_the_route_rules() {
    let canary = start_canary();
    let dump: Value = support::get_json(canary.a.admin_url("/config_dump")).await;
    let rules = &dump["snapshot"]["routes"]["b"]["rules"];
    assert_eq!(rules.as_array().unwrap().len(), 4, "{rules}");
    assert_eq!(rules[2]["timeout"], "300ms");
    assert_eq!(rules[3]["backends"][1]["weight"], 10);
}
