//! Service invocation by app id: where a call goes (a route rule, a cluster, or the instances
//! discovery knows), what the target's sidecar is told about the caller, and how a failure
//! reads to the app (Dapr's `ERR_DIRECT_INVOKE` wording).

use super::{BlockError, ERR_DIRECT_INVOKE};
use crate::active::Resolved;
use crate::routing::RequestView;
use crate::shared::Shared;
use crate::upstream::Failure;

/// An invocation, as the app asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvokeTarget {
    pub(crate) app_id: String,
    pub(crate) namespace: Option<String>,
    /// The request target for the app: `/method/path?query`.
    pub(crate) path_and_query: String,
    /// The `Authorization` header carried the app id and must not be forwarded.
    pub(crate) via_basic_auth: bool,
}

impl InvokeTarget {
    /// The method path without the query string (what route rules match on).
    pub(crate) fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

/// Headers the app sent to its own sidecar that never travel on: its API token, the routing
/// header, and a caller namespace it could forge.
pub(crate) const LOCAL_HEADERS: &[&str] =
    &["dapr-api-token", "dapr-app-id", "dapr-caller-namespace"];
/// The same, when the app id came in basic auth.
pub(crate) const LOCAL_HEADERS_BASIC_AUTH: &[&str] = &[
    "dapr-api-token",
    "dapr-app-id",
    "dapr-caller-namespace",
    "authorization",
];

/// What the target's sidecar is told: who calls, whom, from which namespace. Returns the
/// headers and how many of them apply.
pub(crate) fn identity_headers<'a>(
    caller: &'a str,
    target: &'a InvokeTarget,
    caller_namespace: Option<&'a str>,
) -> ([(&'static str, &'a str); 3], usize) {
    let mut headers = [
        ("dapr-caller-app-id", caller),
        ("dapr-callee-app-id", target.app_id.as_str()),
        ("dapr-caller-namespace", ""),
    ];
    match caller_namespace {
        Some(namespace) => {
            headers[2].1 = namespace;
            (headers, 3)
        }
        None => (headers, 2),
    }
}

/// The endpoints a call goes to, or Dapr's "couldn't find service".
pub(crate) async fn resolve(
    shared: &Shared,
    target: &InvokeTarget,
    request: &RequestView<'_>,
) -> Result<Resolved, BlockError> {
    shared
        .resolve(&target.app_id, target.namespace.as_deref(), request)
        .await
        .ok_or_else(|| {
            BlockError::invoke(
                &target.app_id,
                format!("couldn't find service: {}", target.app_id),
            )
        })
}

/// How a failed forward reads to the caller: 504 for a route timeout, 400 when the caller's
/// own request was malformed, else 500 naming the endpoint and the cause.
pub(crate) fn failed(app_id: &str, failure: &Failure) -> BlockError {
    let at = failure.address.as_deref().unwrap_or("no endpoint");
    if let Some(limit) = failure.timeout() {
        return BlockError::new(
            504,
            ERR_DIRECT_INVOKE,
            format!(
                "failed to invoke, id: {app_id}, err: no response from {at} within the timeout of {}",
                outrigger_config::duration::format(&limit)
            ),
        );
    }
    if matches!(failure.error, crate::upstream::UpstreamError::BreakerOpen) {
        return BlockError::invoke(app_id, "circuit breaker is open".to_string());
    }
    BlockError::invoke(app_id, format!("{at}: {}", failure.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callee_learns_the_caller_and_its_namespace() {
        let target = InvokeTarget {
            app_id: "b".into(),
            namespace: None,
            path_and_query: "/m?x=1".into(),
            via_basic_auth: false,
        };
        assert_eq!(target.path(), "/m");
        let (headers, n) = identity_headers("a", &target, None);
        assert_eq!(
            &headers[..n],
            &[("dapr-caller-app-id", "a"), ("dapr-callee-app-id", "b")]
        );
        let (headers, n) = identity_headers("a", &target, Some("prod"));
        assert_eq!(headers[n - 1], ("dapr-caller-namespace", "prod"));
    }
}
