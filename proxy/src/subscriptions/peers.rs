//! The in-memory broker across sidecars on one host. Each sidecar's `pubsub.in-memory` lives
//! in its own process; a message published to it is also handed, through the local registry,
//! to one sidecar of every other app on the host (`POST /.outrigger/pubsub/{pubsub}/{topic}`
//! on its mesh listener, loopback clients only), which puts it in its own broker of the same
//! name. Each app id is a consumer group, so each app gets the message once. A peer that is
//! down, or has no in-memory broker of that name, misses it: in-memory pub/sub keeps nothing
//! for later, here as in Dapr.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use outrigger_pubsub::OutgoingMessage;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};

use crate::answer::Answer;
use crate::blocks::pubsub::ERR_PUBSUB_NOT_FOUND;
use crate::blocks::{BlockError, ERR_MALFORMED_REQUEST};
use crate::http1::head::HeaderEdits;
use crate::listeners::Downstream;
use crate::shared::Shared;
use crate::upstream::call;
use crate::upstream::Target;

/// The mesh listener's path prefix for messages from peer sidecars.
pub(crate) const PATH_PREFIX: &str = "/.outrigger/pubsub/";
/// The header carrying a message's broker metadata (JSON).
const METADATA_HEADER: &str = "outrigger-pubsub-metadata";
/// How long a peer may take to take a message.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Hands a message published on `pubsub` here to one sidecar of every other app on the host.
pub(crate) async fn fan_out(shared: &Shared, pubsub: &str, message: OutgoingMessage) {
    let Some(registry) = &shared.registry else {
        return;
    };
    let options = &shared.options;
    let peers = registry.apps_except(&options.app_id, options.namespace.as_deref());
    if peers.is_empty() {
        return;
    }
    let path = format!(
        "{PATH_PREFIX}{}/{}",
        utf8_percent_encode(pubsub, NON_ALPHANUMERIC),
        utf8_percent_encode(&message.topic, NON_ALPHANUMERIC)
    );
    let metadata = serde_json::to_string(&message.metadata).unwrap_or_default();
    let sends = peers.iter().map(|(app, namespace, peer)| {
        let (path, metadata, data) = (&path, &metadata, message.data.clone());
        async move {
            let tls = match &shared.identity {
                Some(identity) => Some(
                    identity
                        .peer(app, namespace.as_deref())
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let target = Target {
                set: &peer.endpoints,
                protocol: options.mesh_protocol,
                head_timeout: Some(PEER_TIMEOUT),
                connect_timeout: options.connect_timeout,
                hash_key: None,
                retry: None,
                breaker: None,
                tls: tls.as_deref(),
            };
            let request = call::request(
                Method::POST,
                "outrigger-peer",
                path,
                &[
                    ("content-type", "application/octet-stream"),
                    (METADATA_HEADER, metadata),
                ],
                data,
            )?;
            let reply = call::call(
                &target,
                request,
                &HeaderEdits::default(),
                4096,
                PEER_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
            match reply.status {
                204 | 404 => Ok(()),
                status => Err(format!(
                    "answered {status}: {}",
                    String::from_utf8_lossy(&reply.body)
                )),
            }
        }
    });
    for result in futures_util::future::join_all(sends).await {
        if let Err(e) = result {
            tracing::warn!(pubsub, topic = %message.topic, error = %e, "an in-memory pub/sub message did not reach a sidecar on this host");
        }
    }
}

/// `POST /.outrigger/pubsub/{pubsub}/{topic}` from a peer: into this sidecar's own in-memory
/// broker of that name (404 when there is none).
pub(crate) async fn receive<D: Downstream>(shared: &Shared, request: &mut D) -> Answer {
    if !request.is_loopback_peer() {
        return BlockError::new(
            403,
            ERR_MALFORMED_REQUEST,
            "pub/sub hand-over is only taken from sidecars on this host",
        )
        .into();
    }
    let body = match request.read_body(shared.options.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => return error.into(),
    };
    let rest = &request.path()[PATH_PREFIX.len()..];
    let Some((pubsub, topic)) = rest.split_once('/') else {
        return BlockError::malformed("expected /.outrigger/pubsub/{pubsub}/{topic}").into();
    };
    let (Ok(pubsub), Ok(topic)) = (
        percent_decode_str(pubsub).decode_utf8(),
        percent_decode_str(topic).decode_utf8(),
    ) else {
        return BlockError::malformed("pubsub and topic must be percent-encoded UTF-8").into();
    };
    if request.method() != Method::POST || topic.is_empty() {
        return BlockError::malformed("expected POST /.outrigger/pubsub/{pubsub}/{topic}").into();
    }
    let metadata: BTreeMap<String, String> = match request.header_str(METADATA_HEADER) {
        None => BTreeMap::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(metadata) => metadata,
            Err(e) => {
                return BlockError::malformed(format!("{METADATA_HEADER}: {e}")).into();
            }
        },
    };
    let entry = shared.config.load().pubsubs.get(pubsub.as_ref()).cloned();
    let Some(entry) = entry.filter(|e| e.component.opened.settings.in_process) else {
        return BlockError::new(
            404,
            ERR_PUBSUB_NOT_FOUND,
            format!("no in-memory pubsub {pubsub} here"),
        )
        .into();
    };
    let message = OutgoingMessage {
        topic: topic.into_owned(),
        data: body,
        metadata,
    };
    match entry.component.opened.broker.publish(message).await {
        Ok(()) => Answer::no_content(),
        Err(e) => BlockError::new(500, "ERR_PUBSUB_PUBLISH_MESSAGE", e.to_string()).into(),
    }
}
