//! The Dapr HTTP API listener (default 127.0.0.1:3500): where the local app calls.
//!
//! Filters run in order on every request: framing and size guard, API token, then the API
//! the path names. Health and metadata are answered here; an invocation is resolved to the
//! target app's endpoints and handed to pingora, which forwards it over HTTP/2 to the chosen
//! sidecar's mesh listener, streaming both bodies.

mod metadata;
mod state;
pub(crate) mod target;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::drain::InFlight;
use crate::errors::{
    self, describe, ApiError, ERR_DIRECT_INVOKE, ERR_MALFORMED_REQUEST, ERR_UNAUTHORIZED,
};
use crate::metrics::Direction;
use crate::routing::{CompiledRule, RequestView};
use crate::sidecar::Sidecar;
use crate::{balance::EndpointSet, header_guard, transport};
use target::{classify, is_health_path, ApiRoute, InvokeTarget};

pub struct DaprHttpApi {
    sidecar: Arc<Sidecar>,
}

impl DaprHttpApi {
    pub(crate) fn new(sidecar: Arc<Sidecar>) -> Self {
        DaprHttpApi { sidecar }
    }
}

/// Per-request state carried between pingora's phases.
pub struct ApiCtx {
    _in_flight: InFlight,
    started: Instant,
    invoke: Option<Invocation>,
    /// Endpoint indexes already tried (a connect failure moves on to the next one).
    tried: Vec<usize>,
}

struct Invocation {
    target: InvokeTarget,
    uri: http::Uri,
    endpoints: Arc<EndpointSet>,
    /// The route rule that chose the endpoints, for its timeout and header rewrite.
    rule: Option<Arc<CompiledRule>>,
    /// The endpoint of the latest attempt, for error messages.
    address: Option<String>,
}

#[async_trait]
impl ProxyHttp for DaprHttpApi {
    type CTX = ApiCtx;

