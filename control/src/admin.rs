//! The control plane's admin listener: `/sidecars` (connected sidecars, their acknowledged
//! versions and last NACK, as JSON), `/metrics`, `/healthz`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::server::ControlPlane;

pub(crate) async fn serve(listener: tokio::net::TcpListener, plane: Arc<ControlPlane>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let plane = plane.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let plane = plane.clone();
                    async move { Ok::<_, Infallible>(answer(request.uri().path(), &plane)) }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, plane: &ControlPlane) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/sidecars" => (
            200,
            "application/json",
            serde_json::to_vec_pretty(&plane.sidecars()).unwrap_or_default(),
        ),
        "/metrics" => (200, "text/plain; version=0.0.4", plane.metrics.render()),
        "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        _ => (
            404,
            "text/plain",
            b"not found; try /sidecars, /metrics or /healthz\n".to_vec(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
}
