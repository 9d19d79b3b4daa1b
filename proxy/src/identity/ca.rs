//! The certificate authority of a trust domain, and the workload side of issuance.
//!
//! The signer never sees a workload's private key: the workload makes a [`WorkloadKey`],
//! sends a CSR, and [`Authority::sign_csr`] builds the certificate from the *expected*
//! identity, using only the CSR's public key — so a local CA and a control plane signing
//! remote CSRs share one path, and a sidecar cannot ask for another app's identity.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};

use super::material::inspect;
use super::spiffe::check_trust_domain;
use super::{IdentityError, SpiffeId};

/// How long a generated root CA is valid.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How long a workload certificate is valid unless the caller asks otherwise.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Certificates start this far in the past so a peer whose clock runs behind accepts them.
pub(super) const CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// A trust domain's root: its certificate and the key that signs workload certificates.
pub struct Authority {
    trust_domain: String,
    root_der: CertificateDer<'static>,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

// === impl Authority ===

impl Authority {
    /// A fresh self-signed P-256 root for `trust_domain`, valid for [`DEFAULT_ROOT_TTL`].
    pub fn generate(trust_domain: &str) -> Result<Authority, IdentityError> {
        Authority::generate_with_ttl(trust_domain, DEFAULT_ROOT_TTL)
    }

    /// A fresh self-signed P-256 root for `trust_domain`, valid for `ttl`.
    pub fn generate_with_ttl(
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<Authority, IdentityError> {
        check_trust_domain(trust_domain).map_err(|reason| IdentityError::InvalidSpiffeId {
            id: format!("spiffe://{trust_domain}"),
            reason,
        })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            IdentityError::Generate {
                action: "generate the CA key",
                source,
            }
        })?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.not_before = datetime(now - CLOCK_SKEW)?;
        params.not_after = datetime(now + ttl)?;
        let serial = random_serial();
        // A tag from the serial tells successive roots apart, for people and for path
        // building (an unknown root with a known name reads as a bad signature otherwise).
        let tag: String = serial.to_bytes()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        params.serial_number = Some(serial);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Outrigger mesh CA for {trust_domain} ({tag})"),
        );
        // The SPIFFE convention for a trust domain's own id; it is also how a root loaded
        // from disk tells which trust domain it serves.
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        // Path length 0: this root signs workloads directly, never intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let root = params
            .self_signed(&key)
            .map_err(|source| IdentityError::Generate {
                action: "self-sign the CA certificate",
                source,
            })?;
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            root_der: root.der().clone(),
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An authority from a root certificate and its PKCS#8 key, both PEM.
    pub fn from_pem(root_pem: &str, key_pem: &str) -> Result<Authority, IdentityError> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| IdentityError::Generate {
            action: "read the CA key (expected a PKCS#8 PEM `PRIVATE KEY`)",
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(root_pem, key).map_err(|source| IdentityError::Generate {
                action: "read the CA certificate (expected a PEM `CERTIFICATE`)",
                source,
            })?;
        let root_der = pem_certificate(root_pem)?;
        let facts = inspect(&root_der)?;
        if !facts.is_ca {
            return Err(IdentityError::Certificate {
                reason: "the root certificate is not a CA (basic constraints cA is not set)"
                    .to_owned(),
            });
        }
        if facts.public_key != issuer.key().public_key_raw() {
            return Err(IdentityError::Certificate {
                reason: "the CA key does not belong to the root certificate".to_owned(),
            });
        }
        let trust_domain = facts
            .uris
            .iter()
            .find_map(|uri| uri.strip_prefix("spiffe://"))
            .filter(|td| check_trust_domain(td).is_ok())
            .ok_or_else(|| IdentityError::Certificate {
                reason: "the root certificate names no trust domain (no `spiffe://<trust-domain>` URI SAN)"
                    .to_owned(),
            })?
            .to_owned();
        Ok(Authority {
            trust_domain,
            root_der,
            root_pem: root_pem.to_owned(),
            issuer,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate: what every workload of the trust domain puts in its bundle.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The signing key as PKCS#8 PEM, for persisting the local CA only.
    pub(super) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a workload certificate for `expected`, valid from 15 minutes ago for `ttl`.
    ///
    /// The CSR must carry exactly one SAN, the URI of `expected`, and an ECDSA P-256 key;
    /// the certificate is built from `expected`, not from the CSR, so nothing else the CSR
    /// asks for (CA status, extra names, key usages) reaches the certificate.
    pub fn sign_csr(
        &self,
        csr: &CertificateSigningRequestDer<'_>,
        expected: &SpiffeId,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        let now = SystemTime::now();
        self.sign_csr_valid(csr, expected, now - CLOCK_SKEW, now + ttl)
    }

    /// [`Authority::sign_csr`] with an explicit validity window (tests issue expired ones).
    pub(super) fn sign_csr_valid(
        &self,
        csr: &CertificateSigningRequestDer<'_>,
        expected: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        if expected.trust_domain() != self.trust_domain {
            return Err(IdentityError::CsrRefused {
                reason: format!(
                    "this CA signs for trust domain `{}`, not for {expected}",
                    self.trust_domain
                ),
            });
        }
        // from_der checks the CSR's signature: the requester holds the private key.
        let request = CertificateSigningRequestParams::from_der(csr).map_err(|err| {
            IdentityError::CsrRefused {
                reason: format!("not a valid, self-signed PKCS#10 request ({err})"),
            }
        })?;
        if request.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(IdentityError::CsrRefused {
                reason: "the key must be ECDSA P-256".to_owned(),
            });
        }
        let want = expected.to_uri();
        match request.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] if uri.as_str() == want => {}
            [SanType::URI(uri)] => {
                return Err(IdentityError::CsrIdentityMismatch {
                    requested: uri.as_str().to_owned(),
                    expected: expected.clone(),
                })
            }
            other => {
                return Err(IdentityError::CsrRefused {
                    reason: format!(
                        "it must carry exactly one SAN, the URI {want}, but carries {}",
                        other.len()
                    ),
                })
            }
        }

        let mut params = CertificateParams::default();
        params.not_before = datetime(not_before)?;
        params.not_after = datetime(not_after)?;
        params.serial_number = Some(random_serial());
        // An empty subject makes rcgen mark the SAN critical, as RFC 5280 requires; the
        // identity lives in the URI SAN alone (X509-SVID).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&want)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Lets a peer holding several roots (during root rotation) find the issuer by key.
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(|source| IdentityError::Generate {
                action: "sign the workload certificate",
                source,
            })?;
        Ok(cert.der().clone())
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

// === impl WorkloadKey ===

/// A workload's ECDSA P-256 key pair; generated in the sidecar, it never leaves the process.
pub struct WorkloadKey {
    key: KeyPair,
}

impl WorkloadKey {
    pub fn generate() -> Result<WorkloadKey, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            IdentityError::Generate {
                action: "generate the workload key",
                source,
            }
        })?;
        Ok(WorkloadKey { key })
    }

    /// A PKCS#10 request, signed by this key, for a certificate naming `id`.
    pub fn csr_der(
        &self,
        id: &SpiffeId,
    ) -> Result<CertificateSigningRequestDer<'static>, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&id.to_uri())?];
        let csr =
            params
                .serialize_request(&self.key)
                .map_err(|source| IdentityError::Generate {
                    action: "build the certificate signing request",
                    source,
                })?;
        Ok(csr.der().clone())
    }

    /// The raw public key, to match against a certificate.
    pub(super) fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }

    pub(super) fn pkcs8_der(&self) -> PrivatePkcs8KeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der())
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey { .. }")
    }
}

