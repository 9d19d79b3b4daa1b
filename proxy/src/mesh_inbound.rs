//! The mesh listener (default :15008): other sidecars deliver calls for this app here, over
//! HTTP/2, and this hands them to the local app on 127.0.0.1:<app-port> (HTTP/1.1 or h2c).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::drain::InFlight;
use crate::errors::{self, describe, ApiError, ERR_DIRECT_INVOKE};
use crate::metrics::Direction;
use crate::sidecar::Sidecar;
use crate::{header_guard, transport};

pub struct MeshInbound {
    sidecar: Arc<Sidecar>,
}

impl MeshInbound {
    pub(crate) fn new(sidecar: Arc<Sidecar>) -> Self {
        MeshInbound { sidecar }
    }
}

pub struct InboundCtx {
    _in_flight: InFlight,
    started: Instant,
}

#[async_trait]
impl ProxyHttp for MeshInbound {
    type CTX = InboundCtx;

    fn new_ctx(&self) -> InboundCtx {
        InboundCtx {
            _in_flight: self.sidecar.drain.enter(),
            started: Instant::now(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut InboundCtx,
    ) -> pingora::Result<bool> {
        let options = &self.sidecar.options;
        let checked = header_guard::check(session, options.max_request_header_bytes).and_then(|()| {
            let callee = session.req_header().headers.get("dapr-callee-app-id").and_then(|v| v.to_str().ok());
            match callee {
                Some(callee) if callee != options.app_id => Err(ApiError::new(
                    404,
                    ERR_DIRECT_INVOKE,
                    format!("failed to invoke, id: {callee}, err: this sidecar serves app {}, not {callee}", options.app_id),
                )),
                _ => Ok(()),
            }
        });
        let checked = checked.and_then(|()| match options.app_port {
            Some(_) => Ok(()),
            None => Err(ApiError::invoke(
                &options.app_id,
                format!(
                    "app {} has no app port; start its sidecar with --app-port",
                    options.app_id
                ),
            )),
        });
        match checked {
            Ok(()) => Ok(false),
            Err(error) => {
                error.send(session).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut InboundCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let options = &self.sidecar.options;
        let port = options
            .app_port
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no app port configured"))?;
        Ok(Box::new(transport::app_peer(port, options.app_protocol)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        _ctx: &mut InboundCtx,
    ) -> pingora::Result<()> {
        // The app sees its own token (APP_API_TOKEN) and never a caller's DAPR_API_TOKEN.
        match &self.sidecar.options.app_api_token {
            Some(token) => request.insert_header("dapr-api-token", token.as_str())?,
            None => {
                request.remove_header("dapr-api-token");
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut InboundCtx,
    ) -> FailToProxy {
        let options = &self.sidecar.options;
        errors::fail_to_proxy(session, e, || {
            let port = options.app_port.unwrap_or_default();
            let app = &options.app_id;
            ApiError::invoke(
                app,
                format!(
                    "app {app} is not reachable at 127.0.0.1:{port}: {}",
                    describe(e)
                ),
            )
        })
        .await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &InboundCtx, error: &Error) -> bool {
        errors::is_client_fault(error)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut InboundCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.sidecar.metrics.record(
            Direction::Inbound,
            &self.sidecar.options.app_id,
            status,
            ctx.started.elapsed(),
        );
    }
}
