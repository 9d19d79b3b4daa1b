//! Which Dapr API a request is for, and for invocations, which app and which method.
//!
//! Order, as daprd does it: `/v1.0/invoke/{id}/method/{method}` takes the app id from the
//! `dapr-app-id` header, then basic auth (user `dapr-app-id`, password the id), then the URL;
//! the health and metadata APIs are answered locally; any other path is an invocation of the
//! app named by the header or basic auth, with the whole path as the method.

use base64::Engine as _;

pub(crate) use crate::blocks::invoke::InvokeTarget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiRoute {
    Healthz,
    HealthzOutbound,
    Metadata,
    /// `PUT /v1.0/metadata/{key}`.
    SetMetadata(String),
    Invoke(InvokeTarget),
    /// An invocation whose app id could not be found (404).
    NoAppId,
    /// `/v1.0/invoke/{id}` with no method (400).
    NoMethod(String),
    /// `/v1.0/state/{store}…`.
    State(StateCall),
    /// `/v1.0/publish/{pubsub}/{topic}` and the bulk forms.
    Publish(PublishCall),
}

/// A call to the publish API: which component and topic (still percent-encoded), and
/// whether it is a bulk publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishCall {
    pub(crate) pubsub: String,
    pub(crate) topic: String,
    pub(crate) bulk: bool,
}

