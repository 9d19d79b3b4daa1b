//! One generation of a sidecar's TLS material: its certificate chain and key, the trust
//! bundle it verifies peers against, and what the certificate says about itself.
//!
//! Everything is checked and parsed once here, so a rotation cannot fail half-way and the
//! handshake path only reads prepared values.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::extensions::GeneralName;

use super::ca::{Authority, WorkloadKey};
use super::tls::provider;
use super::{IdentityError, SpiffeId};

/// A sidecar's certificate chain, key and trust bundle, ready for rustls.
#[derive(Clone, Debug)]
pub struct Material {
    id: SpiffeId,
    certified: Arc<CertifiedKey>,
    bundle: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    /// Checks a client's chain against `roots`; built here so a rotation cannot fail.
    client_verifier: Arc<dyn ClientCertVerifier>,
    not_before: SystemTime,
    not_after: SystemTime,
}

// === impl Material ===

impl Material {
    /// Material from a signer's answer: `chain` starts with the leaf issued for `key`, and
    /// `bundle` holds the roots peers' certificates must chain to.
    pub fn new(
        key: &WorkloadKey,
        chain: Vec<CertificateDer<'static>>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Material, IdentityError> {
        let leaf = chain.first().ok_or_else(|| IdentityError::Certificate {
            reason: "the certificate chain is empty; it must start with the workload certificate"
                .to_owned(),
        })?;
        let facts = inspect(leaf)?;
        let id = facts.spiffe_id()?;
        if facts.public_key != key.public_key_raw() {
            return Err(IdentityError::Certificate {
                reason: format!("the certificate for {id} was issued for another key than this sidecar's; request it with this key's CSR"),
            });
        }
        let signing_key = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.pkcs8_der()))
            .map_err(|source| IdentityError::PrivateKey { source })?;
        let (roots, client_verifier) = trust(&bundle)?;
        Ok(Material {
            id,
            certified: Arc::new(CertifiedKey::new(chain, signing_key)),
            bundle,
            roots,
            client_verifier,
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }

    /// Issues material in-process: a new key, its CSR signed by `authority` for `ttl`, and
    /// the authority's root as the whole bundle.
    pub fn issue_local(
        authority: &Authority,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<Material, IdentityError> {
        let key = WorkloadKey::generate()?;
        let cert = authority.sign_csr(&key.csr_der(id)?, id, ttl)?;
        Material::new(&key, vec![cert], vec![authority.root_der().clone()])
    }

    /// [`Material::issue_local`] with an explicit validity window.
    #[cfg(test)]
    pub(super) fn issue_local_valid(
        authority: &Authority,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Material, IdentityError> {
        let key = WorkloadKey::generate()?;
        let cert = authority.sign_csr_valid(&key.csr_der(id)?, id, not_before, not_after)?;
        Material::new(&key, vec![cert], vec![authority.root_der().clone()])
    }

    /// The same certificate and key with another trust bundle: the first step of a root
    /// rotation is to trust old and new roots before any leaf moves to the new one.
    pub fn with_bundle(
        self,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Material, IdentityError> {
        let (roots, client_verifier) = trust(&bundle)?;
        Ok(Material {
            bundle,
            roots,
            client_verifier,
            ..self
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain presented to peers, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to ask for the next certificate; see [`renew_at`].
    pub fn renew_at(&self) -> SystemTime {
        renew_at(self.not_before, self.not_after)
    }

    pub(super) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    pub(super) fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub(super) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }
}

/// Renewal point for a certificate valid from `not_before` to `not_after`: half its life,
/// moved by up to ±10 % of that half so that sidecars started together do not renew together.
/// The life counts from when the certificate was issued: `not_before` is backdated by the
/// clock-skew allowance, which must not bring renewal forward (a certificate of a few
/// seconds would otherwise be renewed at once, again and again).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let issued = (not_before + super::ca::CLOCK_SKEW).min(not_after);
    let lifetime = not_after.duration_since(issued).unwrap_or(Duration::ZERO);
    // Half life ±10 % of it: between 45 % and 55 % of the lifetime.
    issued + lifetime.mul_f64(0.45 + 0.1 * fastrand::f64())
}

type Trust = (Arc<RootCertStore>, Arc<dyn ClientCertVerifier>);

fn trust(bundle: &[CertificateDer<'static>]) -> Result<Trust, IdentityError> {
    if bundle.is_empty() {
        return Err(IdentityError::TrustBundle {
            reason: "no certificates".to_owned(),
        });
    }
    let mut roots = RootCertStore::empty();
    for (index, root) in bundle.iter().enumerate() {
        roots
            .add(root.clone())
            .map_err(|err| IdentityError::TrustBundle {
                reason: format!("certificate #{index} is not a usable trust anchor ({err})"),
            })?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider().clone())
            .build()
            .map_err(|err| IdentityError::TrustBundle {
                reason: err.to_string(),
            })?;
    Ok((roots, client_verifier))
}

// === certificate inspection ===

/// What the crate needs to know about a certificate, read with x509-parser.
#[derive(Debug)]
pub(super) struct CertFacts {
    pub(super) uris: Vec<String>,
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
    pub(super) is_ca: bool,
    pub(super) public_key: Vec<u8>,
}

impl CertFacts {
    /// The one SPIFFE id a workload certificate must carry.
    pub(super) fn spiffe_id(&self) -> Result<SpiffeId, IdentityError> {
        match self.uris.as_slice() {
            [uri] => SpiffeId::parse(uri),
            uris => Err(IdentityError::Certificate {
                reason: format!(
                    "a workload certificate carries exactly one URI SAN (its SPIFFE id); this one carries {}",
                    uris.len()
                ),
            }),
        }
    }
}

pub(super) fn inspect(der: &CertificateDer<'_>) -> Result<CertFacts, IdentityError> {
    let unreadable = |what: &str| IdentityError::Certificate {
        reason: format!("not a DER X.509 certificate ({what})"),
    };
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|err| unreadable(&err.to_string()))?;
    if !rest.is_empty() {
        return Err(unreadable("trailing bytes after the certificate"));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|err| unreadable(&err.to_string()))?;
    let uris = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    Ok(CertFacts {
        uris,
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
        is_ca: cert.is_ca(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// The SPIFFE id in a peer's leaf certificate, if it carries exactly one valid one.
pub(super) fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    inspect(der)?.spiffe_id()
}

fn system_time(unix_secs: i64) -> SystemTime {
    match u64::try_from(unix_secs) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(app: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", app).unwrap()
    }

    #[test]
    fn renewal_falls_within_ten_percent_of_half_life_counted_from_issue() {
        // not_before is backdated by the skew allowance; the life counts from issue.
        let issued = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let start = issued - super::super::ca::CLOCK_SKEW;
        let end = issued + Duration::from_secs(24 * 3600);
        for _ in 0..1000 {
            let at = renew_at(start, end).duration_since(issued).unwrap();
            assert!(at >= Duration::from_secs(12 * 3600 * 9 / 10), "{at:?}");
            assert!(at <= Duration::from_secs(12 * 3600 * 11 / 10), "{at:?}");
        }
        // A four-second certificate is renewed after about two seconds, not at once.
        let short = renew_at(start, issued + Duration::from_secs(4))
            .duration_since(issued)
            .unwrap();
        assert!(short >= Duration::from_millis(1800), "{short:?}");
    }

    #[test]
    fn issued_material_names_its_id_and_bundles_the_root() {
        let ca = Authority::generate("cluster.local").unwrap();
        let material = Material::issue_local(&ca, &id("b"), Duration::from_secs(3600)).unwrap();
        assert_eq!(material.id(), &id("b"));
        assert_eq!(material.bundle(), std::slice::from_ref(ca.root_der()));
        assert_eq!(material.chain().len(), 1);
        assert!(material.not_before() < SystemTime::now());
        assert!(material.not_after() > SystemTime::now());
    }

    #[test]
    fn refuses_a_certificate_issued_for_another_key() {
        let ca = Authority::generate("cluster.local").unwrap();
        let requester = WorkloadKey::generate().unwrap();
        let cert = ca
            .sign_csr(
                &requester.csr_der(&id("b")).unwrap(),
                &id("b"),
                Duration::from_secs(60),
            )
            .unwrap();
        let other = WorkloadKey::generate().unwrap();
        let err = Material::new(&other, vec![cert], vec![ca.root_der().clone()]).unwrap_err();
        assert!(err.to_string().contains("another key"), "{err}");
    }

    #[test]
    fn refuses_an_empty_trust_bundle() {
        let ca = Authority::generate("cluster.local").unwrap();
        let material = Material::issue_local(&ca, &id("b"), Duration::from_secs(60)).unwrap();
        let err = material.with_bundle(Vec::new()).unwrap_err();
        assert!(matches!(err, IdentityError::TrustBundle { .. }), "{err}");
    }
}
