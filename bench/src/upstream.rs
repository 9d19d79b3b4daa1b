//! The upstream app every scenario ends at: a small, fast HTTP/1.1 + h2c server answering every
//! request with 200 and a fixed body, so the measurements are about the hops, not the app.
//! Runs as `outrigger bench --serve-upstream PORT` in its own (pinned) process.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// How a served upstream misbehaves (`outrigger bench --resilience` makes one instance slow or
/// failing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Misbehaviour {
    /// Added to every answer.
    pub delay: std::time::Duration,
    /// Every n-th answer is a 503 (0: never).
    pub fail_every: u64,
}

/// Serves forever on 127.0.0.1:`port` with a `body_bytes` response body, slow or failing as
/// `misbehaviour` says.
pub fn serve_with(port: u16, body_bytes: usize, misbehaviour: Misbehaviour) -> anyhow::Result<()> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let body = Bytes::from(vec![b'x'; body_bytes]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (body, count) = (body.clone(), count.clone());
                    async move {
                        // Drain the request body so keep-alive works for POSTs too.
                        let _ = req.into_body().collect().await;
                        if !misbehaviour.delay.is_zero() {
                            tokio::time::sleep(misbehaviour.delay).await;
                        }
                        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        let mut response = Response::new(Full::new(body));
                        if misbehaviour.fail_every > 0 && n % misbehaviour.fail_every == 0 {
                            *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
