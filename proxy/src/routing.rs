//! The route table, compiled from the snapshot: per target app id, rules tried in order
//! (path / path prefix, method, headers), each with a weighted split over clusters, a timeout
//! and a request-header rewrite. Built once per snapshot; a request only reads it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use outrigger_config::{HeaderRewrite, Route, RouteRule};

use regex::Regex;

use crate::metrics::AppMetrics;
use crate::upstream::EndpointSet;

/// Header access for rules, whatever protocol carried the request.
pub(crate) trait HeaderLookup: Sync {
    /// Whether any value of header `name` (lowercase) passes `check`.
    fn any_value(&self, name: &str, check: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

/// What a rule looks at.
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a Method,
    /// The path the target app will see, without the query string.
    pub(crate) path: &'a str,
    pub(crate) headers: &'a dyn HeaderLookup,
}

pub(crate) struct CompiledRoute {
    rules: Vec<Arc<CompiledRule>>,
    /// The metric handles of the route's target app id.
    pub(crate) metrics: Arc<AppMetrics>,
}

pub(crate) struct CompiledRule {
    path: Option<String>,
    path_prefix: Option<String>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderCheck)>,
    backends: Vec<(Arc<EndpointSet>, u64)>,
    total_weight: u64,
    cursor: AtomicU64,
    pub(crate) timeout: Option<Duration>,
    pub(crate) rewrite: Rewrite,
}

/// A rule's request-header rewrite, with names lowercased once.
pub(crate) struct Rewrite {
    /// Set on the request (replacing a header of the same name).
    pub(crate) add: Vec<(String, String)>,
    pub(crate) remove: Vec<String>,
}

impl From<&HeaderRewrite> for Rewrite {
    fn from(rewrite: &HeaderRewrite) -> Self {
        Rewrite {
            add: rewrite
                .add
                .iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
                .collect(),
            remove: rewrite
                .remove
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
        }
    }
}

enum HeaderCheck {
    Present,
    Exact(String),
    Regex(Regex),
}

impl CompiledRoute {
    /// Compiles a validated route. `clusters` holds an endpoint set for every cluster the
    /// route names (validation guarantees it); a rule that still fails to compile is skipped.
    pub(crate) fn compile(
        route: &Route,
        clusters: &HashMap<String, Arc<EndpointSet>>,
        metrics: Arc<AppMetrics>,
    ) -> CompiledRoute {
        let rules = route
            .rules
            .iter()
            .filter_map(|rule| compile_rule(rule, clusters).map(Arc::new))
            .collect();
        CompiledRoute { rules, metrics }
    }

    /// The first rule that matches the request.
    pub(crate) fn select(&self, request: &RequestView<'_>) -> Option<&Arc<CompiledRule>> {
        self.rules.iter().find(|rule| rule.matches(request))
    }
}

fn compile_rule(
    rule: &RouteRule,
    clusters: &HashMap<String, Arc<EndpointSet>>,
) -> Option<CompiledRule> {
    let m = &rule.matches;
    let mut headers = Vec::with_capacity(m.headers.len());
    for header in &m.headers {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let check = match (&header.exact, &header.regex) {
            (Some(value), _) => HeaderCheck::Exact(value.clone()),
            // Anchored: the whole value must match, as in Envoy's safe_regex.
            (None, Some(pattern)) => {
                HeaderCheck::Regex(Regex::new(&format!("^(?:{pattern})$")).ok()?)
            }
            (None, None) => HeaderCheck::Present,
        };
        headers.push((name, check));
    }
    let backends: Vec<(Arc<EndpointSet>, u64)> = rule
        .backends
        .iter()
        .filter_map(|b| Some((clusters.get(&b.cluster)?.clone(), u64::from(b.weight))))
        .collect();
    let total_weight = backends.iter().map(|(_, w)| w).sum();
    if total_weight == 0 {
        return None;
    }
    Some(CompiledRule {
        path: m.path.clone(),
        path_prefix: m.path_prefix.clone(),
        method: m
            .method
            .as_deref()
            .and_then(|s| Method::from_bytes(s.as_bytes()).ok()),
        headers,
        backends,
        total_weight,
        cursor: AtomicU64::new(0),
        timeout: rule.timeout,
        rewrite: Rewrite::from(&rule.request_headers),
    })
}

