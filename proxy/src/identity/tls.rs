//! Mutual TLS between sidecars: TLS 1.3 only, ring, a certificate on both sides, and the
//! peer identified by the SPIFFE id in its certificate rather than by a DNS name.
//!
//! [`MeshTls`] is a watched cell of [`Material`]. The certificate resolvers and verifiers
//! read the cell on every handshake, so one `ServerConfig` and one `ClientConfig` per
//! (peer, ALPN) serve across rotations: a rotation is a store, new handshakes see it at
//! once, and established connections keep the material they were made with.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert, Resumption};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};

use super::material::spiffe_id_of;
use super::{IdentityError, Material, SpiffeId};

const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// Distinct peers a sidecar dials are few; past this many, start the cache over.
const MAX_CACHED_PEERS: usize = 1024;

/// The application protocol a mesh connection carries; a client offers exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    Http1,
    H2,
}

impl Alpn {
    pub fn protocol(self) -> &'static [u8] {
        match self {
            Alpn::Http1 => b"http/1.1",
            Alpn::H2 => b"h2",
        }
    }
}

/// A sidecar's mesh TLS: its identity, its current material, and the rustls configs.
#[derive(Debug)]
pub struct MeshTls {
    own: SpiffeId,
    current: Arc<ArcSwap<Material>>,
    server: Arc<ServerConfig>,
    clients: RwLock<HashMap<SpiffeId, ClientConfigs>>,
}

#[derive(Debug, Default)]
struct ClientConfigs {
    http1: Option<Arc<ClientConfig>>,
    h2: Option<Arc<ClientConfig>>,
}

// === impl MeshTls ===

impl MeshTls {
    /// The sidecar's identity is the one `material` was issued for.
    pub fn new(material: Material) -> Arc<MeshTls> {
        let own = material.id().clone();
        let current = Arc::new(ArcSwap::from_pointee(material));
        let mut server = ServerConfig::builder_with_provider(provider().clone())
            .with_protocol_versions(TLS13_ONLY)
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(ClientIdentityVerifier {
                current: current.clone(),
                trust_domain: own.trust_domain().to_owned(),
            }))
            .with_cert_resolver(Arc::new(CurrentCert {
                current: current.clone(),
            }));
        // The server picks in its own order, so h2 only when a client offers it.
        server.alpn_protocols = vec![
            Alpn::H2.protocol().to_vec(),
            Alpn::Http1.protocol().to_vec(),
        ];
        // A resumed session skips certificate verification; every connection is checked
        // against the current bundle instead (mesh connections are pooled, so few are made).
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Arc::new(MeshTls {
            own,
            current,
            server: Arc::new(server),
            clients: RwLock::new(HashMap::new()),
        })
    }

    /// Switches to new material (a renewed certificate, a new trust bundle, or both).
    ///
    /// Refuses material for another identity: peers and routes know this sidecar by it.
    pub fn rotate(&self, material: Material) -> Result<(), IdentityError> {
        if material.id() != &self.own {
            return Err(IdentityError::IdentityChanged {
                own: self.own.to_uri(),
                offered: material.id().to_uri(),
            });
        }
        self.current.store(Arc::new(material));
        Ok(())
    }

    pub fn own_id(&self) -> &SpiffeId {
        &self.own
    }

    /// The material new handshakes use.
    pub fn current(&self) -> Arc<Material> {
        self.current.load_full()
    }

    /// When the current certificate stops being valid.
    pub fn expires_at(&self) -> SystemTime {
        self.current.load().not_after()
    }

    /// The config for accepting mesh connections; cheap to call per connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The config for dialing a sidecar that must prove it is `expected`, offering `alpn`.
    pub fn client_config(&self, expected: &SpiffeId, alpn: Alpn) -> Arc<ClientConfig> {
        if let Some(config) = self.clients.read().get(expected).and_then(|c| c.get(alpn)) {
            return config.clone();
        }
        let config = self.build_client_config(expected, alpn);
        let mut clients = self.clients.write();
        if clients.len() >= MAX_CACHED_PEERS && !clients.contains_key(expected) {
            clients.clear();
        }
        let slot = clients.entry(expected.clone()).or_default().slot(alpn);
        slot.get_or_insert(config).clone()
    }

    /// The name to dial with: the verifier ignores it, and SNI is off.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("outrigger.mesh").expect("a valid DNS name")
    }

    fn build_client_config(&self, expected: &SpiffeId, alpn: Alpn) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider().clone())
            .with_protocol_versions(TLS13_ONLY)
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier {
                current: self.current.clone(),
                expected: expected.clone(),
            }))
            .with_client_cert_resolver(Arc::new(CurrentCert {
                current: self.current.clone(),
            }));
        config.alpn_protocols = vec![alpn.protocol().to_vec()];
        config.resumption = Resumption::disabled();
        config.enable_sni = false;
        Arc::new(config)
    }
}

