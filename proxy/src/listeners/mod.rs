//! The listeners: one plain struct per port, each a [`Service`] that handles one request at a
//! time through [`Downstream`], whichever protocol carried it. This module holds what they
//! share: accepting under a connection cap, telling HTTP/2 from HTTP/1.1, and the connection
//! loops (our own HTTP/1.1 engine, hyper for HTTP/2).
//!
//! A new listener is a new file with a `Service` impl, plus one line in `serve.rs`.

pub(crate) mod admin;
pub(crate) mod dapr_http;
pub(crate) mod exchange;
pub(crate) mod mesh_inbound;
mod mtls;
mod rewind;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::answer::Answer;
use crate::blocks::{BlockError, ERR_HEADERS_TOO_LARGE, ERR_MALFORMED_REQUEST};
use crate::http1::server::{ConnLimits, Detected, NextRequest, ServerConn, DISCARD_LIMIT};
use crate::http1::READ_CHUNK;
use crate::identity::{MeshTls, SpiffeId};
use crate::shared::Shared;
use crate::stream::Stream;
use crate::upstream::{ClientFault, Failure};
pub(crate) use exchange::Downstream;
use exchange::H2Exchange;
use rewind::Rewind;

/// Finishes a request whose forward failed: the client's own fault gets its 4xx (or nothing,
/// if it left), anything else `upstream_error`; an answer that had already started is cut
/// off by closing. Returns the status for the metrics (0: none was sent).
pub(crate) async fn answer_failure<D: Downstream>(
    request: &mut D,
    failure: &Failure,
    upstream_error: impl FnOnce() -> BlockError,
) -> u16 {
    if request.responded() {
        tracing::debug!(error = %failure.error, "the answer broke off after it started");
        request.close_after();
        return 0;
    }
    let error = match failure.client_fault() {
        Some(ClientFault::Gone) => {
            request.close_after();
            return 0;
        }
        Some(ClientFault::Malformed) => {
            BlockError::malformed(format!("malformed request: {}", failure.error))
        }
        Some(ClientFault::TooSlow(limit)) => BlockError::new(
            408,
            ERR_MALFORMED_REQUEST,
            format!(
                "the request body stopped arriving: nothing for {}",
                outrigger_config::duration::format(&limit)
            ),
        ),
        None => upstream_error(),
    };
    let status = error.status;
    let mut answer = Answer::from(error);
    if failure.client_fault().is_some() {
        answer = answer.closing();
    }
    request.answer(answer).await;
    status
}

/// One listener's request handling.
pub(crate) trait Service: Send + Sync + 'static {
    /// Whether shutdown waits for this listener's requests (not the admin listener's).
    const DRAINED: bool = true;

    /// Handles one request to its end: answers it, or forwards it and streams the answer.
    fn serve<D: Downstream>(&self, request: &mut D) -> impl Future<Output = ()> + Send;
}

/// What bounds a listener's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerSettings {
    pub(crate) name: &'static str,
    pub(crate) limits: ConnLimits,
    /// At this many open connections the listener stops accepting until one closes.
    pub(crate) max_connections: usize,
    pub(crate) h2_max_concurrent_streams: u32,
}

