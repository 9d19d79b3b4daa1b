//! Malformed requests get a precise 400/431, the connection is closed, and the sidecar keeps
//! serving everyone else. Sent as raw bytes, since a well-behaved client cannot send them.

mod support;

use support::*;

async fn assert_refused(
    addr: std::net::SocketAddr,
    request: &[u8],
    status_line: &str,
    detail: &str,
) {
    let (response, closed) = raw_exchange(addr, request).await;
    assert!(
        response.starts_with(status_line),
        "expected {status_line:?}, got: {response}"
    );
    assert!(
        response.contains(detail),
        "expected {detail:?} in: {response}"
    );
    assert!(closed, "the connection stayed open after: {response}");
    // ...and the sidecar still answers a good request on a fresh connection.
    let (healthy, _) = raw_exchange(
        addr,
        b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        healthy.starts_with("HTTP/1.1 204"),
        "after a bad request: {healthy}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_is_400() {
    let mesh = start_pair();
    let request = b"POST /v1.0/invoke/b/method/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_refused(
        mesh.a.dapr_http,
        request,
        "HTTP/1.1 400",
        "both Content-Length and Transfer-Encoding",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_different_content_lengths_are_400() {
    let mesh = start_pair();
    let request = b"POST /v1.0/invoke/b/method/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    assert_refused(
        mesh.a.dapr_http,
        request,
        "HTTP/1.1 400",
        "Connection: close",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64_kb_header_is_431() {
    let mesh = start_pair();
    let mut request = b"GET /v1.0/invoke/b/method/echo HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 64 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    assert_refused(
        mesh.a.dapr_http,
        &request,
        "HTTP/1.1 431",
        "ERR_HEADERS_TOO_LARGE",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunk_is_400() {
    let mesh = start_pair();
    let request = b"POST /v1.0/invoke/b/method/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    assert_refused(
        mesh.a.dapr_http,
        request,
        "HTTP/1.1 400",
        "ERR_MALFORMED_REQUEST",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_instead_of_http_is_400() {
    let mesh = start_pair();
    assert_refused(
        mesh.a.dapr_http,
        b"GARBAGE\r\n\r\n",
        "HTTP/1.1 400",
        "Connection: close",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mesh_listener_refuses_the_same_malformed_requests() {
    let mesh = start_plaintext_pair();
    let mesh_addr = std::net::SocketAddr::from(([127, 0, 0, 1], mesh.b.mesh.port()));
    let request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (response, closed) = raw_exchange(mesh_addr, request).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(closed);
    // The sidecars are still up and serving invocations.
    let ok = client()
        .get(mesh.a.url("/v1.0/invoke/b/method/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_length_list_is_400_even_when_the_values_agree() {
    let mesh = start_pair();
    let request =
        b"POST /v1.0/invoke/b/method/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello";
    assert_refused(
        mesh.a.dapr_http,
        request,
        "HTTP/1.1 400",
        r#"Content-Length \"5, 5\" is not a single decimal number"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_host_is_400() {
    let mesh = start_plaintext_pair();
    assert_refused(
        mesh.a.dapr_http,
        b"GET /v1.0/invoke/b/method/echo HTTP/1.1\r\nX-Other: 1\r\n\r\n",
        "HTTP/1.1 400",
        "HTTP/1.1 request without a Host header",
    )
    .await;
    let mesh_addr = std::net::SocketAddr::from(([127, 0, 0, 1], mesh.b.mesh.port()));
    let (response, closed) = raw_exchange(mesh_addr, b"GET /echo HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("without a Host header"), "{response}");
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_coding_other_than_chunked_is_501() {
    let mesh = start_pair();
    assert_refused(
        mesh.a.dapr_http,
        b"POST /v1.0/invoke/b/method/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 501",
        "only \\\"chunked\\\" is",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_is_501_on_every_listener() {
    let mesh = start_plaintext_pair();
    for request in [
        &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
        b"CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        assert_refused(
            mesh.a.dapr_http,
            request,
            "HTTP/1.1 501",
            "CONNECT is not supported",
        )
        .await;
        let mesh_addr = std::net::SocketAddr::from(([127, 0, 0, 1], mesh.b.mesh.port()));
        let (response, closed) = raw_exchange(mesh_addr, request).await;
        assert!(response.starts_with("HTTP/1.1 501"), "{response}");
        assert!(closed);
    }
}
