//! An app (or a client) that misbehaves must not corrupt anyone else's exchange: a broken
//! answer closes the client's connection instead of splicing the next answer into it, a
//! malformed one becomes a clean 500, a request the app read is never sent twice, a client
//! that leaves frees what it held, and a client that never reads is cut off.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::liar_app::LiarApp;
use support::raw_app::{find, RecordingApp};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The liar app behind sidecar b; sidecar a calls it.
struct Setup {
    _registry: tempfile::TempDir,
    app: LiarApp,
    b: SidecarProc,
    a: SidecarProc,
}

/// Plaintext mesh hops: most of these tests write raw HTTP to b's mesh port.
async fn setup(b_flags: &[&str]) -> Setup {
    setup_with(b_flags, true).await
}

async fn setup_with(b_flags: &[&str], plaintext: bool) -> Setup {
    let registry = tempfile::tempdir().unwrap();
    let app = LiarApp::start().await;
    let mode = |b: SidecarBuilder| if plaintext { b.plaintext() } else { b };
    let mut b = mode(SidecarBuilder::new("b", registry.path()).app_port(app.port));
    for flag in b_flags {
        b = b.arg(flag);
    }
    let b = b.start();
    let a = mode(SidecarBuilder::new("a", registry.path())).start();
    Setup {
        _registry: registry,
        app,
        b,
        a,
    }
}

