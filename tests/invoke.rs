//! Service invocation through two real sidecars to a real app: the Dapr HTTP API contract.

mod support;

use serde_json::Value;
use support::*;

async fn echo_of(response: reqwest::Response) -> Value {
    let body = response.text().await.expect("body");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn url_form_carries_path_query_body_and_headers_both_ways() {
    let mesh = start_pair();
    let response = client()
        .post(mesh.a.url("/v1.0/invoke/b/method/echo/deep?x=1"))
        .header("x-custom", "hello")
        .header("content-type", "text/plain")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-app"], "b");
    assert_eq!(response.headers()["content-type"], "application/json");
    let echo = echo_of(response).await;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/deep?x=1");
    assert_eq!(echo["body"], "the body");
    assert_eq!(echo["headers"]["x-custom"], "hello");
    assert_eq!(echo["headers"]["content-type"], "text/plain");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a");
    assert_eq!(echo["headers"]["dapr-callee-app-id"], "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_verb_is_passed_through() {
    let mesh = start_pair();
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client()
            .request(method.clone(), mesh.a.url("/v1.0/invoke/b/method/v"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(echo_of(response).await["method"], method.as_str());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn any_method_token_reaches_the_app() {
    let mesh = start_pair();
    let method = reqwest::Method::from_bytes(b"FOO").unwrap();
    let response = client()
        .request(method, mesh.a.url("/v1.0/invoke/b/method/custom"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_of(response).await;
    assert_eq!(echo["method"], "FOO");
    assert_eq!(echo["path"], "/custom");
    assert_eq!(echo["body"], "payload");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_form_proxies_the_whole_path_and_strips_the_header() {
    let mesh = start_pair();
    let response = client()
        .post(mesh.a.url("/echo/deep?x=1"))
        .header("dapr-app-id", "b")
        .header("x-custom", "hello")
        .body("via header")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_of(response).await;
    assert_eq!(echo["path"], "/echo/deep?x=1");
    assert_eq!(echo["body"], "via header");
    assert_eq!(echo["headers"]["x-custom"], "hello");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a");
    assert!(echo["headers"].get("dapr-app-id").is_none(), "{echo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_form_names_the_target_and_is_not_forwarded() {
    let mesh = start_pair();
    let response = client()
        .get(mesh.a.url("/orders/7"))
        .basic_auth("dapr-app-id", Some("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_of(response).await;
    assert_eq!(echo["path"], "/orders/7");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_app_behind_the_callee_sidecar() {
    let registry = tempfile::tempdir().unwrap();
    let app = start_echo_app("b-h2");
    let _b = SidecarBuilder::new("b", registry.path())
        .app_port(app.port)
        .arg("--app-protocol")
        .arg("h2c")
        .start();
    let a = SidecarBuilder::new("a", registry.path()).start();
    let response = client()
        .post(a.url("/v1.0/invoke/b/method/echo/deep?x=1"))
        .header("x-custom", "hello")
        .body("to h2c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-app"], "b-h2");
    let echo = echo_of(response).await;
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["path"], "/echo/deep?x=1");
    assert_eq!(echo["body"], "to h2c");
    assert_eq!(echo["headers"]["x-custom"], "hello");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_app_id_is_500_err_direct_invoke() {
    let mesh = start_pair();
    let response = client()
        .get(mesh.a.url("/v1.0/invoke/nobody/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert_eq!(
        body["message"],
        "failed to invoke, id: nobody, err: couldn't find service: nobody"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_app_id_is_404() {
    let mesh = start_pair();
    let response = client().get(mesh.a.url("/orders")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert_eq!(
        body["message"],
        "failed getting app id either from the URL path or the header dapr-app-id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_method_is_400() {
    let mesh = start_pair();
    let response = client()
        .get(mesh.a.url("/v1.0/invoke/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
}

#[tokio::test(flavor = "multi_thread")]
async fn app_down_is_500_naming_the_app() {
    let mut mesh = start_pair();
    mesh.app_b.proc.child.kill().unwrap();
    mesh.app_b.proc.child.wait().unwrap();
    let response = client()
        .get(mesh.a.url("/v1.0/invoke/b/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("failed to invoke, id: b, err: app b is not reachable at 127.0.0.1:"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn callee_sidecar_down_is_500_naming_the_app() {
    let mut mesh = start_pair();
    // kill -9 leaves its registry entry behind until the pid check notices; either way the
    // caller must answer with a clean ERR_DIRECT_INVOKE naming b.
    mesh.b.proc.child.kill().unwrap();
    mesh.b.proc.child.wait().unwrap();
    let response = client()
        .get(mesh.a.url("/v1.0/invoke/b/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("failed to invoke, id: b, err: "),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_status_and_body_are_passed_through() {
    let mesh = start_pair();
    for code in [503u16, 404, 201, 418] {
        let response = client()
            .get(mesh.a.url(&format!("/v1.0/invoke/b/method/status/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(response.headers()["x-echo-app"], "b");
        assert_eq!(echo_of(response).await["path"], format!("/status/{code}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_token_guards_every_api_but_health_and_never_reaches_the_app() {
    let registry = tempfile::tempdir().unwrap();
    let app = start_echo_app("b");
    let _b = SidecarBuilder::new("b", registry.path())
        .app_port(app.port)
        .start();
    let a = SidecarBuilder::new("a", registry.path())
        .env("DAPR_API_TOKEN", "s3cret")
        .start();
    let http = client();

    let missing = http
        .get(a.url("/v1.0/invoke/b/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_UNAUTHORIZED");

    let wrong = http
        .get(a.url("/v1.0/invoke/b/method/x"))
        .header("dapr-api-token", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let metadata = http.get(a.url("/v1.0/metadata")).send().await.unwrap();
    assert_eq!(metadata.status(), 401);

    for health in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        assert_eq!(
            http.get(a.url(health)).send().await.unwrap().status(),
            204,
            "{health}"
        );
    }

    let ok = http
        .get(a.url("/v1.0/invoke/b/method/x"))
        .header("dapr-api-token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let echo = echo_of(ok).await;
    assert!(
        echo["headers"].get("dapr-api-token").is_none(),
        "the app saw the token: {echo}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn app_api_token_is_sent_to_the_app() {
    let registry = tempfile::tempdir().unwrap();
    let app = start_echo_app("b");
    let _b = SidecarBuilder::new("b", registry.path())
        .app_port(app.port)
        .env("APP_API_TOKEN", "for-the-app")
        .start();
    let a = SidecarBuilder::new("a", registry.path()).start();
    let response = client()
        .get(a.url("/v1.0/invoke/b/method/x"))
        .header("dapr-api-token", "from-caller")
        .send()
        .await
        .unwrap();
    assert_eq!(
        echo_of(response).await["headers"]["dapr-api-token"],
        "for-the-app"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metadata_apis() {
    let mesh = start_pair();
    let http = client();
    let healthz = http.get(mesh.b.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 204);
    assert_eq!(healthz.content_length(), Some(0));
    let metadata: Value = support::get_json(mesh.b.url("/v1.0/metadata")).await;
    assert_eq!(metadata["id"], "b");
    assert_eq!(metadata["appConnectionProperties"]["port"], mesh.app_b.port);
    assert_eq!(metadata["appConnectionProperties"]["protocol"], "http");
    // With no resources directory, the embedded default state store and pub/sub broker.
    assert_eq!(
        metadata["components"],
        serde_json::json!([
            { "name": "pubsub", "type": "pubsub.in-memory", "version": "v1", "capabilities": [] },
            { "name": "statestore", "type": "state.in-memory", "version": "v1", "capabilities": ["ETAG", "TRANSACTIONAL", "TTL"] }
        ])
    );

    let put = http
        .put(mesh.b.url("/v1.0/metadata/team"))
        .body("payments")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let metadata: Value = support::get_json(mesh.b.url("/v1.0/metadata")).await;
    assert_eq!(metadata["extended"]["team"], "payments");
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_of_one_app_id_share_the_load() {
    let registry = tempfile::tempdir().unwrap();
    let app1 = start_echo_app("b-1");
    let app2 = start_echo_app("b-2");
    let _b1 = SidecarBuilder::new("b", registry.path())
        .app_port(app1.port)
        .start();
    let _b2 = SidecarBuilder::new("b", registry.path())
        .app_port(app2.port)
        .start();
    let a = SidecarBuilder::new("a", registry.path()).start();
    // Concurrent calls spread over both discovered instances (peak-EWMA, the default, weighs
    // requests in flight, so overlapping calls go to both).
    let seen = support::concurrent_spread(&a.url("/v1.0/invoke/b/method/slow?ms=20"), 40).await;
    assert_eq!(seen.values().sum::<usize>(), 40);
    assert!(seen.get("b-1").is_some_and(|n| *n >= 5), "{seen:?}");
    assert!(seen.get("b-2").is_some_and(|n| *n >= 5), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn static_cluster_from_mesh_yaml_needs_no_discovery() {
    let app = start_echo_app("b-static");
    let unused_registry = tempfile::tempdir().unwrap();
    let b = SidecarBuilder::new("b", unused_registry.path())
        .app_port(app.port)
        .arg("--no-discovery")
        .start();
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("mesh.yaml"),
        format!(
            "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: b\nspec:\n  endpoints:\n  - address: 127.0.0.1:{}\n",
            b.mesh.port()
        ),
    )
    .unwrap();
    let a = SidecarBuilder::new("a", unused_registry.path())
        .arg("--no-discovery")
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    let response = client()
        .get(a.url("/v1.0/invoke/b/method/static"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-app"], "b-static");
    let dump: Value = support::get_json(a.admin_url("/config_dump")).await;
    assert_eq!(
        dump["snapshot"]["clusters"]["b"]["endpoints"][0]["address"],
        format!("127.0.0.1:{}", b.mesh.port())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listener_reports_readiness_and_metrics_by_direction_app_and_status_class() {
    let mesh = start_pair();
    let http = client();
    http.get(mesh.a.url("/v1.0/invoke/b/method/x"))
        .send()
        .await
        .unwrap();
    http.get(mesh.a.url("/v1.0/invoke/b/method/status/503"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        http.get(mesh.a.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(mesh.a.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(mesh.a.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"outrigger_requests_total{app_id="b",direction="outbound",status_class="2xx"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"outrigger_requests_total{app_id="b",direction="outbound",status_class="5xx"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "outrigger_request_duration_seconds_bucket{app_id=\"b\",direction=\"outbound\""
        ),
        "{metrics}"
    );
    let inbound = http
        .get(mesh.b.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        inbound.contains(
            r#"outrigger_requests_total{app_id="b",direction="inbound",status_class="2xx"} 1"#
        ),
        "{inbound}"
    );
    let dump: Value = support::get_json(mesh.a.admin_url("/config_dump")).await;
    assert_eq!(dump["app_id"], "a");
    assert!(dump["snapshot"]["version"].is_string());
}
