//! Routes: how calls to one target app id are matched and spread over clusters (Envoy's model,
//! small). Rules are tried in order; the first whose match fits the request decides the
//! backends (a weighted split), the timeout and the request-header rewrite. The same types are
//! read from mesh YAML (`kind: Route`) and carried in the snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    /// The target app id this route carries.
    pub app: String,
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// What a request must look like for this rule; empty matches everything.
    #[serde(
        default,
        rename = "match",
        skip_serializing_if = "RouteMatch::is_empty"
    )]
    pub matches: RouteMatch,
    pub backends: Vec<WeightedCluster>,
    /// Longest wait for the upstream's response headers, and between body reads; then 504.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::option"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "HeaderRewrite::is_empty")]
    pub request_headers: HeaderRewrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// The method path (as the target app sees it) must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// …or start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    pub fn is_empty(&self) -> bool {
        self.path.is_none()
            && self.path_prefix.is_none()
            && self.method.is_none()
            && self.headers.is_empty()
    }
}

/// A header the request must carry: with exactly this value, with a value matching a regex
/// (anchored: the whole value must match), or — with neither — just present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderRewrite {
    /// Set on the request toward the target (replacing a header of the same name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderRewrite {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightedCluster {
    pub cluster: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl Route {
    /// Checks the route on its own and against the snapshot's clusters. The error is the field
    /// path inside the route and what is wrong with it.
    pub fn check(&self, cluster_exists: impl Fn(&str) -> bool) -> Result<(), String> {
        if self.rules.is_empty() {
            return Err("rules: a route needs at least one rule (or spec.backends)".into());
        }
        for (r, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{r}]");
            if rule.backends.is_empty() {
                return Err(format!("{at}.backends: a rule needs at least one backend"));
            }
            for (b, backend) in rule.backends.iter().enumerate() {
                if !cluster_exists(&backend.cluster) {
                    return Err(format!(
                        "{at}.backends[{b}].cluster: unknown cluster {:?}",
                        backend.cluster
                    ));
                }
            }
            if rule.backends.iter().all(|b| b.weight == 0) {
                return Err(format!(
                    "{at}.backends: every weight is 0; at least one backend must carry traffic"
                ));
            }
            let m = &rule.matches;
            if m.path.is_some() && m.path_prefix.is_some() {
                return Err(format!("{at}.match: give path or pathPrefix, not both"));
            }
            for (field, value) in [("path", &m.path), ("pathPrefix", &m.path_prefix)] {
                if value.as_ref().is_some_and(|p| !p.starts_with('/')) {
                    return Err(format!("{at}.match.{field}: must start with '/'"));
                }
            }
            if let Some(method) = &m.method {
                if method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase()) {
                    return Err(format!("{at}.match.method: {method:?} is not an HTTP method; expected e.g. GET or POST"));
                }
            }
            for (h, header) in m.headers.iter().enumerate() {
                let field = format!("{at}.match.headers[{h}]");
                if !is_header_name(&header.name) {
                    return Err(format!(
                        "{field}.name: {:?} is not a valid header name",
                        header.name
                    ));
                }
                if header.exact.is_some() && header.regex.is_some() {
                    return Err(format!("{field}: give exact or regex, not both"));
                }
                if let Some(pattern) = &header.regex {
                    regex::Regex::new(pattern).map_err(|e| {
                        // regex's message spans lines (with a caret); keep errors one line.
                        let reason = e
                            .to_string()
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ");
                        format!("{field}.regex: invalid regex {pattern:?}: {reason}")
                    })?;
                }
            }
            let names = rule
                .request_headers
                .add
                .keys()
                .chain(rule.request_headers.remove.iter());
            for name in names {
                if !is_header_name(name) {
                    return Err(format!(
                        "{at}.requestHeaders: {name:?} is not a valid header name"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}
