//! The mesh listener (default :15008): other sidecars deliver calls for this app here (HTTP/1.1
//! or HTTP/2), and this hands them to the local app on 127.0.0.1:<app-port> in the app's
//! protocol (HTTP/1.1 or h2c).

use std::sync::Arc;

use tokio::time::Instant;

use super::{answer_failure, Downstream, Service};
use crate::blocks::{BlockError, ERR_DIRECT_INVOKE};
use crate::http1::head::HeaderEdits;
use crate::shared::Shared;
use crate::upstream::Target;

pub(crate) struct MeshInbound {
    shared: Arc<Shared>,
}

impl MeshInbound {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        MeshInbound { shared }
    }
}

/// The app sees its own token (APP_API_TOKEN) and never a caller's DAPR_API_TOKEN.
const TOKEN_HEADER: &[&str] = &["dapr-api-token"];
/// Under mTLS the caller's identity comes from its certificate; what the peer wrote in these
/// headers is dropped.
/// The underscore spellings too: CGI-style frameworks (WSGI, Rack, PHP) read
/// `dapr_caller_app_id` as the same `HTTP_DAPR_CALLER_APP_ID`.
const IDENTITY_HEADERS: &[&str] = &[
    "dapr-api-token",
    "dapr-caller-app-id",
    "dapr-caller-namespace",
    "dapr_api_token",
    "dapr_caller_app_id",
    "dapr_caller_namespace",
];

impl Service for MeshInbound {
    async fn serve<D: Downstream>(&self, request: &mut D) {
        let started = Instant::now();
        let options = &self.shared.options;
        // A pub/sub hand-over from a sidecar on this host. An invocation never is one (every
        // invocation names its callee), so an app cannot inject messages by invoking
        // `/.outrigger/pubsub/…` on another app: that path goes to the app like any other.
        if request
            .path()
            .starts_with(crate::subscriptions::peers::PATH_PREFIX)
            && request.header_str("dapr-callee-app-id").is_none()
        {
            let answer = crate::subscriptions::peers::receive(&self.shared, request).await;
            return request.answer(answer).await;
        }
        if let Some(callee) = request.header_str("dapr-callee-app-id") {
            if callee != options.app_id {
                let error = BlockError::new(
                    404,
                    ERR_DIRECT_INVOKE,
                    format!(
                        "failed to invoke, id: {callee}, err: this sidecar serves app {}, not {callee}",
                        options.app_id
                    ),
                );
                return request.answer(error.into()).await;
            }
        }
        let Some(app) = &self.shared.app else {
            let error = BlockError::invoke(
                &options.app_id,
                format!(
                    "app {} has no app port; start its sidecar with --app-port",
                    options.app_id
                ),
            );
            return request.answer(error.into()).await;
        };
        let mut added = [("", ""); 3];
        let mut count = 0;
        if let Some(token) = options.app_api_token.as_deref() {
            added[count] = ("dapr-api-token", token);
            count += 1;
        }
        let peer = request.peer_id();
        if let Some(peer) = &peer {
            added[count] = ("dapr-caller-app-id", peer.app_id());
            added[count + 1] = ("dapr-caller-namespace", peer.namespace());
            count += 2;
        }
        let edits = HeaderEdits {
            remove: if peer.is_some() {
                IDENTITY_HEADERS
            } else {
                TOKEN_HEADER
            },
            add: &added[..count],
            default_host: Some(&app.authority),
            ..HeaderEdits::default()
        };
        let target = Target {
            set: &app.endpoints,
            protocol: app.protocol,
            head_timeout: None,
            connect_timeout: options.connect_timeout,
            hash_key: None,
            retry: None,
            breaker: None,
            tls: None,
        };
        let status = match request.forward(&target, &edits).await {
            Ok(status) => status,
            Err(failure) => {
                let id = &options.app_id;
                answer_failure(request, &failure, || {
                    BlockError::invoke(
                        id,
                        format!(
                            "app {id} is not reachable at 127.0.0.1:{}: {}",
                            app.port, failure.error
                        ),
                    )
                })
                .await
            }
        };
        app.metrics.record(status, started.elapsed());
    }
}
