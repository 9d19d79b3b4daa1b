//! The server side of the mesh hop under mTLS: every connection must complete a TLS 1.3
//! handshake with a client certificate from this trust domain before a byte of HTTP is read.
//! A plaintext request gets one clear answer saying so, then the connection closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::identity::{peer_id, MeshTls, SpiffeId};
use crate::stream::Stream;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The longest a handshake may take (or `--header-timeout`, when shorter): a peer that has
/// not proved who it is holds a connection slot for no longer than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to plaintext on a port that takes mTLS only.
const PLAINTEXT_REFUSED: &str = r#"{"errorCode":"ERR_MTLS_REQUIRED","message":"this is a mesh port: it accepts mutual TLS from other sidecars only, not plaintext. Call apps through your own sidecar's Dapr API (http://127.0.0.1:3500/v1.0/invoke/<app-id>/method/...)"}"#;

/// Completes the TLS handshake within `limit`; the stream and the identity the client's
/// certificate proved, or `None` when the connection is refused (plaintext, a certificate
/// from outside the trust bundle or domain, an expired one, too slow).
pub(crate) async fn accept(
    stream: TcpStream,
    tls: &MeshTls,
    limit: Duration,
) -> Option<(Stream, Option<Arc<SpiffeId>>)> {
    let handshake = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            refuse_plaintext(stream).await;
            return None;
        }
        let acceptor = TlsAcceptor::from(tls.server_config());
        match acceptor.accept(stream).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::debug!(error = %e, "mTLS handshake refused");
                None
            }
        }
    };
    let stream = tokio::time::timeout(limit.min(HANDSHAKE_TIMEOUT), handshake)
        .await
        .ok()??;
    let peer = peer_id(stream.get_ref().1).map(Arc::new);
    if peer.is_none() {
        // The verifier requires a SPIFFE id; a handshake without one is a bug, not a peer.
        tracing::warn!("mTLS handshake completed without a peer identity; closing");
        return None;
    }
    Some((Stream::Tls(Box::new(stream.into())), peer))
}

async fn refuse_plaintext(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PLAINTEXT_REFUSED}",
        PLAINTEXT_REFUSED.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read what the client sent before closing: closing with unread bytes makes the kernel
    // reset the connection, which can destroy the answer before the client reads it.
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while left > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// Whether the client chose HTTP/2 in ALPN.
pub(crate) fn negotiated_h2(stream: &Stream) -> bool {
    match stream {
        Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        Stream::Tcp(_) => false,
    }
}
