//! This sidecar's identity on the mesh: its workload certificate, issued at start by the local
//! certificate authority and renewed at about half its life without a restart, and what it
//! expects the sidecars it calls to prove.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::ClientConfig;

use crate::identity::{
    Alpn, Authority, IdentityError, LocalAuthority, Material, MeshTls, SpiffeId, DEFAULT_NAMESPACE,
};
use crate::options::MtlsOptions;

/// How long a failed renewal waits before it tries again (the certificate in use is still
/// valid for about half its life).
const RENEW_RETRY: Duration = Duration::from_secs(10);
/// The renewal wait is slept in steps of at most this, the wall clock read again after each:
/// tokio's clock does not count a suspended laptop, nor see the wall clock jump.
const RENEW_CHECK: Duration = Duration::from_secs(30);
/// Renewals never come closer together than this, whatever the clock says.
const RENEW_MIN_GAP: Duration = Duration::from_millis(500);
/// Peers whose expected identities are kept; past this the map starts over.
const MAX_PEERS: usize = 1024;

pub(crate) struct MeshIdentity {
    pub(crate) tls: Arc<MeshTls>,
    authority: Authority,
    ttl: Duration,
    /// By namespace, then app id: looked up with borrowed strings, so a call allocates nothing.
    peers: RwLock<HashMap<String, HashMap<String, Arc<PeerTls>>>>,
}

/// What a connection to one app's sidecars must prove, and the client configurations that
/// check it (one per protocol offered in ALPN).
pub(crate) struct PeerTls {
    pub(crate) expected: SpiffeId,
    pub(crate) http1: Arc<ClientConfig>,
    pub(crate) h2: Arc<ClientConfig>,
}

impl MeshIdentity {
    /// Opens (or creates) the local certificate authority and issues this sidecar's first
    /// certificate.
    pub(crate) fn start(
        options: &MtlsOptions,
        app_id: &str,
        namespace: Option<&str>,
    ) -> Result<MeshIdentity, IdentityError> {
        let own = SpiffeId::new(
            options.trust_domain.as_str(),
            namespace.unwrap_or(DEFAULT_NAMESPACE),
            app_id,
        )?;
        let authority = LocalAuthority::open_or_create(&options.ca_dir, &options.trust_domain)?;
        let material = Material::issue_local(&authority, &own, options.cert_ttl)?;
        tracing::info!(
            identity = %own,
            ca_dir = %options.ca_dir.display(),
            "mTLS on: workload certificate issued by the local certificate authority"
        );
        Ok(MeshIdentity {
            tls: MeshTls::new(material),
            authority,
            ttl: options.cert_ttl,
            peers: RwLock::default(),
        })
    }

    /// What the sidecars of `app_id` (in `namespace`, else the default one) must prove.
    pub(crate) fn peer(
        &self,
        app_id: &str,
        namespace: Option<&str>,
    ) -> Result<Arc<PeerTls>, IdentityError> {
        let namespace = namespace.unwrap_or(DEFAULT_NAMESPACE);
        if let Some(peer) = self.peers.read().get(namespace).and_then(|n| n.get(app_id)) {
            return Ok(peer.clone());
        }
        let expected = SpiffeId::new(self.tls.own_id().trust_domain(), namespace, app_id)?;
        let peer = Arc::new(PeerTls {
            http1: self.tls.client_config(&expected, Alpn::Http1),
            h2: self.tls.client_config(&expected, Alpn::H2),
            expected,
        });
        let mut peers = self.peers.write();
        if peers.values().map(HashMap::len).sum::<usize>() >= MAX_PEERS {
            peers.clear();
        }
        peers
            .entry(namespace.to_string())
            .or_default()
            .insert(app_id.to_string(), peer.clone());
        Ok(peer)
    }

    /// Renews the workload certificate at about half its life, for as long as the sidecar
    /// runs. New handshakes use the new certificate; open connections finish on the old one.
    pub(crate) async fn renew_forever(self: Arc<Self>) {
        loop {
            let material = self.tls.current();
            let at = material.renew_at();
            tokio::time::sleep(RENEW_MIN_GAP).await;
            loop {
                let now = SystemTime::now();
                // Renew once due, and at once if the clock went back behind the
                // certificate's start (it would look not yet valid to peers).
                if now >= at || now < material.not_before() {
                    break;
                }
                let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait.min(RENEW_CHECK)).await;
            }
            let renewed = Material::issue_local(&self.authority, self.tls.own_id(), self.ttl)
                .and_then(|material| self.tls.rotate(material));
            match renewed {
                Ok(()) => {
                    tracing::info!(identity = %self.tls.own_id(), "workload certificate renewed")
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?RENEW_RETRY, "workload certificate renewal failed");
                    tokio::time::sleep(RENEW_RETRY).await;
                }
            }
        }
    }
}
