//! What crosses the wire, byte for byte: body framing through two sidecars, pipelining,
//! interim responses, and the limits every listener enforces on its connections (header
//! deadline, keep-alive idle timeout, silent connections, the connection cap).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::raw_app::{count, find, RecordingApp};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// App `b` is a recording app behind its sidecar; `a` calls it.
struct RecordedPair {
    _registry: tempfile::TempDir,
    app: RecordingApp,
    b: SidecarProc,
    a: SidecarProc,
}

/// `plaintext`: the mesh hop without mTLS, for a test that writes to b's mesh port itself.
async fn recorded_pair(plaintext: bool) -> RecordedPair {
    let registry = tempfile::tempdir().expect("tempdir");
    let app = RecordingApp::start().await;
    let flags = |b: SidecarBuilder| if plaintext { b.plaintext() } else { b };
    let b = flags(SidecarBuilder::new("b", registry.path()).app_port(app.port)).start();
    let a = flags(SidecarBuilder::new("a", registry.path())).start();
    RecordedPair {
        _registry: registry,
        app,
        b,
        a,
    }
}

/// A body sent as several chunks (so the client uses chunked transfer coding).
fn chunked_body(parts: &'static [&'static str]) -> reqwest::Body {
    let stream = futures_util::stream::iter(
        parts
            .iter()
            .map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from_static(p.as_bytes()))),
    );
    reqwest::Body::wrap_stream(stream)
}

