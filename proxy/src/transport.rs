//! How the sidecar reaches its peers: other sidecars' mesh listeners and the local app.
//!
//! Sidecar-to-sidecar traffic is HTTP/2, multiplexed over pooled connections (pingora keys
//! its pool by peer). Today it is plain TCP with prior knowledge (h2c); mTLS will set the
//! peer's TLS fields and SPIFFE verification here, and nowhere else.

use std::net::SocketAddr;
use std::time::Duration;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;

use crate::options::AppProtocol;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Concurrent requests per pooled sidecar-to-sidecar connection.
const MESH_STREAMS_PER_CONNECTION: usize = 128;
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Resolves a `host:port` endpoint address. IP literals (the common case: registry entries and
/// most static endpoints) never touch the resolver.
pub(crate) async fn resolve(address: &str) -> std::io::Result<SocketAddr> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{address} resolved to no address"),
            )
        })
}

/// A peer for another sidecar's mesh listener.
pub(crate) fn mesh_peer(address: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(address, false, String::new());
    peer.options.alpn = ALPN::H2;
    peer.options.max_h2_streams = MESH_STREAMS_PER_CONNECTION;
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    // 4 MiB windows keep large bodies flowing at loopback speed without buffering them whole.
    peer.options.h2_stream_window_size = Some(4 << 20);
    peer.options.h2_connection_window_size = Some(8 << 20);
    peer
}

/// A peer for the local app.
pub(crate) fn app_peer(port: u16, protocol: AppProtocol) -> HttpPeer {
    let mut peer = HttpPeer::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        false,
        String::new(),
    );
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    if protocol == AppProtocol::H2c {
        peer.options.alpn = ALPN::H2;
        peer.options.max_h2_streams = MESH_STREAMS_PER_CONNECTION;
    }
    peer
}
