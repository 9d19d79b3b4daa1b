//! Every input has a limit: the state API cannot be made to build an answer larger than its
//! body limit, store a value nested deeper than 128 levels, or take unbounded item lists; and
//! a value within the limits reads back identically through GET and bulk get.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// The embedded in-memory `statestore` of a sidecar with no resources.
fn state_sidecar() -> (tempfile::TempDir, SidecarProc) {
    let registry = tempfile::tempdir().unwrap();
    let sidecar = SidecarBuilder::new("a", registry.path()).start();
    (registry, sidecar)
}

/// Samples a process's RSS every 10 ms until stopped; the peak.
fn rss_sampler(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let peak = AtomicU64::new(0);
        while !flag.load(Ordering::Relaxed) {
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|kb| kb.parse::<u64>().ok())
                })
                .unwrap_or(0)
                * 1024;
            peak.fetch_max(rss, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
        peak.load(Ordering::Relaxed)
    });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_get_cannot_be_amplified_and_the_data_survives() {
    let (_registry, sidecar) = state_sidecar();
    let http = client();
    let base = sidecar.url("/v1.0/state/statestore");
    let big = "x".repeat(1024 * 1024);
    for key in ["v", "w", "y", "z", "u"] {
        let saved = http
            .post(&base)
            .json(&json!([{ "key": key, "value": big }]))
            .send()
            .await
            .unwrap();
        assert_eq!(saved.status(), 204);
    }
    let (stop, sampler) = rss_sampler(sidecar.proc.pid());
    // 3000 repeats of one 1 MB key: each distinct key is answered once.
    let keys: Vec<&str> = std::iter::repeat_n("v", 3000).collect();
    let repeated = http
        .post(format!("{base}/bulk"))
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .unwrap();
    assert_eq!(repeated.status(), 200);
    let items: Value = repeated.json().await.unwrap();
    assert_eq!(
        items.as_array().unwrap().len(),
        1,
        "one item per distinct key"
    );
    assert_eq!(items[0]["key"], "v");
    assert_eq!(items[0]["data"].as_str().unwrap().len(), big.len());
    // Five distinct 1 MB values exceed the 4 MiB answer limit: refused, naming it.
    let over = http
        .post(format!("{base}/bulk"))
        .json(&json!({ "keys": ["v", "w", "y", "z", "u", "v", "w"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 413);
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_STATE_BULK_GET");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("larger than the 4194304-byte limit (--max-body-size)"),
        "{body}"
    );
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert!(peak < 64 * 1024 * 1024, "peak RSS {peak} bytes");
    // Nothing was lost.
    let value: Value = http
        .get(format!("{base}/v"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(value.as_str().unwrap().len(), big.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn item_lists_are_capped_and_the_error_names_the_cap() {
    let (_registry, sidecar) = state_sidecar();
    let http = client();
    let base = sidecar.url("/v1.0/state/statestore");
    let keys: Vec<String> = (0..10_001).map(|i| format!("k{i}")).collect();
    let bulk = http
        .post(format!("{base}/bulk"))
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.status(), 400);
    let body: Value = bulk.json().await.unwrap();
    assert_eq!(
        body["message"],
        "a bulk get takes at most 10000 keys; this one has 10001"
    );
    let items: Vec<Value> = (0..10_001)
        .map(|i| json!({"key": format!("k{i}"), "value": 1}))
        .collect();
    let save = http.post(&base).json(&items).send().await.unwrap();
    assert_eq!(save.status(), 400);
    let body: Value = save.json().await.unwrap();
    assert_eq!(
        body["message"],
        "a save takes at most 10000 items; this one has 10001"
    );
    assert_eq!(
        http.get(format!("{base}/k0"))
            .send()
            .await
            .unwrap()
            .status(),
        204,
        "nothing was written"
    );
    let operations: Vec<Value> = (0..10_001)
        .map(|i| json!({"operation": "upsert", "request": {"key": format!("k{i}"), "value": 1}}))
        .collect();
    let tx = http
        .post(format!("{base}/transaction"))
        .json(&json!({ "operations": operations }))
        .send()
        .await
        .unwrap();
    assert_eq!(tx.status(), 400);
    let body: Value = tx.json().await.unwrap();
    assert_eq!(
        body["message"],
        "a transaction takes at most 10000 operations; this one has 10001"
    );
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread")]
async fn values_within_the_nesting_limit_read_back_identically_and_deeper_ones_are_refused() {
    let (_registry, sidecar) = state_sidecar();
    let http = client();
    let base = sidecar.url("/v1.0/state/statestore");
    let values = [
        ("deep", nested(128)),
        ("huge-number", "1e999999".to_string()),
        ("object", r#"{"b":[1,2,{"c":"d"}],"a":-0.0}"#.to_string()),
    ];
    for (key, value) in &values {
        let body = format!(r#"[{{"key":"{key}","value":{value}}}]"#);
        let saved = http.post(&base).body(body).send().await.unwrap();
        assert_eq!(saved.status(), 204, "{key}");
    }
    let keys: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
    let bulk = http
        .post(format!("{base}/bulk"))
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (key, value) in &values {
        let got = http.get(format!("{base}/{key}")).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.headers()["content-type"], "application/json", "{key}");
        assert_eq!(&got.text().await.unwrap(), value, "GET {key}");
        assert!(
            bulk.contains(&format!(r#""key":"{key}","data":{value},"#)),
            "bulk get of {key} differs: {bulk}"
        );
    }
    let too_deep = format!(
        r#"[{{"key":"k","value":1}},{{"key":"deeper","value":{}}}]"#,
        nested(129)
    );
    let refused = http.post(&base).body(too_deep).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["message"],
        "[1].value: nested 129 levels deep; the limit is 128"
    );
    for key in ["k", "deeper"] {
        assert_eq!(
            http.get(format!("{base}/{key}"))
                .send()
                .await
                .unwrap()
                .status(),
            204,
            "{key} was written"
        );
    }
}

const SECRET_COMPONENTS: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: cache}
spec:
  type: state.redis
  version: v1
  metadata:
  - {name: redisHost, value: '127.0.0.1:1'}
  - {name: redisPassword, value: hunter2-inline-secret}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: db}
spec:
  type: state.postgresql
  version: v1
  metadata:
  - {name: connectionString, value: 'host=127.0.0.1 user=postgres password=pg-inline-secret dbname=x'}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: events}
spec:
  type: pubsub.kafka
  version: v1
  metadata:
  - {name: brokers, value: '127.0.0.1:9092'}
  - name: saslPassword
    secretKeyRef: {name: kafka-secrets, key: sasl}
# Served to another app: in the snapshot (and the dump), not opened by this sidecar.
scopes: [billing]
";

const SECRETS: [&str; 2] = ["hunter2-inline-secret", "pg-inline-secret"];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_secrets_never_appear_in_the_dump_the_metadata_the_log_or_a_nack() {
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(resources.path().join("components.yaml"), SECRET_COMPONENTS).unwrap();
    let registry = tempfile::tempdir().unwrap();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    let http = client();
    let dump = http
        .get(a.admin_url("/config_dump"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_no_secret("/config_dump", &dump);
    assert!(dump.contains("\"redisPassword\""), "{dump}");
    assert!(dump.contains("[redacted]"), "{dump}");
    assert!(dump.contains("password=[redacted] dbname=x"), "{dump}");
    assert!(
        dump.contains("kafka-secrets"),
        "the secretKeyRef stays visible:\n{dump}"
    );
    let metadata = http
        .get(a.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_no_secret("/v1.0/metadata", &metadata);
    assert!(metadata.contains("\"cache\""), "{metadata}");

    // Through the control plane: a refused component quoting the secret is NACKed without it.
    let config = tempfile::tempdir().unwrap();
    let quoting = SECRET_COMPONENTS.replace(
        "  - {name: redisPassword, value: hunter2-inline-secret}\n",
        "  - {name: redisPassword, value: hunter2-inline-secret}\n  - {name: redisDB, value: hunter2-inline-secret}\n",
    );
    std::fs::write(config.path().join("components.yaml"), &quoting).unwrap();
    let control = start_control(config.path());
    let b = SidecarBuilder::new("b", registry.path())
        .arg("--no-discovery")
        .arg("--control-plane")
        .arg(&format!("http://{}", control.listen))
        .start();
    let mut nack = Value::Null;
    for _ in 0..100 {
        let sidecars: Value = get_json(format!("http://{}/sidecars", control.admin)).await;
        nack = sidecars[0]["last_nack"].clone();
        if nack.is_object() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = nack["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no NACK: {nack}"));
    assert!(
        message.contains("redisDB: \"[redacted]\" is not a whole number"),
        "{message}"
    );
    assert_no_secret("the NACK", message);
    assert_no_secret("the control plane's log", &control.proc.output());
    assert_no_secret("the sidecar's log", &b.proc.output());
    assert_no_secret("the sidecar's log", &a.proc.output());

    // At start-up, the same refusal names the field and not the secret.
    std::fs::write(resources.path().join("components.yaml"), &quoting).unwrap();
    let output = std::process::Command::new(outrigger_bin())
        .args([
            "sidecar",
            "--app-id",
            "c",
            "--dapr-http-port",
            "0",
            "--mesh-port",
            "0",
            "--admin-port",
            "0",
            "--no-discovery",
        ])
        .arg("--resources-path")
        .arg(resources.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("redisDB"), "{stderr}");
    assert_no_secret("the start-up error", &stderr);
}
