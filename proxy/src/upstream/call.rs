//! Requests the sidecar makes itself — a pub/sub delivery, `GET /dapr/subscribe`, a message
//! handed to a peer sidecar — with a whole body and a whole, bounded answer. They go through
//! [`forward::from_h2`]: the same endpoint pick, pooled connections, outcome reports and
//! protocol conversion as forwarded requests.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

use super::forward::{self, Target};
use crate::http1::head::HeaderEdits;

/// A whole response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("{}", describe(.0))]
    Upstream(forward::Failure),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer's body is over {0} bytes")]
    TooLarge(usize),
    #[error("the answer's body broke off: {0}")]
    Body(String),
}

fn describe(failure: &forward::Failure) -> String {
    match &failure.address {
        Some(address) => format!("{address}: {}", failure.error),
        None => failure.error.to_string(),
    }
}

/// One request to `target`, answered whole within `timeout` with a body of at most `limit`
/// bytes.
pub(crate) async fn call(
    target: &Target<'_>,
    request: Request<Full<Bytes>>,
    edits: &HeaderEdits<'_>,
    limit: usize,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let exchange = async {
        let response = forward::from_h2(request, target, edits)
            .await
            .map_err(CallError::Upstream)?;
        let (parts, mut body) = response.into_parts();
        let mut collected = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CallError::Body(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > limit {
                    return Err(CallError::TooLarge(limit));
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok(Reply {
            status: parts.status.as_u16(),
            body: collected.freeze(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(CallError::Timeout(timeout)))
}

/// A request for [`call`]: `method path` with `headers` and `body`, `Host` set to
/// `authority`.
pub(crate) fn request(
    method: Method,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("request target {path:?}: {e}"))?;
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, authority);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body))
        .map_err(|e| format!("request {path:?}: {e}"))
}
