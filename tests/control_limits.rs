//! The control plane under careless and hostile input: one reload per edit (never a reload
//! loop), a resource set too large to push refused by name while sidecars keep their last good
//! version, registrations bounded in size and number, and log lines a sidecar cannot forge.

mod support;

use std::time::Duration;

use outrigger_proto::mesh::v1 as mesh;
use outrigger_proto::mesh::v1::aggregated_discovery_client::AggregatedDiscoveryClient;
use outrigger_proto::mesh::v1::{DiscoveryRequest, ErrorDetail, Node};
use serde_json::Value;
use support::*;
use tokio::sync::mpsc;

const CLUSTER: &str = "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec: {endpoints: [{address: 127.0.0.1:1}]}\n";

fn count_lines(control: &ControlProc, needle: &str) -> usize {
    control
        .proc
        .output()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

async fn metric(control: &ControlProc, name: &str) -> f64 {
    let text = client()
        .get(format!("http://{}/metrics", control.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_edit_in_the_config_dir_is_exactly_one_reload() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("c.yaml"), CLUSTER).unwrap();
    let control = start_control(config.path());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(&control, "outrigger_control_reloads_total").await,
        0.0
    );
    // One save (write to a temporary file, rename over) …
    let edited = CLUSTER.replace("127.0.0.1:1", "127.0.0.1:2");
    std::fs::write(config.path().join(".c.yaml.tmp"), edited).unwrap();
    std::fs::rename(
        config.path().join(".c.yaml.tmp"),
        config.path().join("c.yaml"),
    )
    .unwrap();
    // … is one reload, and stays one: the control plane's own reads are not changes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        metric(&control, "outrigger_control_reloads_total").await,
        1.0
    );
    assert_eq!(
        count_lines(&control, "configuration changed"),
        1,
        "{}",
        control.proc.output()
    );
    // Saving the same bytes again changes nothing.
    std::fs::write(
        config.path().join("c.yaml"),
        CLUSTER.replace("127.0.0.1:1", "127.0.0.1:2"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metric(&control, "outrigger_control_reloads_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_set_over_the_push_limit_is_refused_by_name_and_sidecars_keep_the_last_good() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("c.yaml"), CLUSTER).unwrap();
    let control = start_control(config.path());
    let registry = tempfile::tempdir().unwrap();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--no-discovery")
        .arg("--control-plane")
        .arg(&format!("http://{}", control.listen))
        .start();
    let version_of = |dump: &Value| {
        dump["snapshot"]["version"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let mut good = String::new();
    for _ in 0..100 {
        let dump = get_json(a.admin_url("/config_dump")).await;
        if dump["snapshot"]["clusters"]["b"].is_object() {
            good = version_of(&dump);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!good.is_empty(), "the sidecar never got the cluster");
    // A component with a 17 MiB value: its type's push would be over 16 MiB.
    let huge = "x".repeat(17 * 1024 * 1024);
    std::fs::write(
        config.path().join("huge.yaml"),
        format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: huge}}\nspec:\n  type: state.in-memory\n  version: v1\n  metadata:\n  - {{name: blob, value: {huge}}}\n"),
    )
    .unwrap();
    // Bounded generously: a debug build parses 17 MiB of YAML slowly on a loaded machine.
    let mut logged = false;
    for _ in 0..600 {
        if count_lines(&control, "over the push limit") > 0 {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "{}", control.proc.output());
    let line = control
        .proc
        .output()
        .lines()
        .find(|l| l.contains("over the push limit"))
        .unwrap()
        .to_string();
    assert!(line.contains("Component \"huge\" in "), "{line}");
    assert!(line.contains("huge.yaml"), "{line}");
    // The sidecar stays connected on what it had; it never saw a message it had to refuse.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dump = get_json(a.admin_url("/config_dump")).await;
    assert!(
        dump["snapshot"]["components"]["huge"].is_null(),
        "{}",
        dump["snapshot"]["components"]
    );
    let output = a.proc.output();
    assert!(!output.contains("control plane stream closed"), "{output}");
    assert!(!output.contains("unreachable"), "{output}");
    assert_eq!(
        metric(&control, "outrigger_control_oversized_total").await,
        1.0
    );
}

/// Opens a stream whose first request carries `node`; the status the control plane ends it
/// with, if it does within 5 s.
async fn register(listen: std::net::SocketAddr, node: Node) -> Option<tonic::Status> {
    let mut client = AggregatedDiscoveryClient::connect(format!("http://{listen}"))
        .await
        .unwrap()
        .max_encoding_message_size(8 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: mesh::TYPE_CLUSTER.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let mut inbound = match client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return Some(status),
        };
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await;
    drop(tx);
    outcome.unwrap_or(None)
}

fn node(app_id: String) -> Node {
    Node {
        id: "n".into(),
        app_id,
        address: "127.0.0.1".into(),
        mesh_port: 15008,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_are_bounded_and_refused_with_a_clear_status() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("c.yaml"), CLUSTER).unwrap();
    let control = start_control(config.path());
    let long = register(control.listen, node("x".repeat(300)))
        .await
        .expect("refused");
    assert_eq!(long.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        long.message(),
        "node.app_id is 300 bytes; at most 253 are allowed"
    );
    let forged = register(control.listen, node("a\nERROR forged line".into()))
        .await
        .expect("refused");
    assert_eq!(forged.code(), tonic::Code::InvalidArgument);
    assert!(
        forged.message().starts_with("node.app_id contains '\\n'"),
        "{}",
        forged.message()
    );
    // 100 streams registering 1 MB app ids: each refused by the transport before it is
    // decoded, and the control plane's memory stays small.
    let mut refusals = Vec::new();
    for _ in 0..100 {
        refusals.push(tokio::spawn(register(
            control.listen,
            node("y".repeat(1024 * 1024)),
        )));
    }
    for refusal in refusals {
        let status = refusal.await.unwrap().expect("refused");
        assert!(
            status.message().contains("message length too large"),
            "{:?}: {}",
            status.code(),
            status.message()
        );
    }
    let rss = control.proc.rss_bytes().unwrap();
    assert!(rss < 200 * 1024 * 1024, "control plane RSS {rss} bytes");
    let sidecars: Value = get_json(format!("http://{}/sidecars", control.admin)).await;
    assert_eq!(sidecars.as_array().unwrap().len(), 0, "{sidecars}");
    assert!(!control
        .proc
        .output()
        .lines()
        .any(|l| l.starts_with("ERROR forged")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_cap_refuses_the_next_registration() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("c.yaml"), CLUSTER).unwrap();
    let mut command = std::process::Command::new(outrigger_bin());
    command
        .args(["control", "--config-dir"])
        .arg(config.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--max-sidecars",
            "2",
        ])
        .env_remove("RUST_LOG");
    let (proc, line) = spawn_until("control plane", command, |l| {
        l.contains("control plane listening")
    });
    let listen = field(&line, "listen");
    // Two streams that stay open, then a third.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut client = AggregatedDiscoveryClient::connect(format!("http://{listen}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: Some(node(format!("app{i}"))),
            type_url: mesh::TYPE_CLUSTER.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        inbound.message().await.unwrap().expect("the clusters");
        held.push((tx, inbound));
    }
    let third = register(listen, node("app2".into()))
        .await
        .expect("refused");
    assert_eq!(third.code(), tonic::Code::ResourceExhausted);
    assert!(
        third.message().contains("--max-sidecars"),
        "{}",
        third.message()
    );
    drop(proc);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nack_cannot_forge_a_log_line_and_unknown_types_are_logged_a_few_times() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("c.yaml"), CLUSTER).unwrap();
    let control = start_control(config.path());
    let mut client = AggregatedDiscoveryClient::connect(format!("http://{}", control.listen))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    tx.send(DiscoveryRequest {
        node: Some(node("liar".into())),
        type_url: mesh::TYPE_CLUSTER.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = inbound.message().await.unwrap().expect("the clusters");
    tx.send(DiscoveryRequest {
        type_url: mesh::TYPE_CLUSTER.to_string(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(ErrorDetail {
            code: 3,
            message: "bad\n2026-12-02T00:00:00Z ERROR forged: control plane compromised".into(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..2000 {
        tx.send(DiscoveryRequest {
            type_url: format!("type.example.com/Unknown{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let output = control.proc.output();
    assert!(output.contains("NACK"), "{output}");
    assert!(
        !output
            .lines()
            .any(|l| l.contains("ERROR forged") && !l.contains("NACK")),
        "a NACK started a line of its own:\n{output}"
    );
    let unknown = count_lines(&control, "unknown resource type");
    assert!(
        unknown <= 3 + 11,
        "{unknown} warnings for 2000 unknown types"
    );
    assert!(unknown >= 3, "{output}");
}
