//! Real TLS handshakes between two [`MeshTls`] over an in-memory pipe: the specification of
//! who accepts whom.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::{peer_id, Alpn, Authority, Material, MeshTls, SpiffeId};

const HOUR: Duration = Duration::from_secs(3600);

fn id(trust_domain: &str, app: &str) -> SpiffeId {
    SpiffeId::new(trust_domain, "default", app).unwrap()
}

fn workload(ca: &Authority, app: &str) -> Arc<MeshTls> {
    let id = id(ca.trust_domain(), app);
    MeshTls::new(Material::issue_local(ca, &id, HOUR).unwrap())
}

struct Outcome {
    client: std::io::Result<client::TlsStream<DuplexStream>>,
    server: std::io::Result<server::TlsStream<DuplexStream>>,
}

/// `client` dials `server` expecting `expected`; both ends finish or fail within 5 s.
async fn handshake(client: &MeshTls, expected: &SpiffeId, server: &MeshTls, alpn: Alpn) -> Outcome {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(client.client_config(expected, alpn));
    let acceptor = TlsAcceptor::from(server.server_config());
    let both = async {
        tokio::join!(
            connector.connect(MeshTls::server_name(), near),
            acceptor.accept(far)
        )
    };
    let (client, server) = tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .expect("the handshake finishes");
    Outcome { client, server }
}

/// Sends `ping` one way and `pong` back, proving the connection carries data both ways.
async fn exchange(
    client: &mut client::TlsStream<DuplexStream>,
    server: &mut server::TlsStream<DuplexStream>,
) {
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

/// In TLS 1.3 the client finishes before the server has judged its certificate, so a
/// refusal of the client shows on the client's first read.
async fn client_sees_refusal(client: std::io::Result<client::TlsStream<DuplexStream>>) {
    if let Ok(mut stream) = client {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the refusal arrives");
        assert!(!matches!(read, Ok(n) if n > 0), "no data after a refusal");
    }
}

#[tokio::test]
async fn workloads_of_one_ca_handshake_and_learn_each_others_id() {
    let ca = Authority::generate("cluster.local").unwrap();
    let (a, b) = (workload(&ca, "a"), workload(&ca, "b"));
    let outcome = handshake(&a, b.own_id(), &b, Alpn::Http1).await;
    let mut client = outcome.client.expect("client handshake");
    let mut server = outcome.server.expect("server handshake");
    assert_eq!(peer_id(client.get_ref().1), Some(id("cluster.local", "b")));
    assert_eq!(peer_id(server.get_ref().1), Some(id("cluster.local", "a")));
    exchange(&mut client, &mut server).await;
}

#[tokio::test]
async fn server_picks_the_one_protocol_the_client_offers() {
    let ca = Authority::generate("cluster.local").unwrap();
    let (a, b) = (workload(&ca, "a"), workload(&ca, "b"));
    for (alpn, expected) in [(Alpn::H2, &b"h2"[..]), (Alpn::Http1, &b"http/1.1"[..])] {
        let outcome = handshake(&a, b.own_id(), &b, alpn).await;
        let server = outcome.server.expect("server handshake");
        assert_eq!(server.get_ref().1.alpn_protocol(), Some(expected));
        let client = outcome.client.expect("client handshake");
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(expected));
    }
}

#[tokio::test]
async fn client_expecting_c_refuses_a_server_presenting_b() {
    let ca = Authority::generate("cluster.local").unwrap();
    let (a, b) = (workload(&ca, "a"), workload(&ca, "b"));
    let outcome = handshake(&a, &id("cluster.local", "c"), &b, Alpn::Http1).await;
    let err = outcome
        .client
        .expect_err("the client refuses b")
        .to_string();
    assert!(
        err.contains("the server is spiffe://cluster.local/ns/default/b, but spiffe://cluster.local/ns/default/c was dialed"),
        "{err}"
    );
    assert!(outcome.server.is_err(), "the server sees the alert");
}

#[tokio::test]
async fn server_refuses_a_client_of_another_trust_domain() {
    let ours = Authority::generate("cluster.local").unwrap();
    let theirs = Authority::generate("example.org").unwrap();
    let b = workload(&ours, "b");
    // The stranger trusts our root, so only the server's check can stop it.
    let stranger_material = Material::issue_local(&theirs, &id("example.org", "a"), HOUR)
        .unwrap()
        .with_bundle(vec![ours.root_der().clone()])
        .unwrap();
    let stranger = MeshTls::new(stranger_material);
    let outcome = handshake(&stranger, b.own_id(), &b, Alpn::Http1).await;
    let err = outcome.server.expect_err("the server refuses").to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    client_sees_refusal(outcome.client).await;
}

