//! A small HTTP app for trying Outrigger and for its end-to-end tests.
//!
//! Serves HTTP/1.1 and h2c on one port. `cargo run --example echo_app -- 8081 [name]`
//! (port 0 picks a free one; the chosen address is printed as `listening on ADDR`).
//!
//! - any path: `200` with a JSON echo of method, path and query, headers and body
//! - `/status/{code}`: that status, with the same echo
//! - `/upload`: reads the body as it arrives and answers `{"bytes": N}`
//! - `/download?bytes=N`: streams N bytes
//! - `/slow?ms=N`: answers after N milliseconds
//! - `/echo-app/requests`: how many requests it served before this one, not counting the
//!   sidecar's own `/dapr/*` calls (`{"requests": N}`)
//!
//! `ECHO_DELAY_MS=N` in the environment delays every answer by N milliseconds (a slow
//! instance, for the load-balancing tests).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(8081);
    let name = args.next().unwrap_or_else(|| "echo".to_string());
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("bind");
    println!("listening on {}", listener.local_addr().expect("address"));
    let name: &'static str = Box::leak(name.into_boxed_str());
    let delay = std::env::var("ECHO_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                handle(req, name).await
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Requests served, for tests that check whether a call reached the app.
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn handle(req: Request<Incoming>, name: &'static str) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/echo-app/requests" {
        let served = SERVED.load(std::sync::atomic::Ordering::Relaxed);
        return Ok(json(200, serde_json::json!({ "requests": served }), name));
    }
    if !path.starts_with("/dapr/") {
        SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let query = req.uri().query().unwrap_or_default().to_string();
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if path == "/upload" {
        let mut body = req.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return Ok(text(400, "body read failed")),
            }
        }
        return Ok(json(200, serde_json::json!({ "bytes": bytes }), name));
    }
    if path == "/download" {
        let total = param("bytes").unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                (left > 0).then(|| {
                    let n = left.min(chunk.len() as u64) as usize;
                    (
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..n))),
                        left - n as u64,
                    )
                })
            }
        });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        response
            .headers_mut()
            .insert("content-length", total.into());
        return Ok(response);
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(1000))).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(200);
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).to_string()),
            )
        })
        .collect();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).to_string(),
        Err(_) => return Ok(text(400, "body read failed")),
    };
    let echo = serde_json::json!({
        "app": name,
        "method": method,
        "path": path_and_query,
        "version": version,
        "headers": headers,
        "body": body,
    });
    Ok(json(status, echo, name))
}

fn json(status: u16, value: serde_json::Value, name: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    response.headers_mut().insert(
        "x-echo-app",
        name.parse()
            .unwrap_or_else(|_| "echo".parse().expect("static")),
    );
    response
}

fn text(status: u16, message: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())).boxed());
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    response
}
