//! Who this sidecar is and what it serves, in daprd's metadata shape (the JS SDK polls it at
//! start-up): the app id, components in scope with their capabilities, subscriptions, the app
//! connection, and the extended metadata set through the API.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::components::in_scope;
use crate::options::AppProtocol;
use crate::shared::Shared;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    id: String,
    runtime_version: &'static str,
    enabled_features: Vec<String>,
    actors: Vec<()>,
    components: Vec<ComponentInfo>,
    subscriptions: Vec<SubscriptionInfo>,
    http_endpoints: Vec<()>,
    extended: BTreeMap<String, String>,
    app_connection_properties: AppConnection,
}

#[derive(Debug, Serialize)]
struct ComponentInfo {
    name: String,
    #[serde(rename = "type")]
    component_type: String,
    version: String,
    capabilities: &'static [&'static str],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionInfo {
    pubsubname: String,
    topic: String,
    dead_letter_topic: String,
    rules: Rules,
    #[serde(rename = "type")]
    kind: crate::subscriptions::Kind,
    /// Outrigger's addition: where the subscription stands, what it holds, what it parked.
    status: crate::subscriptions::Status,
}

#[derive(Debug, Serialize)]
struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug, Serialize)]
struct Rule {
    #[serde(rename = "match")]
    match_expr: String,
    path: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AppConnection {
    protocol: &'static str,
    channel_address: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

pub(crate) fn metadata(shared: &Shared) -> Metadata {
    let active = shared.config.load();
    let snapshot = &active.snapshot;
    let options = &shared.options;
    let components = snapshot
        .components
        .values()
        .filter(|c| in_scope(c, &options.app_id))
        .map(|c| ComponentInfo {
            name: c.name().to_string(),
            component_type: c.spec.component_type.as_str().to_string(),
            version: c.spec.version.clone(),
            capabilities: if active.state_stores.contains_key(c.name()) {
                outrigger_state::CAPABILITIES
            } else {
                &[]
            },
        })
        .collect();
    let subscriptions = shared
        .subscriptions
        .list()
        .into_iter()
        .map(|listed| {
            let spec = listed.spec;
            let mut rules: Vec<Rule> = spec
                .routes
                .rules
                .iter()
                .map(|r| Rule {
                    match_expr: r.match_expr.clone(),
                    path: r.path.clone(),
                })
                .collect();
            if let Some(default) = &spec.routes.default {
                rules.push(Rule {
                    match_expr: String::new(),
                    path: default.clone(),
                });
            }
            SubscriptionInfo {
                pubsubname: spec.pubsubname,
                topic: spec.topic,
                dead_letter_topic: spec.dead_letter_topic.unwrap_or_default(),
                rules: Rules { rules },
                kind: listed.kind,
                status: listed.status,
            }
        })
        .collect();
    Metadata {
        id: options.app_id.clone(),
        runtime_version: concat!("outrigger-", env!("CARGO_PKG_VERSION")),
        enabled_features: Vec::new(),
        actors: Vec::new(),
        components,
        subscriptions,
        http_endpoints: Vec::new(),
        extended: shared.extended_metadata.lock().clone(),
        app_connection_properties: AppConnection {
            protocol: match options.app_protocol {
                AppProtocol::Http => "http",
                AppProtocol::H2c => "h2c",
            },
            channel_address: "127.0.0.1",
            port: options.app_port,
        },
    }
}
