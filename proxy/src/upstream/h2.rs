//! The HTTP/2 connection to an endpoint (hyper), opened on first use and shared by every
//! request to it: for h2c apps, and for sidecar peers when the mesh protocol is HTTP/2.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;

use super::endpoint::EndpointAddr;
use crate::http1::client::dial;
use crate::identity::{Alpn, SpiffeId};
use crate::mesh_identity::PeerTls;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type requests and responses carry on the HTTP/2 paths.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// Concurrent streams a sidecar opens on one connection before waiting for one to end.
const MAX_STREAMS: u32 = 128;

#[derive(Default)]
pub(crate) struct H2Connection {
    /// The live connection, and the identity its peer proved (`None`: plaintext).
    sender: Mutex<Option<(SendRequest<Body>, Option<SpiffeId>)>>,
    /// Serialises connecting, so a burst of first requests opens one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl H2Connection {
    /// A handle to send requests on, connecting first if there is no live connection.
    /// Over mTLS given `tls`: a connection whose peer proved another identity is replaced.
    pub(crate) async fn sender(
        &self,
        addr: &EndpointAddr,
        connect_timeout: Duration,
        tls: Option<&PeerTls>,
    ) -> std::io::Result<SendRequest<Body>> {
        let peer = tls.map(|tls| &tls.expected);
        if let Some(sender) = self.live(peer) {
            return Ok(sender);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(sender) = self.live(peer) {
            return Ok(sender);
        }
        let connect = async {
            let stream = dial(addr.resolve().await?, connect_timeout, tls, Alpn::H2).await?;
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(8 << 20)
                .max_concurrent_reset_streams(MAX_STREAMS as usize)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)
        };
        let (sender, connection) = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connect timed out after {}",
                        outrigger_config::duration::format(&connect_timeout)
                    ),
                )
            })??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 upstream connection ended");
            }
        });
        *self.sender.lock() = Some((sender.clone(), peer.cloned()));
        Ok(sender)
    }

    fn live(&self, peer: Option<&SpiffeId>) -> Option<SendRequest<Body>> {
        let guard = self.sender.lock();
        guard
            .as_ref()
            .filter(|(sender, proved)| !sender.is_closed() && proved.as_ref() == peer)
            .map(|(sender, _)| sender.clone())
    }
}
