//! Mutual TLS between sidecars, standalone (no control plane, no flags): identities from the
//! local certificate authority, plaintext refused on the mesh port, the callee app told the
//! caller's verified identity, certificates from elsewhere refused, renewal under load.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outrigger_proxy::identity::{Alpn, Authority, LocalAuthority, Material, MeshTls, SpiffeId};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn id(app: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", app).unwrap()
}

/// A TLS client holding `material`, expecting the server to prove `expected`.
async fn handshake(
    mesh: std::net::SocketAddr,
    material: Material,
    expected: &SpiffeId,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tls = MeshTls::new(material);
    let connector = TlsConnector::from(tls.client_config(expected, Alpn::Http1));
    let tcp = TcpStream::connect(mesh).await?;
    let mut stream = connector.connect(MeshTls::server_name(), tcp).await?;
    // TLS 1.3: the server checks the client certificate after the client's handshake ends, so
    // a refusal shows on the first exchange.
    stream
        .write_all(b"GET /probe HTTP/1.1\r\nhost: b\r\n\r\n")
        .await?;
    stream.flush().await?;
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await?;
    Ok(stream)
}

/// Material for `app` issued by the local CA the sidecars of `registry` use.
fn local_material(registry: &Path, app: &str, ttl: Duration) -> Material {
    let ca = LocalAuthority::open_or_create(&registry.join("ca"), "cluster.local").unwrap();
    Material::issue_local(&ca, &id(app), ttl).unwrap()
}

