//! Outrigger's own mesh resources (`apiVersion: outrigger.dev/v1alpha1`): `Cluster` (a named
//! set of sidecar endpoints) and `Route` (how calls to a target app id spread over clusters).
//! Unknown fields are refused, so a typo is an error rather than a silently ignored line.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::dapr::ObjectMeta;
use crate::route::{RouteRule, WeightedCluster};
use crate::snapshot::{HashOn, LoadBalancer};

pub const API_VERSION: &str = "outrigger.dev/v1alpha1";

/// `kind: Cluster`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterResource {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    pub address: HostPort,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `kind: Route`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteResource {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RouteSpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// The target app id whose calls this route carries.
    pub app: String,
    /// Tried in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Shorthand for one catch-all rule with these backends (after any `rules`).
    #[serde(default)]
    pub backends: Vec<WeightedCluster>,
}

/// `host:port`, checked when it is read so the error carries the YAML position.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct HostPort(String);

impl HostPort {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid address {text:?}; expected host:port, like 127.0.0.1:15008");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
        Ok(HostPort(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HostPort::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_ip_hostname_and_ipv6() {
        for ok in ["127.0.0.1:15008", "orders.local:80", "[::1]:15008"] {
            assert!(HostPort::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn host_port_refuses_missing_or_bad_port() {
        for bad in ["127.0.0.1", ":80", "host:0", "host:99999", "host:http"] {
            let err = HostPort::parse(bad).unwrap_err();
            assert!(err.contains("expected host:port"), "{bad}: {err}");
        }
    }
}