    fn new_ctx(&self) -> ApiCtx {
        ApiCtx {
            _in_flight: self.sidecar.drain.enter(),
            started: Instant::now(),
            invoke: None,
            tried: Vec::new(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut ApiCtx,
    ) -> pingora::Result<bool> {
        match self.route(session, ctx).await {
            Ok(None) => Ok(false),
            Ok(Some(answer)) => {
                answer.send(session).await?;
                Ok(true)
            }
            Err(error) => {
                error.send(session).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut ApiCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let invocation = ctx.invoke.as_mut().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "no invocation target was resolved",
            )
        })?;
        let Some((index, endpoint)) = invocation.endpoints.pick(&ctx.tried) else {
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!(
                    "no reachable instance of {} is left to try",
                    invocation.target.app_id
                ),
            );
        };
        ctx.tried.push(index);
        invocation.address = Some(endpoint.address.clone());
        let addr = transport::resolve(&endpoint.address).await.map_err(|e| {
            Error::because(
                ErrorType::ConnectNoRoute,
                format!("resolving {}", endpoint.address),
                e,
            )
        })?;
        let mut peer = transport::mesh_peer(addr);
        if let Some(timeout) = invocation.rule.as_ref().and_then(|r| r.timeout) {
            peer.options.read_timeout = Some(timeout);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut ApiCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Another instance may be up: let pingora call upstream_peer again for the next one.
        if let Some(invocation) = &ctx.invoke {
            if ctx.tried.len() < invocation.endpoints.targets.len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut ApiCtx,
    ) -> pingora::Result<()> {
        let Some(invocation) = &ctx.invoke else {
            return Ok(());
        };
        let options = &self.sidecar.options;
        rewrite_invoke_headers(
            request,
            &invocation.uri,
            invocation.target.via_basic_auth,
            &options.app_id,
            &invocation.target.app_id,
            options.namespace.as_deref(),
        )?;
        if let Some(rule) = &invocation.rule {
            for name in &rule.rewrite.remove {
                request.remove_header(name.as_str());
            }
            for (name, value) in &rule.rewrite.add {
                request.insert_header(name.clone(), value.as_str())?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ApiCtx,
    ) -> FailToProxy {
        errors::fail_to_proxy(session, e, || match &ctx.invoke {
            Some(invocation) => {
                let at = invocation.address.as_deref().unwrap_or("no endpoint");
                let timeout = invocation.rule.as_ref().and_then(|r| r.timeout);
                match (e.etype(), timeout) {
                    (ErrorType::ReadTimedout, Some(limit)) => ApiError::new(
                        504,
                        ERR_DIRECT_INVOKE,
                        format!(
                            "failed to invoke, id: {}, err: no response from {at} within the route timeout of {}",
                            invocation.target.app_id,
                            outrigger_config::duration::format(&limit)
                        ),
                    ),
                    _ => ApiError::invoke(&invocation.target.app_id, format!("{at}: {}", describe(e))),
                }
            }
            None => ApiError::new(500, "ERR_INTERNAL", e.to_string()),
        })
        .await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &ApiCtx, error: &Error) -> bool {
        errors::is_client_fault(error)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut ApiCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let app = ctx.invoke.as_ref().map_or("", |i| i.target.app_id.as_str());
        self.sidecar
            .metrics
            .record(Direction::Outbound, app, status, ctx.started.elapsed());
    }
}

/// What a request filter decided: forward it (`None`) or answer it.
enum Answer {
    NoContent,
    Json(Bytes),
    /// A stored state item: its value as saved, with its ETag and expiry.
    State(outrigger_state::StateEntry),
}

impl Answer {
    async fn send(self, session: &mut Session) -> pingora::Result<()> {
        match self {
            Answer::NoContent => errors::send_no_content(session).await,
            Answer::Json(body) => errors::send_json(session, body).await,
            Answer::State(entry) => state::send_found(session, entry).await,
        }
    }
}

impl DaprHttpApi {
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut ApiCtx,
    ) -> Result<Option<Answer>, ApiError> {
        let options = &self.sidecar.options;
        header_guard::check(session, options.max_request_header_bytes)?;

        let header = session.req_header();
        let path = header.uri.path().to_string();
        if let Some(expected) = &options.api_token {
            if !is_health_path(&path) {
                let given = header.headers.get("dapr-api-token").map(|v| v.as_bytes());
                if !given.is_some_and(|g| constant_time_eq(g, expected.as_bytes())) {
                    let what = if given.is_some() {
                        "invalid"
                    } else {
                        "missing"
                    };
                    return Err(ApiError::new(
                        401,
                        ERR_UNAUTHORIZED,
                        format!("{what} api token in header dapr-api-token"),
                    ));
                }
            }
        }

        let text = |name: &str| header.headers.get(name).and_then(|v| v.to_str().ok());
        let route = classify(
            &header.method,
            &path,
            header.uri.query(),
            text("dapr-app-id"),
            text("authorization"),
        );
        match route {
            ApiRoute::Healthz | ApiRoute::HealthzOutbound => {
                if self.sidecar.is_ready() {
                    Ok(Some(Answer::NoContent))
                } else {
                    Err(ApiError::new(500, "ERR_HEALTH_NOT_READY", "dapr is not ready"))
                }
            }
            ApiRoute::Metadata => Ok(Some(Answer::Json(metadata::render(&self.sidecar)))),
            ApiRoute::SetMetadata(key) => {
                let value = read_body(session, 64 * 1024).await?;
                let value = String::from_utf8(value.to_vec()).map_err(|_| {
                    ApiError::new(400, ERR_MALFORMED_REQUEST, "metadata value is not UTF-8")
                })?;
                self.sidecar.extended_metadata.lock().insert(key, value);
                Ok(Some(Answer::NoContent))
            }
            ApiRoute::State(call) => {
                // The body is read first so that an error answer leaves the connection usable.
                let body = if state::takes_body(&call.op) {
                    read_body(session, options.max_body_bytes).await?
                } else {
                    Bytes::new()
                };
                let store = state::store_for(&self.sidecar, &call)?;
                let header = session.req_header();
                let request = state::StateRequest {
                    query: header.uri.query(),
                    if_match: header.headers.get("if-match").and_then(|v| v.to_str().ok()),
                };
                state::serve(&store, call.op, request, body).await.map(Some)
            }
            ApiRoute::NoAppId => Err(ApiError::new(
                404,
                ERR_DIRECT_INVOKE,
                "failed getting app id either from the URL path or the header dapr-app-id",
            )),
            ApiRoute::NoMethod(app) => Err(ApiError::new(
                400,
                ERR_DIRECT_INVOKE,
                format!("failed to invoke, id: {app}, err: no method given; call /v1.0/invoke/{app}/method/<method>"),
            )),
            ApiRoute::Invoke(target) => {
                let uri = http::Uri::try_from(target.path_and_query.as_str()).map_err(|e| {
                    ApiError::new(400, ERR_MALFORMED_REQUEST, format!("invalid method path {:?}: {e}", target.path_and_query))
                })?;
                let view = RequestView {
                    method: &header.method,
                    path: uri.path(),
                    headers: &header.headers,
                };
                let resolved = self
                    .sidecar
                    .resolve(&target.app_id, target.namespace.as_deref(), &view)
                    .await
                    .ok_or_else(|| ApiError::invoke(&target.app_id, format!("couldn't find service: {}", target.app_id)))?;
                ctx.invoke = Some(Invocation {
                    target,
                    uri,
                    endpoints: resolved.endpoints,
                    rule: resolved.rule,
                    address: None,
                });
                Ok(None)
            }
        }
    }
}

/// Bodies over the limit are still read (and dropped) up to this size, so the client, which
/// is usually still sending, gets the 413 on a connection that stays usable.
const DISCARD_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a whole request body of at most `limit` bytes; a larger one is refused with 413.
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            ERR_MALFORMED_REQUEST,
            format!("request body is larger than the {limit}-byte limit (--max-body-size)"),
        )
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DISCARD_LIMIT) {
        return Err(too_large().closing());
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut seen = 0usize;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                if seen > DISCARD_LIMIT {
                    return Err(too_large().closing());
                }
                if seen <= limit {
                    body.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(
                    ApiError::new(400, ERR_MALFORMED_REQUEST, format!("reading body: {e}"))
                        .closing(),
                )
            }
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(body.freeze())
}

/// Turns the app's request into the one the target's sidecar receives: the method path as
/// the URI, the local credentials and routing headers dropped, the caller and callee named.
pub(crate) fn rewrite_invoke_headers(
    request: &mut RequestHeader,
    uri: &http::Uri,
    via_basic_auth: bool,
    caller: &str,
    callee: &str,
    caller_namespace: Option<&str>,
) -> pingora::Result<()> {
    request.set_uri(uri.clone());
    request.remove_header("dapr-api-token");
    request.remove_header("dapr-app-id");
    if via_basic_auth {
        request.remove_header("authorization");
    }
    request.insert_header("dapr-caller-app-id", caller)?;
    request.insert_header("dapr-callee-app-id", callee)?;
    match caller_namespace {
        Some(ns) => request.insert_header("dapr-caller-namespace", ns)?,
        None => {
            request.remove_header("dapr-caller-namespace");
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
