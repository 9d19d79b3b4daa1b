//! The mesh.v1 stream's rules with raw clients and servers: a request for an unknown type is
//! ignored without closing the stream, a stale nonce is ignored, an ACK with the right nonce
//! counts; and a sidecar NACKs responses it cannot decode, naming what is wrong.

mod support;

use std::time::Duration;

use outrigger_proto::mesh::v1 as mesh;
use outrigger_proto::mesh::v1::aggregated_discovery_client::AggregatedDiscoveryClient;
use outrigger_proto::mesh::v1::aggregated_discovery_server::{
    AggregatedDiscovery, AggregatedDiscoveryServer,
};
use outrigger_proto::mesh::v1::{DiscoveryRequest, DiscoveryResponse, Node};
use outrigger_proto::Any;
use serde_json::Value;
use support::*;
use tokio::sync::mpsc;

fn request(type_url: &str, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_string(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

async fn acked(admin: std::net::SocketAddr) -> Value {
    let sidecars: Value = support::get_json(format!("http://{admin}/sidecars")).await;
    sidecars[0]["acked"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_ignores_unknown_types_and_stale_nonces_and_counts_the_right_ack() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("c.yaml"),
        "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec: {endpoints: [{address: 127.0.0.1:1}]}\n",
    )
    .unwrap();
    let control = start_control(config.path());
    let (listen, admin) = (control.listen, control.admin);

    let mut client = AggregatedDiscoveryClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut first = request("type.example.com/Nonsense", "", "");
    first.node = Some(Node {
        id: "raw-1".into(),
        app_id: "raw".into(),
        address: "127.0.0.1".into(),
        mesh_port: 1,
        ..Default::default()
    });
    tx.send(first).await.unwrap();
    tx.send(request(mesh::TYPE_CLUSTER, "", "")).await.unwrap();
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // The unknown type got nothing, and the stream is still alive for the known one.
    let response = inbound.message().await.unwrap().expect("a response");
    assert_eq!(response.type_url, mesh::TYPE_CLUSTER);
    assert_eq!(response.resources.len(), 1);
    let cluster: Value = serde_json::from_slice(&response.resources[0].value).unwrap();
    assert_eq!(cluster["name"], "b");

    // An answer to a nonce the server never sent is stale: ignored.
    tx.send(request(
        mesh::TYPE_CLUSTER,
        &response.version_info,
        "not-a-nonce",
    ))
    .await
    .unwrap();
    // The right nonce counts. Send it after the stale one so its effect proves ordering.
    tx.send(request(
        mesh::TYPE_CLUSTER,
        &response.version_info,
        &response.nonce,
    ))
    .await
    .unwrap();
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = acked(admin).await;
        if seen[mesh::TYPE_CLUSTER].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen[mesh::TYPE_CLUSTER],
        response.version_info.as_str(),
        "{seen}"
    );
}

/// A control plane that answers the first Cluster subscription with `bad` and reports the
/// sidecar's answer to it.
struct Misbehaving {
    bad: DiscoveryResponse,
    answers: mpsc::Sender<DiscoveryRequest>,
}

type Responses = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl AggregatedDiscovery for Misbehaving {
    type StreamStream = Responses;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Responses>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let (bad, answers) = (self.bad.clone(), self.answers.clone());
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                if request.type_url != bad.type_url {
                    continue;
                }
                if request.response_nonce.is_empty() {
                    let _ = tx.send(Ok(bad.clone())).await;
                } else {
                    let _ = answers.send(request).await;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

async fn nack_for(bad: DiscoveryResponse) -> DiscoveryRequest {
    let (answers_tx, mut answers) = mpsc::channel(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServer::new(Misbehaving {
                bad,
                answers: answers_tx,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let registry = tempfile::tempdir().unwrap();
    let _sidecar = SidecarBuilder::new("a", registry.path())
        .arg("--no-discovery")
        .arg("--control-plane")
        .arg(&format!("http://{addr}"))
        .start();
    tokio::time::timeout(Duration::from_secs(30), answers.recv())
        .await
        .expect("the sidecar answered")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_nacks_a_resource_that_is_not_json_of_its_type() {
    let bad = DiscoveryResponse {
        type_url: mesh::TYPE_CLUSTER.into(),
        version_info: "v-bad".into(),
        nonce: "n1".into(),
        resources: vec![Any {
            type_url: mesh::TYPE_CLUSTER.into(),
            value: b"\x00\x01 garbage".to_vec(),
        }],
    };
    let answer = nack_for(bad).await;
    assert_eq!(answer.response_nonce, "n1");
    assert_eq!(
        answer.version_info, "",
        "a NACK keeps the last applied version"
    );
    let error = answer.error_detail.expect("a NACK");
    assert_eq!(error.code, 3);
    assert!(
        error
            .message
            .starts_with("resources[0]: not a valid type.outrigger.dev/mesh.v1.Cluster:"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_nacks_a_subscription_with_an_invalid_routing_rule() {
    let subscription = serde_json::json!({
        "metadata": {"name": "orders"},
        "spec": {
            "pubsubname": "pubsub",
            "topic": "orders",
            "routes": {"rules": [{"match": "event.type ==", "path": "/x"}], "default": "/o"}
        }
    });
    let bad = DiscoveryResponse {
        type_url: mesh::TYPE_SUBSCRIPTION.into(),
        version_info: "v-cel".into(),
        nonce: "n9".into(),
        resources: vec![Any {
            type_url: mesh::TYPE_SUBSCRIPTION.into(),
            value: subscription.to_string().into_bytes(),
        }],
    };
    let answer = nack_for(bad).await;
    assert_eq!(answer.response_nonce, "n9");
    let message = answer.error_detail.expect("a NACK").message;
    assert!(
        message.starts_with(
            "subscription \"orders\": spec.routes.rules[0].match: invalid CEL expression \"event.type ==\""
        ),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_nacks_a_resource_of_another_type() {
    let bad = DiscoveryResponse {
        type_url: mesh::TYPE_CLUSTER.into(),
        version_info: "v-bad".into(),
        nonce: "n7".into(),
        resources: vec![Any {
            type_url: mesh::TYPE_ROUTE.into(),
            value: b"{}".to_vec(),
        }],
    };
    let answer = nack_for(bad).await;
    assert_eq!(answer.response_nonce, "n7");
    let message = answer.error_detail.expect("a NACK").message;
    assert_eq!(
        message,
        "resources[0]: type_url \"type.outrigger.dev/mesh.v1.Route\" does not match the response's \"type.outrigger.dev/mesh.v1.Cluster\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dapr_configuration_is_served_as_its_own_type() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: appconfig}\nspec:\n  accessControl: {defaultAction: deny}\n",
    )
    .unwrap();
    let control = start_control(config.path());
    let mut client = AggregatedDiscoveryClient::connect(format!("http://{}", control.listen))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(mesh::TYPE_CONFIGURATION, "", ""))
        .await
        .unwrap();
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(30), inbound.message())
        .await
        .expect("the control plane answered the subscription")
        .unwrap()
        .expect("a response");
    assert_eq!(response.type_url, mesh::TYPE_CONFIGURATION);
    assert_eq!(response.resources.len(), 1);
    let configuration: Value = serde_json::from_slice(&response.resources[0].value).unwrap();
    assert_eq!(configuration["metadata"]["name"], "appconfig");
    assert_eq!(
        configuration["spec"]["accessControl"]["defaultAction"],
        "deny"
    );
}
