//! Workload identity for the mesh: SPIFFE ids, the certificate authority that signs them,
//! and the rustls configurations two sidecars use to prove who they are to each other.
//!
//! A sidecar generates its own key ([`WorkloadKey`]) and only ever hands out a CSR, so the
//! same flow works with the local per-user CA ([`LocalAuthority`]) and a remote signer.
//! [`MeshTls`] is the watched cell of current [`Material`]; rotation is a store.

mod ca;
mod local;
mod material;
mod spiffe;
mod tls;

#[cfg(test)]
mod handshake_tests;

use std::path::PathBuf;

pub use ca::{Authority, WorkloadKey, DEFAULT_ROOT_TTL, DEFAULT_WORKLOAD_TTL};
pub use local::LocalAuthority;
pub use material::{renew_at, Material};
pub use spiffe::{SpiffeId, DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN};
pub use tls::{peer_id, Alpn, MeshTls};

/// Everything that can go wrong creating, loading, issuing or checking an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid SPIFFE id `{id}`: {reason}; expected spiffe://<trust-domain>/ns/<namespace>/<app-id>")]
    InvalidSpiffeId { id: String, reason: String },

    #[error("could not {action}: {source}")]
    Generate {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },

    #[error("refused certificate signing request: {reason}")]
    CsrRefused { reason: String },

    #[error("refused certificate signing request: it asks for {requested} but the caller is {expected}; a sidecar may only request its own identity")]
    CsrIdentityMismatch {
        requested: String,
        expected: SpiffeId,
    },

    #[error("unreadable certificate: {reason}")]
    Certificate { reason: String },

    #[error("unusable private key: {source}")]
    PrivateKey {
        #[source]
        source: rustls::Error,
    },

    #[error("the trust bundle is empty or unusable: {reason}; it must hold at least one root CA certificate that signed the workload certificates")]
    TrustBundle { reason: String },

    #[error("new material is for {offered} but this sidecar is {own}; an identity cannot change without a restart")]
    IdentityChanged {
        // Rendered ids, which keep the error small.
        own: String,
        offered: String,
    },

    #[error("{path}: could not {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {problem}; {fix}")]
    UnsafeCaFiles {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("{path}: the CA there is for trust domain `{found}` but `{wanted}` was asked for; point the CA directory elsewhere or use trust domain `{found}`")]
    TrustDomainMismatch {
        path: PathBuf,
        found: String,
        wanted: String,
    },
}