/// A call to the state API: which store, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateCall {
    pub(crate) store: String,
    pub(crate) op: StateOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateOp {
    /// `GET /v1.0/state/{store}/{key}`; the key is still percent-encoded.
    Get(String),
    /// `DELETE /v1.0/state/{store}/{key}`.
    Delete(String),
    /// `POST|PUT /v1.0/state/{store}`.
    Save,
    /// `POST|PUT /v1.0/state/{store}/bulk`.
    BulkGet,
    /// `POST|PUT /v1.0/state/{store}/transaction`.
    Transaction,
    /// A path of the state API with a method it does not take; the methods it does take.
    MethodNotAllowed(&'static str),
}

/// The health checks, which an API token does not guard.
pub(crate) fn is_health_path(path: &str) -> bool {
    matches!(path, "/v1.0/healthz" | "/v1.0/healthz/outbound")
}

pub(crate) fn classify(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    app_id_header: Option<&str>,
    authorization: Option<&str>,
) -> ApiRoute {
    let from_basic = authorization.and_then(basic_auth_app_id);
    let explicit = app_id_header
        .map(str::to_string)
        .or_else(|| from_basic.clone());
    let via_basic_auth = app_id_header.is_none() && from_basic.is_some();
    // `/<path>?<query>`, built in one allocation.
    let with_query = |slash: bool, p: &str| {
        let mut target = String::with_capacity(1 + p.len() + query.map_or(0, |q| q.len() + 1));
        if slash {
            target.push('/');
        }
        target.push_str(p);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        target
    };

    if let Some(rest) = path.strip_prefix("/v1.0/invoke/") {
        let (url_id, method_path) = match split_method(rest) {
            Some((id, m)) => (id, Some(m)),
            None => (rest.trim_end_matches('/').trim_end_matches("/method"), None),
        };
        let Some(app) = explicit.or_else(|| (!url_id.is_empty()).then(|| url_id.to_string()))
        else {
            return ApiRoute::NoAppId;
        };
        let method_path = match method_path {
            Some(m) if !m.is_empty() => m,
            _ => return ApiRoute::NoMethod(app),
        };
        return invoke(&app, with_query(true, method_path), via_basic_auth);
    }

    match (path, method) {
        ("/v1.0/healthz", _) => return ApiRoute::Healthz,
        ("/v1.0/healthz/outbound", _) => return ApiRoute::HealthzOutbound,
        ("/v1.0/metadata", _) => return ApiRoute::Metadata,
        (p, &http::Method::PUT) if p.starts_with("/v1.0/metadata/") => {
            let key = &p["/v1.0/metadata/".len()..];
            if !key.is_empty() {
                return ApiRoute::SetMetadata(key.to_string());
            }
        }
        _ => {}
    }

    if let Some(rest) = path.strip_prefix("/v1.0/state/") {
        return ApiRoute::State(state_call(method, rest));
    }

    let bulk = path
        .strip_prefix("/v1.0-alpha1/publish/bulk/")
        .or_else(|| path.strip_prefix("/v1.0/publish/bulk/"));
    if let Some(rest) = bulk.or_else(|| path.strip_prefix("/v1.0/publish/")) {
        let (pubsub, topic) = rest.split_once('/').unwrap_or((rest, ""));
        return ApiRoute::Publish(PublishCall {
            pubsub: pubsub.to_string(),
            topic: topic.to_string(),
            bulk: bulk.is_some(),
        });
    }

    match explicit {
        Some(app) if !app.is_empty() => invoke(&app, with_query(false, path), via_basic_auth),
        _ => ApiRoute::NoAppId,
    }
}

/// `{id}/method/{method}` split at the first `/method/` (a plain scan: a substring searcher is
/// costlier to build than this path is long).
fn split_method(rest: &str) -> Option<(&str, &str)> {
    const SEP: &str = "/method/";
    rest.match_indices('/')
        .find(|(i, _)| rest[*i..].starts_with(SEP))
        .map(|(i, _)| (&rest[..i], &rest[i + SEP.len()..]))
}

fn state_call(method: &http::Method, rest: &str) -> StateCall {
    use http::Method;
    let (store, key) = match rest.split_once('/') {
        Some((store, key)) => (store, Some(key)),
        None => (rest, None),
    };
    let write = *method == Method::POST || *method == Method::PUT;
    let op = match (key, write) {
        (None, true) => StateOp::Save,
        (None, false) => StateOp::MethodNotAllowed("POST, PUT"),
        (Some("bulk"), true) => StateOp::BulkGet,
        (Some("transaction"), true) => StateOp::Transaction,
        (Some(_), true) => StateOp::MethodNotAllowed("GET, DELETE"),
        (Some(key), false) => match *method {
            Method::GET => StateOp::Get(key.to_string()),
            Method::DELETE => StateOp::Delete(key.to_string()),
            _ => StateOp::MethodNotAllowed("GET, DELETE"),
        },
    };
    StateCall {
        store: store.to_string(),
        op,
    }
}

fn invoke(app: &str, path_and_query: String, via_basic_auth: bool) -> ApiRoute {
    // Namespaced ids are `<app>.<namespace>`; Dapr app ids cannot contain a dot. An id with
    // nothing before the dot names no app.
    let (app_id, namespace) = match app.split_once('.') {
        Some((a, ns)) => (a, (!ns.is_empty()).then(|| ns.to_string())),
        None => (app, None),
    };
    if app_id.is_empty() {
        return ApiRoute::NoAppId;
    }
    ApiRoute::Invoke(InvokeTarget {
        app_id: app_id.to_string(),
        namespace,
        path_and_query,
        via_basic_auth,
    })
}

fn basic_auth_app_id(authorization: &str) -> Option<String> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (user == "dapr-app-id" && !password.is_empty()).then(|| password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn route(
        path: &str,
        query: Option<&str>,
        header: Option<&str>,
        auth: Option<&str>,
    ) -> ApiRoute {
        classify(&Method::POST, path, query, header, auth)
    }

    fn target(app: &str, ns: Option<&str>, pq: &str, basic: bool) -> ApiRoute {
        ApiRoute::Invoke(InvokeTarget {
            app_id: app.into(),
            namespace: ns.map(Into::into),
            path_and_query: pq.into(),
            via_basic_auth: basic,
        })
    }

    #[test]
    fn url_form_keeps_nested_method_path_and_query() {
        assert_eq!(
            route("/v1.0/invoke/b/method/echo/deep", Some("x=1"), None, None),
            target("b", None, "/echo/deep?x=1", false)
        );
    }

    #[test]
    fn header_form_proxies_the_whole_path() {
        assert_eq!(
            route("/echo/deep", Some("x=1"), Some("b"), None),
            target("b", None, "/echo/deep?x=1", false)
        );
    }

    #[test]
    fn header_wins_over_the_url_id_on_invoke_paths() {
        assert_eq!(
            route("/v1.0/invoke/a/method/m", None, Some("b"), None),
            target("b", None, "/m", false)
        );
    }

    #[test]
    fn basic_auth_form_names_the_app() {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("dapr-app-id:b")
        );
        assert_eq!(
            route("/orders", None, None, Some(&auth)),
            target("b", None, "/orders", true)
        );
        let other = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:secret")
        );
        assert_eq!(
            route("/orders", None, None, Some(&other)),
            ApiRoute::NoAppId
        );
    }

    #[test]
    fn namespaced_ids_split_on_the_dot() {
        assert_eq!(
            route("/v1.0/invoke/b.prod/method/m", None, None, None),
            target("b", Some("prod"), "/m", false)
        );
    }

    #[test]
    fn missing_app_id_or_method() {
        assert_eq!(route("/orders", None, None, None), ApiRoute::NoAppId);
        // Found by the invoke_target fuzzer: a namespace with no app before it.
        assert_eq!(
            route("/v1.0/invoke/.prod/method/orders", None, None, None),
            ApiRoute::NoAppId
        );
        assert_eq!(
            route("/orders", None, Some(".prod"), None),
            ApiRoute::NoAppId
        );
        assert_eq!(
            route("/v1.0/invoke/b./method/m", None, None, None),
            target("b", None, "/m", false)
        );
        assert_eq!(
            route("/v1.0/invoke//method/x", None, None, None),
            ApiRoute::NoAppId
        );
        assert_eq!(
            route("/v1.0/invoke/b", None, None, None),
            ApiRoute::NoMethod("b".into())
        );
        assert_eq!(
            route("/v1.0/invoke/b/method/", None, None, None),
            ApiRoute::NoMethod("b".into())
        );
    }

    #[test]
    fn state_paths_by_method() {
        let state = |method: Method, path: &str| match classify(&method, path, None, None, None) {
            ApiRoute::State(call) => (call.store, call.op),
            other => panic!("{path}: {other:?}"),
        };
        let s = |x: &str| x.to_string();
        assert_eq!(
            state(Method::GET, "/v1.0/state/s/k"),
            (s("s"), StateOp::Get(s("k")))
        );
        assert_eq!(
            state(Method::GET, "/v1.0/state/s/bulk"),
            (s("s"), StateOp::Get(s("bulk")))
        );
        assert_eq!(
            state(Method::DELETE, "/v1.0/state/s/a%2Fb"),
            (s("s"), StateOp::Delete(s("a%2Fb")))
        );
        assert_eq!(
            state(Method::POST, "/v1.0/state/s"),
            (s("s"), StateOp::Save)
        );
        assert_eq!(state(Method::PUT, "/v1.0/state/s"), (s("s"), StateOp::Save));
        assert_eq!(
            state(Method::PUT, "/v1.0/state/s/bulk"),
            (s("s"), StateOp::BulkGet)
        );
        assert_eq!(
            state(Method::POST, "/v1.0/state/s/transaction"),
            (s("s"), StateOp::Transaction)
        );
        assert_eq!(
            state(Method::GET, "/v1.0/state/s"),
            (s("s"), StateOp::MethodNotAllowed("POST, PUT"))
        );
        assert_eq!(
            state(Method::POST, "/v1.0/state/s/k"),
            (s("s"), StateOp::MethodNotAllowed("GET, DELETE"))
        );
        // The state API is answered locally even when a dapr-app-id header is present.
        assert!(matches!(
            classify(&Method::GET, "/v1.0/state/s/k", None, Some("b"), None),
            ApiRoute::State(_)
        ));
    }

    #[test]
    fn local_apis() {
        assert_eq!(route("/v1.0/healthz", None, None, None), ApiRoute::Healthz);
        assert_eq!(
            route("/v1.0/healthz/outbound", None, None, None),
            ApiRoute::HealthzOutbound
        );
        assert_eq!(
            classify(&Method::GET, "/v1.0/metadata", None, None, None),
            ApiRoute::Metadata
        );
        assert_eq!(
            classify(&Method::PUT, "/v1.0/metadata/k", None, None, None),
            ApiRoute::SetMetadata("k".into())
        );
    }
}