/// Accepts connections until `stop` turns true, serving each on its own task.
pub(crate) async fn accept<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    settings: ListenerSettings,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    tls: Option<Arc<MeshTls>>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let metrics = Arc::new(shared.metrics.listener(settings.name));
    // Under attack both warnings below would repeat as fast as connections come and go.
    let mut cap_warning = Throttle::default();
    let mut accept_warning = Throttle::default();
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // New connections wait in the kernel's backlog until one of ours closes.
                metrics.cap_reached.inc();
                if let Some(suppressed) = cap_warning.allow() {
                    tracing::warn!(
                        listener = settings.name,
                        max_connections = settings.max_connections,
                        repeats_not_logged = suppressed,
                        "at the connection cap; not accepting until a connection closes"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted.
                    if let Some(suppressed) = accept_warning.allow() {
                        tracing::warn!(listener = settings.name, error = %e, repeats_not_logged = suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        metrics.open.inc();
        let (service, shared, metrics) = (service.clone(), shared.clone(), metrics.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let accepted = Instant::now();
            let stream = match tls {
                None => Some((Stream::Tcp(stream), None)),
                Some(tls) => mtls::accept(stream, &tls, settings.limits.header_timeout).await,
            };
            if let Some((stream, peer_id)) = stream {
                serve_connection(stream, peer_id, accepted, service, settings, shared, permit)
                    .await;
            }
            metrics.open.dec();
        });
    }
}

/// Lets a repeated warning through at most once a second, counting what it held back.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(held back since the last one)` when this one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now - last < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

async fn serve_connection<S: Service>(
    stream: Stream,
    peer_id: Option<Arc<SpiffeId>>,
    accepted: Instant,
    service: Arc<S>,
    settings: ListenerSettings,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
) {
    let from_loopback = stream.peer_addr().is_ok_and(|peer| peer.ip().is_loopback());
    if mtls::negotiated_h2(&stream) {
        return serve_h2(
            Rewind::new(Bytes::new(), stream),
            service,
            settings,
            shared,
            from_loopback,
            peer_id,
        )
        .await;
    }
    let mut conn = ServerConn::new(
        stream,
        BytesMut::with_capacity(READ_CHUNK),
        settings.limits,
        accepted,
    );
    conn.peer_id = peer_id;
    match conn.detect().await {
        Detected::Http1 => serve_h1(conn, &*service, &shared).await,
        Detected::Http2 => {
            let peer_id = conn.peer_id.take();
            let (stream, read) = conn.into_parts();
            serve_h2(
                Rewind::new(read.freeze(), stream),
                service,
                settings,
                shared,
                from_loopback,
                peer_id,
            )
            .await
        }
        Detected::Closed => {}
    }
}

/// The HTTP/1.1 request loop: requests answered in order (pipelined ones too), the body of an
/// unanswered-for body discarded so the next request parses cleanly.
async fn serve_h1<S: Service>(mut conn: ServerConn, service: &S, shared: &Shared) {
    let linger = loop {
        match conn.next_request().await {
            NextRequest::Ready => {}
            NextRequest::Closed => break false,
            NextRequest::HeaderTimeout => {
                conn.keep_alive = false;
                let error = BlockError::new(
                    408,
                    ERR_MALFORMED_REQUEST,
                    format!(
                        "the request head did not arrive within {}",
                        outrigger_config::duration::format(&conn.limits.header_timeout)
                    ),
                );
                let _ = conn.answer(&Answer::from(error).closing()).await;
                break true;
            }
            NextRequest::Bad(e) => {
                conn.keep_alive = false;
                let status = e.status();
                let code = if status == 431 {
                    ERR_HEADERS_TOO_LARGE
                } else {
                    ERR_MALFORMED_REQUEST
                };
                let error = BlockError::new(status, code, e.to_string());
                let _ = conn.answer(&Answer::from(error).closing()).await;
                break true;
            }
        }
        if shared.is_draining() {
            conn.keep_alive = false;
        }
        {
            let _in_flight = S::DRAINED.then(|| shared.drain.enter());
            service.serve(&mut conn).await;
        }
        if !conn.keep_alive {
            break true;
        }
        if !conn.body.is_done() && !conn.discard_body(DISCARD_LIMIT).await {
            break true;
        }
    };
    if linger {
        conn.linger_close().await;
    }
}

/// Streams in flight, finished and cancelled on one HTTP/2 connection: for closing it when
/// idle, and when its client mostly opens streams only to reset them (each cancelled request
/// costs an upstream exchange thrown away).
#[derive(Default)]
struct H2Activity {
    streams: AtomicUsize,
    finished: AtomicUsize,
    cancelled: AtomicUsize,
    flood: tokio::sync::Notify,
}

/// Cancelled streams a connection may pile up before the rule "more cancelled than finished"
/// closes it.
const CANCELLED_STREAMS_ALLOWED: usize = 100;

/// Held by one stream's handler; counts it finished, or cancelled if dropped before its
/// answer was made (the client reset it, or the handler panicked).
struct StreamGuard {
    activity: Arc<H2Activity>,
    answered: bool,
}

impl StreamGuard {
    fn new(activity: Arc<H2Activity>) -> StreamGuard {
        activity.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            activity,
            answered: false,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let activity = &self.activity;
        activity.streams.fetch_sub(1, Ordering::Relaxed);
        if self.answered {
            activity.finished.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cancelled = activity.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if cancelled > CANCELLED_STREAMS_ALLOWED
            && cancelled > activity.finished.load(Ordering::Relaxed)
        {
            activity.flood.notify_one();
        }
    }
}

async fn serve_h2<S: Service>(
    io: Rewind,
    service: Arc<S>,
    settings: ListenerSettings,
    shared: Arc<Shared>,
    from_loopback: bool,
    peer_id: Option<Arc<SpiffeId>>,
) {
    let activity = Arc::new(H2Activity::default());
    let handler = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| {
            let (service, shared, activity) = (service.clone(), shared.clone(), activity.clone());
            let peer_id = peer_id.clone();
            async move {
                let mut guard = StreamGuard::new(activity);
                let mut exchange = H2Exchange::new(request, from_loopback, peer_id);
                {
                    let _in_flight = S::DRAINED.then(|| shared.drain.enter());
                    service.serve(&mut exchange).await;
                }
                guard.answered = true;
                Ok::<_, Infallible>(exchange.into_response())
            }
        })
    };
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .serve_connection(TokioIo::new(io), handler);
    tokio::pin!(connection);
    // Idle: no stream open and none finished over a whole idle timeout, checked four times
    // per timeout (a connection is closed between one and 1.25 idle timeouts after it went
    // quiet).
    let idle = settings.limits.idle_timeout;
    let check = (idle / 4).max(Duration::from_millis(10));
    let mut quiet = Duration::ZERO;
    let mut last_finished = 0;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
                return;
            }
            () = activity.flood.notified() => {
                tracing::warn!(
                    listener = settings.name,
                    cancelled = activity.cancelled.load(Ordering::Relaxed),
                    finished = activity.finished.load(Ordering::Relaxed),
                    "closing an HTTP/2 connection whose client cancels more streams than it lets finish"
                );
                return;
            }
            () = tokio::time::sleep(check) => {
                let finished = activity.finished.load(Ordering::Relaxed);
                if activity.streams.load(Ordering::Relaxed) == 0 && finished == last_finished {
                    quiet += check;
                    if quiet >= idle {
                        break;
                    }
                } else {
                    quiet = Duration::ZERO;
                }
                last_finished = finished;
            }
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttled_warning_passes_once_a_second_and_counts_the_rest() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..50 {
            assert_eq!(throttle.allow(), None);
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(throttle.allow(), Some(50));
        assert_eq!(throttle.allow(), None);
    }
}
