//! `GET /v1.0/metadata`: who this sidecar is and what it serves, in daprd's JSON shape (the
//! JS SDK polls it at start-up).

use bytes::Bytes;
use serde_json::json;

use crate::components::in_scope;
use crate::options::AppProtocol;
use crate::sidecar::Sidecar;

pub(super) fn render(sidecar: &Sidecar) -> Bytes {
    let active = sidecar.active();
    let snapshot = &active.snapshot;
    let options = &sidecar.options;
    let components: Vec<_> = snapshot
        .components
        .values()
        .filter(|c| in_scope(c, &sidecar.options.app_id))
        .map(|c| {
            let capabilities = if active.state_stores.contains_key(c.name()) {
                outrigger_state::CAPABILITIES
            } else {
                &[]
            };
            json!({
                "name": c.name(),
                "type": c.spec.component_type.as_str(),
                "version": c.spec.version,
                "capabilities": capabilities,
            })
        })
        .collect();
    let subscriptions: Vec<_> = snapshot
        .subscriptions
        .iter()
        .map(|s| {
            json!({
                "pubsubname": s.spec.pubsubname,
                "topic": s.spec.topic,
                "deadLetterTopic": s.spec.dead_letter_topic.clone().unwrap_or_default(),
                "rules": {"rules": s.spec.routes.rules.iter().map(|r| json!({"match": r.match_expr, "path": r.path})).collect::<Vec<_>>()},
                "type": "DECLARATIVE",
            })
        })
        .collect();
    let protocol = match options.app_protocol {
        AppProtocol::Http => "http",
        AppProtocol::H2c => "h2c",
    };
    let mut app_connection = json!({"protocol": protocol, "channelAddress": "127.0.0.1"});
    if let Some(port) = options.app_port {
        app_connection["port"] = json!(port);
    }
    let body = json!({
        "id": options.app_id,
        "runtimeVersion": concat!("outrigger-", env!("CARGO_PKG_VERSION")),
        "enabledFeatures": [],
        "actors": [],
        "components": components,
        "subscriptions": subscriptions,
        "httpEndpoints": [],
        "extended": *sidecar.extended_metadata.lock(),
        "appConnectionProperties": app_connection,
    });
    Bytes::from(body.to_string())
}