impl CompiledRule {
    fn matches(&self, request: &RequestView<'_>) -> bool {
        if self.path.as_deref().is_some_and(|p| p != request.path) {
            return false;
        }
        if self
            .path_prefix
            .as_deref()
            .is_some_and(|p| !request.path.starts_with(p))
        {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != request.method) {
            return false;
        }
        self.headers.iter().all(|(name, check)| {
            let name = name.as_str();
            match check {
                HeaderCheck::Present => request.headers.any_value(name, &mut |_| true),
                HeaderCheck::Exact(expected) => request
                    .headers
                    .any_value(name, &mut |v| v == expected.as_bytes()),
                HeaderCheck::Regex(regex) => request.headers.any_value(name, &mut |v| {
                    std::str::from_utf8(v).is_ok_and(|v| regex.is_match(v))
                }),
            }
        })
    }

    /// The cluster for the next request: weighted, deterministic (every `total_weight`
    /// consecutive requests split exactly by weight).
    pub(crate) fn pick_backend(&self) -> Arc<EndpointSet> {
        let mut slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.total_weight;
        for (set, weight) in &self.backends {
            if slot < *weight {
                return set.clone();
            }
            slot -= weight;
        }
        self.backends[0].0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Metrics};
    use crate::upstream::Endpoints;
    use http::HeaderMap;
    use outrigger_config::load_str;

    fn compiled(yaml: &str) -> (CompiledRoute, HashMap<String, Arc<EndpointSet>>) {
        let snapshot = load_str("r.yaml", yaml).unwrap();
        let endpoints = Endpoints::default();
        let clusters: HashMap<_, _> = snapshot
            .clusters
            .values()
            .map(|c| {
                let targets = c
                    .endpoints
                    .iter()
                    .map(|e| (e.address.to_string(), 1))
                    .collect();
                (
                    c.name.clone(),
                    Arc::new(EndpointSet::round_robin(&endpoints, targets)),
                )
            })
            .collect();
        (
            CompiledRoute::compile(
                &snapshot.routes["b"],
                &clusters,
                Metrics::new().app(Direction::Outbound, "b"),
            ),
            clusters,
        )
    }

    const YAML: &str = "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {name: v1}\nspec: {endpoints: [{address: 127.0.0.1:1001}]}\n---\napiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {name: v2}\nspec: {endpoints: [{address: 127.0.0.1:1002}]}\n---\napiVersion: outrigger.dev/v1alpha1\nkind: Route\nmetadata: {name: b}\nspec:\n  app: b\n  rules:\n  - match: {pathPrefix: /v2/, method: POST, headers: [{name: x-canary, regex: 'true|yes'}]}\n    backends: [{cluster: v2}]\n  - match: {path: /exact}\n    backends: [{cluster: v2}]\n  backends: [{cluster: v1, weight: 3}, {cluster: v2, weight: 1}]\n";

    fn which(
        route: &CompiledRoute,
        clusters: &HashMap<String, Arc<EndpointSet>>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let map = to_map(headers);
        let view = RequestView {
            method: &method,
            path,
            headers: &map as &dyn HeaderLookup,
        };
        let rule = route.select(&view).unwrap();
        let set = rule.pick_backend();
        clusters
            .iter()
            .find(|(_, s)| Arc::ptr_eq(s, &set))
            .unwrap()
            .0
            .clone()
    }

    #[test]
    fn first_matching_rule_wins_on_prefix_method_and_anchored_header_regex() {
        let (route, clusters) = compiled(YAML);
        let canary = [("x-canary", "yes")];
        assert_eq!(
            which(&route, &clusters, Method::POST, "/v2/items", &canary),
            "v2"
        );
        assert_eq!(which(&route, &clusters, Method::POST, "/exact", &[]), "v2");
        // The catch-all splits 3:1, so a wrong turn shows up as a v1 here and there.
        let misses = [
            (Method::GET, "/v2/items", &canary[..]),
            (Method::POST, "/v1/items", &canary[..]),
            (Method::POST, "/v2/items", &[("x-canary", "yess")][..]),
            (Method::POST, "/exact/more", &[][..]),
        ];
        for (method, path, headers) in misses {
            let rule = route
                .select(&RequestView {
                    method: &method,
                    path,
                    headers: &to_map(headers),
                })
                .unwrap();
            assert!(
                rule.path.is_none() && rule.path_prefix.is_none(),
                "{method} {path} matched a specific rule"
            );
        }
    }

    fn to_map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn weighted_split_is_exact_over_each_cycle() {
        let (route, clusters) = compiled(YAML);
        let mut v1 = 0;
        for _ in 0..400 {
            if which(&route, &clusters, Method::GET, "/any", &[]) == "v1" {
                v1 += 1;
            }
        }
        assert_eq!(v1, 300);
    }
}
