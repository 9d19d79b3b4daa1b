//! One HTTP/1.1 connection to an upstream (another sidecar's mesh port, or the local app),
//! kept in its endpoint's pool between exchanges.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::head::ResponseHead;

/// The largest response head accepted from an upstream.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub(crate) struct ClientConn {
    pub(crate) stream: TcpStream,
    pub(crate) rbuf: BytesMut,
    pub(crate) wbuf: Vec<u8>,
    pub(crate) head: ResponseHead,
    /// Whether this connection carried an exchange before (a failure on it before any answer
    /// may be the peer closing an idle connection, and worth one retry on a fresh one).
    pub(crate) reused: bool,
    /// When it was last put back in its pool.
    pub(crate) idle_since: Instant,
}

impl ClientConn {
    /// Connects with TCP_NODELAY, within `limit`.
    pub(crate) async fn connect(addr: SocketAddr, limit: Duration) -> std::io::Result<ClientConn> {
        let stream = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connect timed out after {}",
                        outrigger_config::duration::format(&limit)
                    ),
                ))
            }
        };
        stream.set_nodelay(true)?;
        Ok(ClientConn {
            stream,
            rbuf: BytesMut::with_capacity(super::READ_CHUNK),
            wbuf: Vec::with_capacity(4096),
            head: ResponseHead::default(),
            reused: false,
            idle_since: Instant::now(),
        })
    }

    /// Whether an idle connection is still usable: the peer has not closed it nor sent
    /// anything unasked. Asks the reactor's cached readiness, so it costs no system call.
    pub(crate) fn is_idle_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => self.rbuf.is_empty(),
            // Readiness can be left over from the last response's read; a read that would
            // block proves the connection quiet. EOF, an error or unasked bytes: not usable.
            Poll::Ready(Ok(_)) => {
                let mut probe = [0u8; 1];
                self.rbuf.is_empty()
                    && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => false,
        }
    }
}
