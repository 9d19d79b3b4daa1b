//! Idle HTTP/1.1 connections to one endpoint, last in, first out: the most recently used
//! connection is the warmest and the least likely to have been closed by the peer.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::http1::client::ClientConn;
use crate::identity::SpiffeId;

/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused. Shorter than the
/// listeners' default keep-alive timeout (60 s), so a sidecar drops its end before the peer.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

#[derive(Default)]
pub(crate) struct Http1Pool {
    // Boxed: a connection (a few hundred bytes of buffers and head) moves in and out of the
    // pool on every request, and a box moves as one pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ClientConn>>>,
}

impl Http1Pool {
    /// The most recently used idle connection that is still usable and whose peer proved
    /// `peer` (`None`: a plaintext one).
    pub(crate) fn take(&self, peer: Option<&SpiffeId>) -> Option<Box<ClientConn>> {
        let mut idle = self.idle.lock();
        while let Some(conn) = idle.pop() {
            if conn.idle_since.elapsed() < IDLE_TIMEOUT
                && conn.peer.as_ref() == peer
                && conn.is_idle_usable()
            {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection that finished an exchange cleanly.
    pub(crate) fn put(&self, mut conn: Box<ClientConn>) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Drops idle connections that are too old or closed by the peer.
    pub(crate) fn sweep(&self) {
        self.idle
            .lock()
            .retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT && c.is_idle_usable());
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_connection_returned_is_taken_first_and_closed_ones_are_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Http1Pool::default();
        let first = ClientConn::connect(addr, Duration::from_secs(1), None)
            .await
            .unwrap();
        let (server_first, _) = listener.accept().await.unwrap();
        let second = ClientConn::connect(addr, Duration::from_secs(1), None)
            .await
            .unwrap();
        let (_server_second, _) = listener.accept().await.unwrap();
        let second_port = second.stream.local_addr().unwrap().port();
        pool.put(Box::new(first));
        pool.put(Box::new(second));
        let taken = pool.take(None).unwrap();
        assert_eq!(taken.stream.local_addr().unwrap().port(), second_port);
        pool.put(taken);
        // The peer closes the first connection: it is never handed out again.
        drop(server_first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep();
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(
            pool.take(None).unwrap().stream.local_addr().unwrap().port(),
            second_port
        );
        assert!(pool.take(None).is_none());
    }
}
