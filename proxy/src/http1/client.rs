//! One HTTP/1.1 connection to an upstream (another sidecar's mesh port, or the local app),
//! kept in its endpoint's pool between exchanges.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use tokio_rustls::TlsConnector;

use crate::identity::{Alpn, MeshTls};
use crate::mesh_identity::PeerTls;
use crate::stream::Stream;
use tokio::time::Instant;

use super::head::ResponseHead;

/// The largest response head accepted from an upstream.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub(crate) struct ClientConn {
    pub(crate) stream: Stream,
    pub(crate) rbuf: BytesMut,
    pub(crate) wbuf: Vec<u8>,
    pub(crate) head: ResponseHead,
    /// Whether this connection carried an exchange before (a failure on it before any answer
    /// may be the peer closing an idle connection, and worth one retry on a fresh one).
    pub(crate) reused: bool,
    /// When it was last put back in its pool.
    pub(crate) idle_since: Instant,
    /// The identity the peer proved in the TLS handshake (`None`: plaintext).
    pub(crate) peer: Option<crate::identity::SpiffeId>,
}

/// Connects with TCP_NODELAY and, given `tls`, completes an mTLS handshake in which the peer
/// must prove the identity `tls` expects — all within `limit`.
pub(crate) async fn dial(
    addr: SocketAddr,
    limit: Duration,
    tls: Option<&PeerTls>,
    alpn: Alpn,
) -> std::io::Result<Stream> {
    let connect = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let Some(tls) = tls else {
            return Ok(Stream::Tcp(stream));
        };
        let config = match alpn {
            Alpn::Http1 => tls.http1.clone(),
            Alpn::H2 => tls.h2.clone(),
        };
        let stream = TlsConnector::from(config)
            .connect(MeshTls::server_name(), stream)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "mTLS handshake with {addr} (expecting {}): {e}",
                        tls.expected
                    ),
                )
            })?;
        Ok(Stream::Tls(Box::new(stream.into())))
    };
    match tokio::time::timeout(limit, connect).await {
        Ok(stream) => stream,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "connect timed out after {}",
                outrigger_config::duration::format(&limit)
            ),
        )),
    }
}

impl ClientConn {
    /// Connects with TCP_NODELAY, within `limit` (over mTLS given `tls`).
    pub(crate) async fn connect(
        addr: SocketAddr,
        limit: Duration,
        tls: Option<&PeerTls>,
    ) -> std::io::Result<ClientConn> {
        let stream = dial(addr, limit, tls, Alpn::Http1).await?;
        let mut conn = ClientConn::over(stream);
        conn.peer = tls.map(|tls| tls.expected.clone());
        Ok(conn)
    }

    /// A new connection over `stream` (a TLS one, say), never used yet.
    pub(crate) fn over(stream: Stream) -> ClientConn {
        ClientConn {
            stream,
            rbuf: BytesMut::with_capacity(super::READ_CHUNK),
            wbuf: Vec::with_capacity(4096),
            head: ResponseHead::default(),
            reused: false,
            idle_since: Instant::now(),
            peer: None,
        }
    }

    /// Whether an idle connection is still usable: the peer has not closed it nor sent
    /// anything unasked. Asks the reactor's cached readiness, so it costs no system call.
    pub(crate) fn is_idle_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let tcp = self.stream.tcp();
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => self.rbuf.is_empty(),
            // Readiness can be left over from the last response's read; a read that would
            // block proves the connection quiet. EOF, an error or unasked bytes: not usable.
            Poll::Ready(Ok(_)) => {
                let mut probe = [0u8; 1];
                self.rbuf.is_empty()
                    && match &self.stream {
                        Stream::Tcp(stream) => {
                            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                        }
                        // TLS bytes must not be taken from under the session: only look.
                        Stream::Tls(_) => {
                            let mut probe = tokio::io::ReadBuf::new(&mut probe);
                            tcp.poll_peek(&mut cx, &mut probe).is_pending()
                        }
                    }
            }
            Poll::Ready(Err(_)) => false,
        }
    }
}