// === helpers ===

fn uri_san(uri: &str) -> Result<SanType, IdentityError> {
    let ia5 = uri.try_into().map_err(|source| IdentityError::Generate {
        action: "encode the URI SAN",
        source,
    })?;
    Ok(SanType::URI(ia5))
}

/// A 128-bit positive serial; uniqueness per issuer is all RFC 5280 asks of it.
fn random_serial() -> SerialNumber {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn datetime(at: SystemTime) -> Result<time::OffsetDateTime, IdentityError> {
    let secs = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| IdentityError::Certificate {
            reason: format!("validity instant {at:?} is outside the range X.509 can express"),
        })
}

fn pem_certificate(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| IdentityError::Certificate {
        reason: format!("expected a PEM `CERTIFICATE` block ({err})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(app: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", app).unwrap()
    }

    #[test]
    fn signs_a_csr_for_the_expected_identity() {
        let ca = Authority::generate("cluster.local").unwrap();
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_der(&id("b")).unwrap();
        let cert = ca.sign_csr(&csr, &id("b"), DEFAULT_WORKLOAD_TTL).unwrap();
        let facts = inspect(&cert).unwrap();
        assert_eq!(
            facts.uris,
            vec!["spiffe://cluster.local/ns/default/b".to_owned()]
        );
        assert!(!facts.is_ca);
        assert_eq!(facts.public_key, key.public_key_raw());
        let lifetime = facts.not_after.duration_since(facts.not_before).unwrap();
        assert_eq!(lifetime, DEFAULT_WORKLOAD_TTL + CLOCK_SKEW);
    }

    #[test]
    fn refuses_a_csr_for_another_app_than_the_caller() {
        let ca = Authority::generate("cluster.local").unwrap();
        let csr = WorkloadKey::generate().unwrap().csr_der(&id("c")).unwrap();
        let err = ca
            .sign_csr(&csr, &id("b"), DEFAULT_WORKLOAD_TTL)
            .unwrap_err();
        assert!(
            matches!(&err, IdentityError::CsrIdentityMismatch { requested, expected }
                if requested == "spiffe://cluster.local/ns/default/c" && *expected == id("b")),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("may only request its own identity"));
    }

    #[test]
    fn refuses_an_identity_outside_its_trust_domain() {
        let ca = Authority::generate("cluster.local").unwrap();
        let other = SpiffeId::new("example.org", "default", "b").unwrap();
        let csr = WorkloadKey::generate().unwrap().csr_der(&other).unwrap();
        let err = ca.sign_csr(&csr, &other, DEFAULT_WORKLOAD_TTL).unwrap_err();
        assert!(
            err.to_string()
                .contains("signs for trust domain `cluster.local`"),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_csr_with_a_forged_signature() {
        let ca = Authority::generate("cluster.local").unwrap();
        let csr = WorkloadKey::generate().unwrap().csr_der(&id("b")).unwrap();
        let mut forged = csr.as_ref().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        let err = ca
            .sign_csr(&forged.into(), &id("b"), DEFAULT_WORKLOAD_TTL)
            .unwrap_err();
        assert!(matches!(err, IdentityError::CsrRefused { .. }), "{err}");
    }

    #[test]
    fn root_round_trips_through_pem_with_its_trust_domain() {
        let ca = Authority::generate("example.org").unwrap();
        let loaded = Authority::from_pem(ca.root_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.trust_domain(), "example.org");
        assert_eq!(loaded.root_der(), ca.root_der());
        assert!(inspect(loaded.root_der()).unwrap().is_ca);
    }

    #[test]
    fn from_pem_refuses_a_key_of_another_root() {
        let ca = Authority::generate("cluster.local").unwrap();
        let other = Authority::generate("cluster.local").unwrap();
        let err = Authority::from_pem(ca.root_pem(), &other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
