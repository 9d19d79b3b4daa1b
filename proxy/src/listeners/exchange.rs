//! One request as a listener's logic sees it, whichever protocol carried it: its head, its
//! body, and the two ways to finish it (answer it here, or forward it). The listeners are
//! written once against [`Downstream`]; HTTP/1.1 ([`ServerConn`], the fast path) and HTTP/2
//! ([`H2Exchange`], on hyper) implement it.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::answer::Answer;
use crate::blocks::{BlockError, ERR_MALFORMED_REQUEST};
use crate::http1::head::{HeaderEdits, RequestHead};
use crate::http1::server::{BodyError, ServerConn};
use crate::identity::SpiffeId;
use crate::routing::HeaderLookup;
use crate::upstream::{self, Body, Failure, Target, UpstreamError};

pub(crate) trait Downstream: Send {
    fn method(&self) -> &Method;
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The headers, for route rules.
    fn headers(&self) -> &dyn HeaderLookup;
    /// The whole request body, of at most `limit` bytes (413 beyond).
    fn read_body(&mut self, limit: usize)
        -> impl Future<Output = Result<Bytes, BlockError>> + Send;
    /// Answers the request here.
    fn answer(&mut self, answer: Answer) -> impl Future<Output = ()> + Send;
    /// Forwards the request to `target` with `edits`, streaming the answer back.
    fn forward(
        &mut self,
        target: &Target<'_>,
        edits: &HeaderEdits<'_>,
    ) -> impl Future<Output = Result<u16, Failure>> + Send;
    /// Whether the response has started (a failure can then only be signalled by closing).
    fn responded(&self) -> bool;

    /// Whether the client connected from a loopback address (this host).
    fn is_loopback_peer(&self) -> bool;

    /// The identity the client proved with its certificate (mTLS on the mesh port).
    fn peer_id(&self) -> Option<Arc<SpiffeId>>;

    /// Ends the connection after this request (its answer broke off, or its framing is in
    /// doubt), so that nothing after it can be taken for the rest of it.
    fn close_after(&mut self);

    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The answer to a body that could not be read.
fn body_error(e: BodyError) -> BlockError {
    match e {
        BodyError::TooLarge { .. } => BlockError::new(413, ERR_MALFORMED_REQUEST, e.to_string()),
        other => BlockError::malformed(format!("reading body: {other}")),
    }
}

// === impl Downstream for ServerConn ===

impl Downstream for ServerConn {
    fn method(&self) -> &Method {
        &self.head.method
    }

    fn path(&self) -> &str {
        self.head.path()
    }

    fn query(&self) -> Option<&str> {
        self.head.query()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(name)
    }

    fn headers(&self) -> &dyn HeaderLookup {
        &self.head
    }

    async fn read_body(&mut self, limit: usize) -> Result<Bytes, BlockError> {
        ServerConn::read_body(self, limit).await.map_err(body_error)
    }

    async fn answer(&mut self, answer: Answer) {
        if let Err(e) = ServerConn::answer(self, &answer).await {
            tracing::debug!(error = %e, "could not write the answer");
            self.keep_alive = false;
        }
    }

    async fn forward(
        &mut self,
        target: &Target<'_>,
        edits: &HeaderEdits<'_>,
    ) -> Result<u16, Failure> {
        upstream::from_h1(self, target, edits).await
    }

    fn responded(&self) -> bool {
        self.responded
    }

    fn is_loopback_peer(&self) -> bool {
        self.stream
            .peer_addr()
            .is_ok_and(|peer| peer.ip().is_loopback())
    }

    fn peer_id(&self) -> Option<Arc<SpiffeId>> {
        self.peer_id.clone()
    }

    fn close_after(&mut self) {
        self.keep_alive = false;
    }
}

impl HeaderLookup for RequestHead {
    fn any_value(&self, name: &str, check: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .any(|(_, v)| check(v))
    }
}

// === impl H2Exchange ===

/// An HTTP/2 request being served: hyper's request until it is used up, then the response.
pub(crate) struct H2Exchange {
    parts: http::request::Parts,
    body: Option<Incoming>,
    response: Option<Response<Body>>,
    from_loopback: bool,
    peer_id: Option<Arc<SpiffeId>>,
}

impl H2Exchange {
    pub(crate) fn new(
        request: Request<Incoming>,
        from_loopback: bool,
        peer_id: Option<Arc<SpiffeId>>,
    ) -> H2Exchange {
        let (parts, body) = request.into_parts();
        H2Exchange {
            peer_id,
            parts,
            body: Some(body),
            response: None,
            from_loopback,
        }
    }

    /// The response the listener produced (500 if it produced none, which is a bug).
    pub(crate) fn into_response(self) -> Response<Body> {
        self.response.unwrap_or_else(|| {
            to_response(Answer::from(BlockError::new(
                500,
                "ERR_INTERNAL",
                "the request was neither answered nor forwarded",
            )))
        })
    }
}

/// An answer as an HTTP/2 response.
pub(crate) fn to_response(answer: Answer) -> Response<Body> {
    let mut response = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        response = response.header(*name, value.as_str());
    }
    let body = Full::new(answer.body)
        .map_err(|never| match never {})
        .boxed();
    response.body(body).unwrap_or_else(|_| {
        let mut fallback = Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        );
        *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

impl Downstream for H2Exchange {
    fn method(&self) -> &Method {
        &self.parts.method
    }

    fn path(&self) -> &str {
        self.parts.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.parts.uri.query()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.parts.headers.get(name).map(|v| v.as_bytes())
    }

    fn headers(&self) -> &dyn HeaderLookup {
        &self.parts.headers
    }

    async fn read_body(&mut self, limit: usize) -> Result<Bytes, BlockError> {
        let Some(mut body) = self.body.take() else {
            return Ok(Bytes::new());
        };
        let mut out = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BlockError::malformed(format!("reading body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(body_error(BodyError::TooLarge {
                        limit,
                        keep_alive: true,
                    }));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    }

    async fn answer(&mut self, answer: Answer) {
        self.response = Some(to_response(answer));
    }

    async fn forward(
        &mut self,
        target: &Target<'_>,
        edits: &HeaderEdits<'_>,
    ) -> Result<u16, Failure> {
        let Some(body) = self.body.take() else {
            return Err(Failure {
                error: UpstreamError::BadRequest("the request body was already read".to_string()),
                address: None,
            });
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = self.parts.uri.clone();
        *request.version_mut() = self.parts.version;
        *request.headers_mut() = self.parts.headers.clone();
        let response = upstream::from_h2(request, target, edits).await?;
        let status = response.status().as_u16();
        self.response = Some(response);
        Ok(status)
    }

    fn responded(&self) -> bool {
        self.response.is_some()
    }

    fn is_loopback_peer(&self) -> bool {
        self.from_loopback
    }

    fn peer_id(&self) -> Option<Arc<SpiffeId>> {
        self.peer_id.clone()
    }

    fn close_after(&mut self) {
        // A broken HTTP/2 answer resets its own stream; the connection carries on.
    }
}

impl HeaderLookup for http::HeaderMap {
    fn any_value(&self, name: &str, check: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| check(v.as_bytes()))
    }
}
