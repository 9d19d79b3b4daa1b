//! Exists for bench/benches/hot_path.rs; not an API.
//!
//! The micro-benchmarks measure the proxy's real hot-path code, which is crate-private. This
//! facade hands each piece out behind a plain function so that nothing else becomes public;
//! it copies no logic, so a benchmark always times what a request runs.

use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::balance::{EndpointSet, Target};
use crate::dapr_http::rewrite_invoke_headers as rewrite;
use crate::dapr_http::target::{classify, ApiRoute};
use crate::sidecar::Sidecar;

/// Classifies a request on the Dapr HTTP API as the listener does; true for an invocation.
pub fn classify_invoke(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    app_id_header: Option<&str>,
    authorization: Option<&str>,
) -> bool {
    matches!(
        classify(method, path, query, app_id_header, authorization),
        ApiRoute::Invoke(_)
    )
}

/// An endpoint set with its round-robin balancer, held the way a cluster holds one.
pub struct Endpoints(Arc<EndpointSet>);

impl Endpoints {
    /// Equal-weight endpoints at `addresses` (`host:port`).
    pub fn round_robin(addresses: &[&str]) -> Self {
        let targets = addresses
            .iter()
            .map(|address| Target {
                address: (*address).to_string(),
                weight: 1,
            })
            .collect();
        Endpoints(Arc::new(EndpointSet::round_robin(targets)))
    }

    /// The index of the endpoint a request's first attempt goes to; `None` if there are none.
    pub fn pick(&self) -> Option<usize> {
        self.0.pick(&[]).map(|(index, _)| index)
    }
}

/// Rewrites an invocation's request headers for the mesh hop, as `upstream_request_filter`
/// does for an app that named its target in the URL or `dapr-app-id` (not basic auth), with
/// no namespace.
pub fn rewrite_invoke_headers(
    request: &mut RequestHeader,
    uri: &http::Uri,
    caller: &str,
    callee: &str,
) -> pingora::Result<()> {
    rewrite(request, uri, false, caller, callee, None)
}

/// Resolves `app_id` to its endpoints through the active snapshot, as an invocation does;
/// the number of endpoints, or `None` when nothing serves the app id.
pub async fn endpoints_for(sidecar: &Sidecar, app_id: &str) -> Option<usize> {
    let headers = http::HeaderMap::new();
    let request = crate::routing::RequestView {
        method: &http::Method::GET,
        path: "/api/v1/items",
        headers: &headers,
    };
    sidecar
        .resolve(app_id, None, &request)
        .await
        .map(|resolved| resolved.endpoints.targets.len())
}