/// Checks what the app received on its one connection: the upload with exactly one
/// terminating chunk, then the next request starting right after it.
fn assert_one_terminator_then_the_next_request(app: &RecordingApp, next: &str) {
    let received = app.received();
    assert_eq!(
        received.len(),
        1,
        "the app saw {} connections",
        received.len()
    );
    let bytes = &received[0];
    let text = String::from_utf8_lossy(bytes);
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert_eq!(
        count(bytes, b"\r\n0\r\n\r\n"),
        1,
        "terminators in: {text:?}"
    );
    let end = find(bytes, b"\r\n0\r\n\r\n").unwrap() + 7;
    assert!(
        bytes[end..].starts_with(next.as_bytes()),
        "after the upload came: {:?}",
        String::from_utf8_lossy(&bytes[end..])
    );
    let body_start = find(bytes, b"\r\n\r\n").unwrap() + 4;
    let mut data = Vec::new();
    let mut rest = &bytes[body_start..end];
    // Decode the chunks the sidecar wrote: every size line is hex and CRLF-terminated.
    loop {
        let line_end = find(rest, b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
            .expect("a hex chunk size");
        if size == 0 {
            break;
        }
        data.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        assert_eq!(&rest[line_end + 2 + size..line_end + 4 + size], b"\r\n");
        rest = &rest[line_end + 4 + size..];
    }
    assert_eq!(data, b"hello, chunked world");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_upload_through_two_sidecars_ends_with_exactly_one_terminating_chunk() {
    let pair = recorded_pair(false).await;
    let http = client();
    let upload = http
        .post(pair.a.url("/v1.0/invoke/b/method/upload"))
        .body(chunked_body(&["hello", ", chunked", " world"]))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    assert_eq!(upload.text().await.unwrap(), "ok");
    // The sidecar reuses its connection to the app: the next request must parse cleanly.
    let second = http
        .get(pair.a.url("/v1.0/invoke/b/method/second"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    assert_one_terminator_then_the_next_request(&pair.app, "GET /second HTTP/1.1\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_http2_upload_to_the_mesh_port_reaches_the_app_with_one_terminating_chunk() {
    // The pingora bug this engine replaced (cloudflare/pingora#935): an h2 body forwarded as
    // HTTP/1.1 chunks got its terminating chunk twice.
    let pair = recorded_pair(true).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mesh = format!("http://127.0.0.1:{}", pair.b.mesh.port());
    let upload = h2
        .put(format!("{mesh}/x"))
        .body(chunked_body(&["hello, ", "chunked world"]))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    assert_eq!(upload.version(), reqwest::Version::HTTP_2);
    let second = h2.get(format!("{mesh}/second")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_one_terminator_then_the_next_request(&pair.app, "GET /second HTTP/1.1\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_silently_closes_its_keep_alive_connections_fails_no_call() {
    let registry = tempfile::tempdir().unwrap();
    let app = RecordingApp::start_with(true).await;
    let b = SidecarBuilder::new("b", registry.path())
        .app_port(app.port)
        .start();
    let a = SidecarBuilder::new("a", registry.path()).start();
    let http = client();
    for i in 0..50 {
        let response = http
            .post(a.url(&format!("/v1.0/invoke/b/method/call/{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "call {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    // Every call went to the app on a connection of its own, each whole.
    let received = app.received();
    assert_eq!(received.len(), 50);
    for (i, bytes) in received.iter().enumerate() {
        assert!(
            bytes.starts_with(format!("POST /call/{i} HTTP/1.1\r\n").as_bytes()),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    drop(b);
}

/// Reads `n` HTTP/1.1 responses (each with a Content-Length) from `stream`; their bodies.
async fn read_responses(stream: &mut TcpStream, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    while out.len() < n {
        if let Some(head_end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let length = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .map_or(0, |v| v.parse::<usize>().unwrap());
            if buf.len() >= head_end + 4 + length {
                let body = buf[head_end + 4..head_end + 4 + length].to_vec();
                buf.drain(..head_end + 4 + length);
                out.push((head, body));
                continue;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("responses within 20 s")
            .unwrap();
        assert!(read > 0, "closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..read]);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_pipelined_requests_are_answered_in_order() {
    let mesh = start_plaintext_pair();
    for addr in [mesh.a.dapr_http, local(mesh.b.mesh)] {
        let prefix = if addr == mesh.a.dapr_http {
            "/v1.0/invoke/b/method"
        } else {
            ""
        };
        let mut requests = String::new();
        for i in 0..100 {
            requests.push_str(&format!("GET {prefix}/seq/{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        }
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(requests.as_bytes()).await.unwrap();
        let responses = read_responses(&mut stream, 100).await;
        for (i, (head, body)) in responses.iter().enumerate() {
            assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
            let echo: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(echo["path"], format!("/seq/{i}"), "answer {i} out of order");
        }
    }
}

fn local(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

/// Reads until the peer closes (or `limit` passes); what was read, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_trickling_its_header_is_cut_off_at_the_header_deadline() {
    let registry = tempfile::tempdir().unwrap();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--header-timeout")
        .arg("1s")
        .start();
    let mut slow = TcpStream::connect(a.dapr_http).await.unwrap();
    slow.write_all(b"GET /v1.0/healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // One header byte every 2 s: each one arrives, but the head never completes in time.
        for byte in b"Host: x\r\n\r\n" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        slow
    });
    // Everyone else is served meanwhile.
    let healthy = client().get(a.url("/v1.0/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 204);
    let mut slow = trickle.await.unwrap();
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed, "the trickling connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("the request head did not arrive within 1s"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let registry = tempfile::tempdir().unwrap();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--idle-timeout")
        .arg("1s")
        .start();
    let mut stream = TcpStream::connect(a.dapr_http).await.unwrap();
    stream
        .write_all(b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_responses(&mut stream, 1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let (more, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the idle connection stayed open");
    assert_eq!(more, "", "nothing is written on an idle close");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_partial_and_preface_only_connections_to_the_mesh_port_are_closed() {
    let registry = tempfile::tempdir().unwrap();
    let b = SidecarBuilder::new("b", registry.path())
        .plaintext()
        .arg("--header-timeout")
        .arg("1s")
        .arg("--idle-timeout")
        .arg("1s")
        .start();
    let mesh = local(b.mesh);
    let mut silent = TcpStream::connect(mesh).await.unwrap();
    let mut partial = TcpStream::connect(mesh).await.unwrap();
    partial.write_all(b"PRI * HTTP/2").await.unwrap();
    let mut preface = TcpStream::connect(mesh).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    for (name, stream) in [
        ("silent", &mut silent),
        ("partial preface", &mut partial),
        ("preface only", &mut preface),
    ] {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(closed, "the {name} connection stayed open");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_connection_cap_new_connections_wait_and_are_served_once_one_closes() {
    let registry = tempfile::tempdir().unwrap();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--max-connections")
        .arg("3")
        .start();
    let health = b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(a.dapr_http).await.unwrap();
        stream.write_all(health).await.unwrap();
        let (head, _) = read_responses(&mut stream, 1).await.remove(0);
        assert!(head.starts_with("HTTP/1.1 204"), "{head}");
        held.push(stream);
    }
    // The fourth connects (the kernel's backlog takes it) but is not served while three are
    // open.
    let mut waiting = TcpStream::connect(a.dapr_http).await.unwrap();
    waiting.write_all(health).await.unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(1500), waiting.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a fourth connection was served at a cap of three"
    );
    let metrics = client()
        .get(a.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"outrigger_listener_connection_cap_reached_total{listener="dapr_http"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outrigger_listener_connections{listener="dapr_http"} 3"#),
        "{metrics}"
    );
    drop(held.pop());
    let (head, _) = read_responses(&mut waiting, 1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_relayed_through_both_sidecars() {
    let mesh = start_pair();
    let mut stream = TcpStream::connect(mesh.a.dapr_http).await.unwrap();
    stream
        .write_all(b"POST /v1.0/invoke/b/method/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an interim answer before the body is sent")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    stream.write_all(b"hello").await.unwrap();
    let (head, body) = read_responses(&mut stream, 1).await.remove(0);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body"], "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_request_keeps_its_content_length_and_the_connection() {
    let mesh = start_pair();
    let mut stream = TcpStream::connect(mesh.a.dapr_http).await.unwrap();
    stream
        .write_all(b"HEAD /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: x\r\n\r\nGET /v1.0/invoke/b/method/after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The HEAD answer has no body, whatever its Content-Length says; the next answer follows.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while count(&buf, b"\r\n\r\n") < 2 || !buf.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("both answers")
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let (head_answer, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head_answer.starts_with("HTTP/1.1 200"), "{head_answer}");
    assert!(
        head_answer
            .to_ascii_lowercase()
            .contains("content-length: "),
        "{head_answer}"
    );
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains("\"path\":\"/after\""), "{rest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http2_mesh_protocol_carries_calls_and_streamed_bodies() {
    let registry = tempfile::tempdir().unwrap();
    let app = start_echo_app("b");
    let _b = SidecarBuilder::new("b", registry.path())
        .app_port(app.port)
        .start();
    let a = SidecarBuilder::new("a", registry.path())
        .arg("--mesh-protocol")
        .arg("h2")
        .start();
    let http = client();
    let echo: Value = http
        .post(a.url("/v1.0/invoke/b/method/echo?x=1"))
        .header("x-custom", "yes")
        .body("over h2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/echo?x=1");
    assert_eq!(echo["body"], "over h2");
    assert_eq!(echo["headers"]["x-custom"], "yes");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a");
    let upload: Value = http
        .post(a.url("/v1.0/invoke/b/method/upload"))
        .body(chunked_body(&["hello", ", chunked", " world"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upload["bytes"], 20);
}