impl ClientConfigs {
    fn get(&self, alpn: Alpn) -> Option<&Arc<ClientConfig>> {
        match alpn {
            Alpn::Http1 => self.http1.as_ref(),
            Alpn::H2 => self.h2.as_ref(),
        }
    }

    fn slot(&mut self, alpn: Alpn) -> &mut Option<Arc<ClientConfig>> {
        match alpn {
            Alpn::Http1 => &mut self.http1,
            Alpn::H2 => &mut self.h2,
        }
    }
}

/// The verified peer's SPIFFE id, once the handshake is complete.
pub fn peer_id(conn: &CommonState) -> Option<SpiffeId> {
    spiffe_id_of(conn.peer_certificates()?.first()?).ok()
}

/// The one crypto provider of the mesh; ring, never aws-lc.
pub(super) fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(ring::default_provider()))
}

// === impl CurrentCert ===

/// Presents whatever certificate the cell holds at handshake time, as server and client.
#[derive(Debug)]
struct CurrentCert {
    current: Arc<ArcSwap<Material>>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified_key().clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// === impl ClientIdentityVerifier ===

/// Server side: the client's chain must reach the current bundle, and its SPIFFE id must
/// be in our trust domain. Which apps may call which is policy, decided after the handshake.
#[derive(Debug)]
struct ClientIdentityVerifier {
    current: Arc<ArcSwap<Material>>,
    trust_domain: String,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would pin the bundle of the moment the config was built; a mesh client has
        // exactly one certificate to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        bounded_chain(intermediates)?;
        let material = self.current.load();
        material
            .client_verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer = spiffe_id_of(end_entity).map_err(refused)?;
        if peer.trust_domain() != self.trust_domain {
            return Err(refused(IdentityError::Certificate {
                reason: format!(
                    "the client is {peer}, outside this mesh's trust domain `{}`",
                    self.trust_domain
                ),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === impl ServerIdentityVerifier ===

/// Client side: the server's chain must reach the current bundle and its SPIFFE id must be
/// exactly the one dialed; the DNS name is meaningless in the mesh and ignored.
#[derive(Debug)]
struct ServerIdentityVerifier {
    current: Arc<ArcSwap<Material>>,
    expected: SpiffeId,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        bounded_chain(intermediates)?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            self.current.load().roots(),
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let peer = spiffe_id_of(end_entity).map_err(refused)?;
        if peer != self.expected {
            return Err(refused(IdentityError::Certificate {
                reason: format!("the server is {peer}, but {} was dialed", self.expected),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate refused for its identity, with the reason kept for the handshake error.
/// Intermediates a peer may send. Path building tries them against each other before the
/// peer is authenticated, so an unbounded chain is free work for anyone who can connect. The
/// local CA signs workload certificates directly; two leaves room for a CA of your own.
const MAX_INTERMEDIATES: usize = 2;

fn bounded_chain(intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(refused(IdentityError::Certificate {
            reason: format!(
                "the chain carries {} intermediate certificates; at most {MAX_INTERMEDIATES} are accepted",
                intermediates.len()
            ),
        }));
    }
    Ok(())
}

fn refused(err: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}