/// Reads an HTTP/1.1 response with a content-length body from `stream`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (String, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if body.len() >= length {
                return (
                    head.to_string(),
                    serde_json::from_str(&body[..length]).unwrap(),
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_sidecars_call_each_other_over_mtls_and_the_callee_sees_the_verified_caller() {
    let mesh = start_pair();
    // App a's own claim to be someone else goes nowhere: the callee's sidecar writes the
    // identity a's certificate proved.
    let response = client()
        .get(mesh.a.url("/v1.0/invoke/b/method/who"))
        .header("dapr-caller-app-id", "admin")
        .header("dapr-caller-namespace", "kube-system")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a", "{echo}");
    assert_eq!(
        echo["headers"]["dapr-caller-namespace"], "default",
        "{echo}"
    );
    assert_eq!(echo["headers"]["dapr-callee-app-id"], "b", "{echo}");
    // The admin listener says who the sidecar is and until when.
    let dump = get_json(mesh.a.admin_url("/config_dump")).await;
    assert_eq!(
        dump["identity"]["spiffe_id"], "spiffe://cluster.local/ns/default/a",
        "{dump:#}"
    );
    let lifetime = dump["identity"]["not_after_unix"].as_u64().unwrap()
        - dump["identity"]["not_before_unix"].as_u64().unwrap();
    assert_eq!(
        lifetime,
        24 * 3600 + 15 * 60,
        "24 h, plus the 15 min skew allowance"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_to_the_mesh_port_is_refused_with_a_clear_answer() {
    let mesh = start_pair();
    let (answer, closed) = raw_exchange(
        mesh.b.mesh,
        b"GET /who HTTP/1.1\r\nhost: b\r\ndapr-caller-app-id: admin\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains(r#""errorCode":"ERR_MTLS_REQUIRED""#),
        "{answer}"
    );
    assert!(closed, "the connection is closed after the answer");
    assert_eq!(mesh.app_b.requests().await, 0, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mesh_port_presents_the_apps_spiffe_id_and_replaces_a_forged_caller_header() {
    let mesh = start_pair();
    // A workload of the same trust domain (its certificate from the same local CA).
    let material = local_material(mesh.registry.path(), "intruder", Duration::from_secs(600));
    let tls = MeshTls::new(material);
    let connector = TlsConnector::from(tls.client_config(&id("b"), Alpn::Http1));
    let tcp = TcpStream::connect(mesh.b.mesh).await.unwrap();
    let mut stream = connector
        .connect(MeshTls::server_name(), tcp)
        .await
        .unwrap();
    let (_, session) = stream.get_ref();
    assert_eq!(
        outrigger_proxy::identity::peer_id(session).map(|p| p.to_uri()),
        Some("spiffe://cluster.local/ns/default/b".to_string()),
        "the server's certificate names b in its URI SAN"
    );
    stream
        .write_all(b"GET /who HTTP/1.1\r\nhost: b\r\ndapr-caller-app-id: admin\r\nDAPR-Caller-App-Id: root\r\ndapr_caller_app_id: admin\r\ndapr-caller-namespace: kube-system\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let (head, echo) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "intruder", "{echo}");
    assert_eq!(
        echo["headers"]["dapr-caller-namespace"], "default",
        "{echo}"
    );
    // The underscore spelling, which CGI-style frameworks read as the same header, is dropped.
    assert!(echo["headers"]["dapr_caller_app_id"].is_null(), "{echo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_from_another_trust_domain_or_expired_is_refused() {
    let mesh = start_pair();
    // Another CA, another trust domain.
    let foreign = Authority::generate("evil.example").unwrap();
    let evil = SpiffeId::new("evil.example", "default", "a").unwrap();
    let material = Material::issue_local(&foreign, &evil, Duration::from_secs(600))
        .unwrap()
        .with_bundle(vec![
            foreign.root_der().clone(),
            LocalAuthority::open_or_create(&mesh.registry.path().join("ca"), "cluster.local")
                .unwrap()
                .root_der()
                .clone(),
        ])
        .unwrap();
    let refused = handshake(mesh.b.mesh, material, &id("b")).await;
    assert!(
        refused.is_err(),
        "a foreign client certificate was accepted"
    );

    // The right CA, but a certificate that expired a moment ago.
    let material = local_material(mesh.registry.path(), "a", Duration::from_secs(1));
    // Validity is in whole seconds: past 2 s the certificate has expired whatever the rounding.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expired = handshake(mesh.b.mesh, material, &id("b")).await;
    assert!(
        expired.is_err(),
        "an expired client certificate was accepted"
    );

    // A valid one of the same CA is let in (the two refusals are about the certificates).
    let material = local_material(mesh.registry.path(), "a", Duration::from_secs(600));
    handshake(mesh.b.mesh, material, &id("b"))
        .await
        .expect("a valid certificate is accepted");
    assert_eq!(
        mesh.app_b.requests().await,
        1,
        "only the valid caller reached the app"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_refuses_a_server_that_proves_another_apps_identity() {
    let registry = tempfile::tempdir().unwrap();
    let app_c = start_echo_app("c");
    let c = SidecarBuilder::new("c", registry.path())
        .app_port(app_c.port)
        .start();
    let a = SidecarBuilder::new("a", registry.path()).start();
    // A lying registry entry: "b" lives at c's mesh port.
    std::fs::write(
        registry.path().join("b-liar.json"),
        serde_json::json!({
            "app_id": "b",
            "mesh_address": c.mesh.to_string(),
            "dapr_http_port": 1,
            "pid": std::process::id(),
            "started_unix_ms": 0,
        })
        .to_string(),
    )
    .unwrap();
    let response = client()
        .get(a.url("/v1.0/invoke/b/method/who"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("expecting spiffe://cluster.local/ns/default/b"),
        "{message}"
    );
    assert_eq!(
        app_c.requests().await,
        0,
        "c's app never saw a call meant for b"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_off_the_mesh_hop_is_plaintext_and_says_so() {
    let registry = tempfile::tempdir().unwrap();
    let app_b = start_echo_app("b");
    let b = SidecarBuilder::new("b", registry.path())
        .app_port(app_b.port)
        .arg("--mtls")
        .arg("off")
        .start();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--mtls")
        .arg("off")
        .start();
    let response = client()
        .get(a.url("/v1.0/invoke/b/method/who"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (answer, _) = raw_exchange(b.mesh, b"GET /who HTTP/1.1\r\nhost: b\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        b.proc.output().contains("mTLS is OFF"),
        "{}",
        b.proc.output()
    );
    assert!(!registry.path().join("ca").exists(), "no CA is made");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_renewed_every_second_under_load_fail_no_request() {
    let registry = tempfile::tempdir().unwrap();
    let app_b = start_echo_app("b");
    let b = SidecarBuilder::new("b", registry.path())
        .app_port(app_b.port)
        .arg("--cert-ttl")
        .arg("2s")
        .start();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--cert-ttl")
        .arg("2s")
        .start();
    let first = served_certificate(&b, registry.path()).await;
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, failed, done) = (
                a.url("/v1.0/invoke/b/method/x"),
                failed.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                // A new connection now and then, so fresh handshakes meet fresh certificates.
                while tokio::time::Instant::now() < deadline {
                    let http = reqwest::Client::new();
                    for _ in 0..20 {
                        match http.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let last = served_certificate(&b, registry.path()).await;
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across renewals"
    );
    assert!(done.load(Ordering::Relaxed) > 100);
    assert_ne!(first, last, "b's certificate was renewed");
    // A 2 s certificate is renewed at about half its life (X.509 validity is in whole
    // seconds, so a 2 s life is 1–2 s): 5 to 30 renewals in 10 s, not a renewal storm.
    let renewed = b
        .proc
        .output()
        .matches("workload certificate renewed")
        .count();
    assert!((5..=30).contains(&renewed), "{renewed} renewals in 10 s");
}

/// The DER of the certificate `b`'s mesh port presents now.
async fn served_certificate(b: &SidecarProc, registry: &Path) -> Vec<u8> {
    let material = local_material(registry, "probe", Duration::from_secs(600));
    let stream = handshake(b.mesh, material, &id("b")).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