fn local(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

/// Writes `request`, then reads until the peer closes (10 s at most).
async fn exchange_until_closed(addr: std::net::SocketAddr, request: &[u8]) -> (String, bool) {
    let (text, closed) = raw_exchange(addr, request).await;
    (text, closed)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_the_app_cuts_short_closes_the_client_connection() {
    let setup = setup(&[]).await;
    let request =
        b"GET /cut-short HTTP/1.1\r\nHost: x\r\n\r\nGET /follow HTTP/1.1\r\nHost: x\r\n\r\n";
    let (text, closed) = exchange_until_closed(local(setup.b.mesh), request).await;
    assert!(
        closed,
        "the connection stayed open after a cut answer: {text:?}"
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 10"),
        "{head}"
    );
    // Five of ten bytes, then nothing: the next answer is never read as the rest of this one.
    assert_eq!(body, "hello");
    // Through two sidecars the caller sees the same: a short body and a closed connection.
    let (text, closed) = exchange_until_closed(
        setup.a.dapr_http,
        b"GET /v1.0/invoke/b/method/cut-short HTTP/1.1\r\nHost: x\r\n\r\nGET /v1.0/invoke/b/method/follow HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(closed, "{text:?}");
    assert!(!text.contains("ok /follow"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_answer_is_a_clean_500_and_the_next_request_is_unharmed() {
    let setup = setup(&[]).await;
    let mut stream = TcpStream::connect(local(setup.b.mesh)).await.unwrap();
    for path in [
        "/bad-chunk",
        "/status-zero",
        "/gzip-chunked",
        "/interim-flood",
    ] {
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /follow HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 8192];
        while !text.contains("ok /follow") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answers; got {text:?}"))
                .unwrap();
            assert!(n > 0, "{path}: closed after {text:?}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Interim answers (the flood's first 32) may come before the final one.
        let mut final_answer = text.as_str();
        while let Some(rest) = final_answer.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n") {
            final_answer = rest;
        }
        let text = final_answer.to_string();
        assert!(text.starts_with("HTTP/1.1 500"), "{path}: {text}");
        assert!(text.contains("ERR_DIRECT_INVOKE"), "{path}: {text}");
        let second = &text[text.find("\r\n\r\n").unwrap()..];
        let follow = &second[second.find("HTTP/1.1").unwrap()..];
        assert!(follow.starts_with("HTTP/1.1 200"), "{path}: {follow}");
    }
    let output = setup.b.proc.output();
    assert!(!output.contains("panicked"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_below_100_from_the_app_is_500_to_an_http2_client_too() {
    let setup = setup(&[]).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(format!(
            "http://127.0.0.1:{}/status-zero",
            setup.b.mesh.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("response status 0 is not between 100 and 599"),
        "{body}"
    );
    let output = setup.b.proc.output();
    assert!(!output.contains("panicked"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_the_app_read_is_never_sent_twice_but_a_get_is_retried_once() {
    let setup = setup(&[]).await;
    let http = client();
    let url = |path: &str| setup.a.url(&format!("/v1.0/invoke/b/method{path}"));
    // Warm the pooled connection to the app, then have the app read the next request and
    // close without answering.
    assert_eq!(http.get(url("/warm")).send().await.unwrap().status(), 200);
    let post = http
        .post(url("/read-then-close"))
        .body("transfer 100")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 500);
    assert_eq!(
        setup.app.count("/read-then-close"),
        1,
        "the POST was sent twice"
    );
    assert_eq!(http.get(url("/warm")).send().await.unwrap().status(), 200);
    let get = http.get(url("/read-then-close")).send().await.unwrap();
    assert_eq!(get.status(), 500);
    // The GET went out on the warm connection and, once more, on a fresh one.
    assert_eq!(setup.app.count("/read-then-close"), 3);
}

async fn metric(sidecar: &SidecarProc, line_prefix: &str) -> Option<f64> {
    let text = client()
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_resets_most_of_its_streams_is_disconnected() {
    let setup = setup(&[]).await;
    let tcp = TcpStream::connect(local(setup.b.mesh)).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client;
    let mut opened = 0;
    for _ in 0..2000 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let request = http::Request::get("http://b/silent").body(()).unwrap();
        let Ok((_response, mut stream)) = client.send_request(request, true) else {
            break;
        };
        opened += 1;
        // Let the sidecar accept the stream and start its exchange with the app, then cancel
        // it. (Streams reset before they are accepted are h2's own limit, reached sooner.)
        tokio::time::sleep(Duration::from_millis(3)).await;
        stream.send_reset(h2::Reason::CANCEL);
        if driver.is_finished() {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        ended.is_ok(),
        "the connection survived {opened} cancelled streams"
    );
    assert!((100..2000).contains(&opened), "opened {opened}");
    assert!(
        setup
            .b
            .proc
            .output()
            .contains("cancels more streams than it lets finish"),
        "{}",
        setup.b.proc.output()
    );
}

/// Polls `metric` until it reads `want` (or 10 s pass); what it read last.
async fn metric_settles(sidecar: &SidecarProc, line_prefix: &str, want: f64) -> Option<f64> {
    let mut last = None;
    for _ in 0..100 {
        last = metric(sidecar, line_prefix).await;
        if last == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_leave_while_the_app_is_silent_free_what_they_held() {
    leave_while_the_app_is_silent(setup(&[]).await).await;
}

/// Under mTLS the callee's sidecar cannot peek at its caller's socket (a close_notify is
/// bytes); it must still notice the caller left and let go of the app.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_leave_free_what_they_held_over_an_mtls_hop_too() {
    leave_while_the_app_is_silent(setup_with(&[], false).await).await;
}

async fn leave_while_the_app_is_silent(setup: Setup) {
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(setup.a.dapr_http).await.unwrap();
        stream
            .write_all(b"GET /v1.0/invoke/b/method/silent HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        clients.push(stream);
    }
    assert_eq!(
        metric_settles(&setup.a, "outrigger_requests_in_flight ", 20.0).await,
        Some(20.0)
    );
    drop(clients);
    // Both sidecars notice and let go: no request in flight, no connection held.
    assert_eq!(
        metric_settles(&setup.a, "outrigger_requests_in_flight ", 0.0).await,
        Some(0.0)
    );
    assert_eq!(
        metric_settles(&setup.b, "outrigger_requests_in_flight ", 0.0).await,
        Some(0.0)
    );
    assert_eq!(
        metric_settles(
            &setup.a,
            r#"outrigger_listener_connections{listener="dapr_http"} "#,
            0.0
        )
        .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_answer_is_cut_off_after_the_idle_timeout() {
    let registry = tempfile::tempdir().unwrap();
    let app = start_echo_app("b");
    let b = SidecarBuilder::new("b", registry.path())
        .plaintext()
        .app_port(app.port)
        .arg("--idle-timeout")
        .arg("1s")
        .start();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(local(b.mesh)).await.unwrap();
    stream
        .write_all(b"GET /download?bytes=200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        metric_settles(
            &b,
            r#"outrigger_listener_connections{listener="mesh"} "#,
            1.0
        )
        .await,
        Some(1.0)
    );
    // Never reading: the sidecar gives up on the stalled client and closes.
    assert_eq!(
        metric_settles(
            &b,
            r#"outrigger_listener_connections{listener="mesh"} "#,
            0.0
        )
        .await,
        Some(0.0)
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_whose_body_stops_arriving_gets_408_not_a_blamed_app() {
    let registry = tempfile::tempdir().unwrap();
    let app = start_echo_app("b");
    let b = SidecarBuilder::new("b", registry.path())
        .plaintext()
        .app_port(app.port)
        .arg("--idle-timeout")
        .arg("1s")
        .start();
    let (text, closed) = raw_exchange(
        local(b.mesh),
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this much",
    )
    .await;
    assert!(closed, "{text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("the request body stopped arriving"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http10_request_reaches_the_app_with_a_host() {
    let registry = tempfile::tempdir().unwrap();
    let app = RecordingApp::start().await;
    let b = SidecarBuilder::new("b", registry.path())
        .plaintext()
        .app_port(app.port)
        .start();
    let (text, _) = raw_exchange(local(b.mesh), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let received = app.received().concat();
    let head = &received[..find(&received, b"\r\n\r\n").unwrap()];
    let head = String::from_utf8_lossy(head);
    assert!(head.starts_with("GET /old HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: 127.0.0.1:{}", app.port)),
        "{head}"
    );
}
