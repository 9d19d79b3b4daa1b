//! The Dapr HTTP API listener (default 127.0.0.1:3500): where the local app calls.
//!
//! Each request: API token check, then the API its path names. Health and metadata are
//! answered here, state and publishes through their blocks; an invocation is resolved to the target app's
//! endpoints and forwarded to the chosen sidecar's mesh listener, both bodies streaming.

pub(crate) mod pubsub;
pub(crate) mod state;
pub(crate) mod target;

use std::sync::Arc;

use tokio::time::Instant;

use super::{answer_failure, Downstream, Service};
use crate::answer::Answer;
use crate::blocks::invoke::{self, LOCAL_HEADERS, LOCAL_HEADERS_BASIC_AUTH};
use crate::blocks::{
    metadata, BlockError, ERR_DIRECT_INVOKE, ERR_MALFORMED_REQUEST, ERR_UNAUTHORIZED,
};
use crate::http1::head::HeaderEdits;
use crate::routing::RequestView;
use crate::shared::Shared;
use crate::upstream::Target;
use target::{classify, is_health_path, ApiRoute, InvokeTarget};

pub(crate) struct DaprHttp {
    shared: Arc<Shared>,
}

impl DaprHttp {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        DaprHttp { shared }
    }
}

impl Service for DaprHttp {
    async fn serve<D: Downstream>(&self, request: &mut D) {
        let started = Instant::now();
        if let Err(error) = self.check_token(request) {
            return request.answer(error.into()).await;
        }
        let route = classify(
            request.method(),
            request.path(),
            request.query(),
            request.header_str("dapr-app-id"),
            request.header_str("authorization"),
        );
        let answer = match route {
            ApiRoute::Invoke(target) => return self.invoke(request, target, started).await,
            ApiRoute::Healthz | ApiRoute::HealthzOutbound => {
                if self.shared.is_ready() {
                    Ok(Answer::no_content())
                } else {
                    Err(BlockError::new(500, "ERR_HEALTH_NOT_READY", "dapr is not ready"))
                }
            }
            ApiRoute::Metadata => serde_json::to_vec(&metadata::metadata(&self.shared))
                .map(|body| Answer::json(200, body))
                .map_err(|e| BlockError::new(500, "ERR_METADATA_GET", e.to_string())),
            ApiRoute::SetMetadata(key) => self.set_metadata(request, key).await,
            ApiRoute::State(call) => state::serve(&self.shared, call, request).await,
            ApiRoute::Publish(call) => pubsub::serve(&self.shared, call, request).await,
            ApiRoute::NoAppId => Err(BlockError::new(
                404,
                ERR_DIRECT_INVOKE,
                "failed getting app id either from the URL path or the header dapr-app-id",
            )),
            ApiRoute::NoMethod(app) => Err(BlockError::new(
                400,
                ERR_DIRECT_INVOKE,
                format!("failed to invoke, id: {app}, err: no method given; call /v1.0/invoke/{app}/method/<method>"),
            )),
        };
        request.answer(answer.unwrap_or_else(Answer::from)).await;
    }
}

impl DaprHttp {
    /// `DAPR_API_TOKEN`: every API but the health checks needs it in `dapr-api-token`.
    fn check_token<D: Downstream>(&self, request: &D) -> Result<(), BlockError> {
        let Some(expected) = &self.shared.options.api_token else {
            return Ok(());
        };
        if is_health_path(request.path()) {
            return Ok(());
        }
        let given = request.header("dapr-api-token");
        if given.is_some_and(|g| constant_time_eq(g, expected.as_bytes())) {
            return Ok(());
        }
        let what = if given.is_some() {
            "invalid"
        } else {
            "missing"
        };
        Err(BlockError::new(
            401,
            ERR_UNAUTHORIZED,
            format!("{what} api token in header dapr-api-token"),
        ))
    }

    async fn set_metadata<D: Downstream>(
        &self,
        request: &mut D,
        key: String,
    ) -> Result<Answer, BlockError> {
        let value = request.read_body(64 * 1024).await?;
        let value = String::from_utf8(value.to_vec()).map_err(|_| {
            BlockError::new(400, ERR_MALFORMED_REQUEST, "metadata value is not UTF-8")
        })?;
        self.shared.extended_metadata.lock().insert(key, value);
        Ok(Answer::no_content())
    }

    async fn invoke<D: Downstream>(&self, request: &mut D, target: InvokeTarget, started: Instant) {
        let shared = &*self.shared;
        let view = RequestView {
            method: request.method(),
            path: target.path(),
            headers: request.headers(),
        };
        let resolved = match invoke::resolve(shared, &target, &view).await {
            Ok(resolved) => resolved,
            Err(error) => return request.answer(error.into()).await,
        };
        let options = &shared.options;
        let (identity, count) =
            invoke::identity_headers(&options.app_id, &target, options.namespace.as_deref());
        let rule = resolved.rule.as_deref();
        let edits = HeaderEdits {
            target: Some(&target.path_and_query),
            remove: if target.via_basic_auth {
                LOCAL_HEADERS_BASIC_AUTH
            } else {
                LOCAL_HEADERS
            },
            remove_more: rule.map_or(&[], |r| r.rewrite.remove.as_slice()),
            add: &identity[..count],
            add_more: rule.map_or(&[], |r| r.rewrite.add.as_slice()),
            default_host: Some(&target.app_id),
        };
        let hash_key = resolved
            .endpoints
            .hash_on
            .as_ref()
            .and_then(|on| crate::upstream::forward::hash_key_of(on, request, &target));
        let policy = shared.config.load().app_policy(&target.app_id);
        let tls = match &shared.identity {
            // An app id without a namespace means the caller's own namespace, as in Dapr.
            Some(identity) => match identity.peer(
                &target.app_id,
                target.namespace.as_deref().or(options.namespace.as_deref()),
            ) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    return request
                        .answer(BlockError::invoke(&target.app_id, e).into())
                        .await
                }
            },
            None => None,
        };
        let upstream = Target {
            set: &resolved.endpoints,
            protocol: options.mesh_protocol,
            // A route rule's timeout, else the Resiliency timeout for the target app.
            head_timeout: rule
                .and_then(|r| r.timeout)
                .or_else(|| policy.as_ref().and_then(|p| p.timeout)),
            connect_timeout: options.connect_timeout,
            hash_key,
            retry: policy.as_ref().and_then(|p| p.retry.as_ref()),
            breaker: policy.as_ref().and_then(|p| p.breaker.as_deref()),
            tls: tls.as_deref(),
        };
        let status = match request.forward(&upstream, &edits).await {
            Ok(status) => status,
            Err(failure) => {
                if failure.timeout().is_some() {
                    shared
                        .metrics
                        .resilience
                        .timeouts
                        .with_label_values(&[target.app_id.as_str()])
                        .inc();
                }
                answer_failure(request, &failure, || {
                    invoke::failed(&target.app_id, &failure)
                })
                .await
            }
        };
        resolved.metrics.record(status, started.elapsed());
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