#[tokio::test]
async fn server_refuses_a_client_of_another_trust_domain_whose_root_it_holds() {
    // A bundle that (wrongly) holds a foreign root still does not admit foreign workloads.
    let ours = Authority::generate("cluster.local").unwrap();
    let theirs = Authority::generate("example.org").unwrap();
    let b_material = Material::issue_local(&ours, &id("cluster.local", "b"), HOUR)
        .unwrap()
        .with_bundle(vec![ours.root_der().clone(), theirs.root_der().clone()])
        .unwrap();
    let b = MeshTls::new(b_material);
    let stranger_material = Material::issue_local(&theirs, &id("example.org", "a"), HOUR)
        .unwrap()
        .with_bundle(vec![ours.root_der().clone()])
        .unwrap();
    let stranger = MeshTls::new(stranger_material);
    let outcome = handshake(&stranger, b.own_id(), &b, Alpn::Http1).await;
    let err = outcome.server.expect_err("the server refuses").to_string();
    assert!(
        err.contains("the client is spiffe://example.org/ns/default/a, outside this mesh's trust domain `cluster.local`"),
        "{err}"
    );
    client_sees_refusal(outcome.client).await;
}

#[tokio::test]
async fn server_refuses_an_expired_client_certificate() {
    let ca = Authority::generate("cluster.local").unwrap();
    let b = workload(&ca, "b");
    let now = SystemTime::now();
    let expired =
        Material::issue_local_valid(&ca, &id("cluster.local", "a"), now - 3 * HOUR, now - HOUR)
            .unwrap();
    let a = MeshTls::new(expired);
    let outcome = handshake(&a, b.own_id(), &b, Alpn::Http1).await;
    let err = outcome.server.expect_err("the server refuses").to_string();
    assert!(err.contains("certificate expired"), "{err}");
    client_sees_refusal(outcome.client).await;
}

#[tokio::test]
async fn root_rotation_keeps_old_and_new_leaves_talking() {
    let old_root = Authority::generate("cluster.local").unwrap();
    let new_root = Authority::generate("cluster.local").unwrap();
    let (a, b) = (workload(&old_root, "a"), workload(&old_root, "b"));
    let before = handshake(&b, a.own_id(), &a, Alpn::Http1).await;
    let (mut kept_client, mut kept_server) = (before.client.unwrap(), before.server.unwrap());

    // Step 1: everyone trusts both roots. Step 2: a moves to a leaf of the new root.
    let both = vec![old_root.root_der().clone(), new_root.root_der().clone()];
    for w in [&a, &b] {
        let widened = (*w.current()).clone().with_bundle(both.clone()).unwrap();
        w.rotate(widened).unwrap();
    }
    let renewed = Material::issue_local(&new_root, a.own_id(), HOUR)
        .unwrap()
        .with_bundle(both)
        .unwrap();
    let new_leaf = renewed.chain()[0].clone();
    a.rotate(renewed).unwrap();

    let b_dials_a = handshake(&b, a.own_id(), &a, Alpn::Http1).await;
    let (mut client, mut server) = (b_dials_a.client.unwrap(), b_dials_a.server.unwrap());
    assert_eq!(client.get_ref().1.peer_certificates().unwrap()[0], new_leaf);
    assert_eq!(peer_id(server.get_ref().1), Some(id("cluster.local", "b")));
    exchange(&mut client, &mut server).await;

    let a_dials_b = handshake(&a, b.own_id(), &b, Alpn::Http1).await;
    let (mut client, mut server) = (a_dials_b.client.unwrap(), a_dials_b.server.unwrap());
    assert_eq!(server.get_ref().1.peer_certificates().unwrap()[0], new_leaf);
    exchange(&mut client, &mut server).await;

    exchange(&mut kept_client, &mut kept_server).await;
}

#[tokio::test]
async fn peer_without_the_new_root_refuses_a_rotated_certificate() {
    let old_root = Authority::generate("cluster.local").unwrap();
    let new_root = Authority::generate("cluster.local").unwrap();
    let (a, b) = (workload(&old_root, "a"), workload(&old_root, "b"));
    a.rotate(Material::issue_local(&new_root, a.own_id(), HOUR).unwrap())
        .unwrap();
    let outcome = handshake(&b, a.own_id(), &a, Alpn::Http1).await;
    let err = outcome
        .client
        .expect_err("b does not trust the new root")
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn rotation_to_another_identity_is_refused() {
    let ca = Authority::generate("cluster.local").unwrap();
    let a = workload(&ca, "a");
    let other = Material::issue_local(&ca, &id("cluster.local", "b"), HOUR).unwrap();
    let err = a.rotate(other).unwrap_err().to_string();
    assert!(err.contains("cannot change without a restart"), "{err}");
    assert_eq!(a.current().id(), &id("cluster.local", "a"));
}

#[tokio::test]
async fn client_configs_are_reused_per_peer_and_protocol() {
    let ca = Authority::generate("cluster.local").unwrap();
    let a = workload(&ca, "a");
    let b = id("cluster.local", "b");
    let first = a.client_config(&b, Alpn::Http1);
    assert!(Arc::ptr_eq(&first, &a.client_config(&b, Alpn::Http1)));
    assert!(!Arc::ptr_eq(&first, &a.client_config(&b, Alpn::H2)));
    assert!(Arc::ptr_eq(&a.server_config(), &a.server_config()));
}
