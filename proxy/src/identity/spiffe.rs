//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/<app-id>`.
//!
//! Parsing is strict because an id is compared byte for byte during every handshake: two
//! spellings of one workload (a trailing slash, an upper-case trust domain) must not exist.

use std::fmt;

use super::IdentityError;

/// The trust domain a sidecar joins when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The namespace an app lives in when none is configured.
pub const DEFAULT_NAMESPACE: &str = "default";

const SCHEME: &str = "spiffe://";
/// The SPIFFE specification's limit on a whole id.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE specification's limit on a trust domain.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// One workload's identity: an app id in a namespace of a trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    app_id: String,
}

impl SpiffeId {
    /// Builds an id from its parts, checking each as [`SpiffeId::parse`] would.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        app_id: impl Into<String>,
    ) -> Result<SpiffeId, IdentityError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            app_id: app_id.into(),
        };
        let invalid = |reason: String| IdentityError::InvalidSpiffeId {
            id: id.to_string(),
            reason,
        };
        check_trust_domain(&id.trust_domain).map_err(invalid)?;
        check_segment("namespace", &id.namespace).map_err(invalid)?;
        check_segment("app id", &id.app_id).map_err(invalid)?;
        if id.to_string().len() > MAX_ID_LEN {
            return Err(invalid(format!("longer than {MAX_ID_LEN} bytes")));
        }
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/<app-id>`, refusing every other form.
    pub fn parse(uri: &str) -> Result<SpiffeId, IdentityError> {
        let invalid = |reason: &str| IdentityError::InvalidSpiffeId {
            id: uri.to_owned(),
            reason: reason.to_owned(),
        };
        if uri.len() > MAX_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("the scheme must be `spiffe://` (lower case)"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("the path `/ns/<namespace>/<app-id>` is missing"))?;
        let mut segments = path.split('/');
        let (Some("ns"), Some(namespace), Some(app_id), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(invalid(
                "the path must be exactly `/ns/<namespace>/<app-id>`",
            ));
        };
        SpiffeId::new(trust_domain, namespace, app_id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The id as it appears in a certificate's URI SAN.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::parse(s)
    }
}

/// A trust domain is lower case only (the SPIFFE spec), so that comparison is exact.
pub(super) fn check_trust_domain(trust_domain: &str) -> Result<(), String> {
    if trust_domain.is_empty() {
        return Err("the trust domain is empty".to_owned());
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    if let Some(bad) = trust_domain
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "the trust domain `{trust_domain}` contains {bad:?}; use lower-case letters, digits, `.`, `-` and `_`"
        ));
    }
    Ok(())
}

/// Namespaces and app ids take the characters Dapr allows in app ids.
fn check_segment(what: &str, segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if segment == "." || segment == ".." {
        return Err(format!("the {what} must not be `.` or `..`"));
    }
    if let Some(bad) = segment
        .chars()
        .find(|c| !matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "the {what} `{segment}` contains {bad:?}; use letters, digits, `.`, `-` and `_`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_parts_of_a_well_formed_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/order-processor").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.app_id(), "order-processor");
    }

    #[test]
    fn display_round_trips_through_parse() {
        let uri = "spiffe://example.org_1/ns/team-a/App.v2_x";
        let id = SpiffeId::parse(uri).unwrap();
        assert_eq!(id.to_uri(), uri);
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn new_builds_the_same_id_as_parse() {
        let built = SpiffeId::new(DEFAULT_TRUST_DOMAIN, DEFAULT_NAMESPACE, "checkout").unwrap();
        assert_eq!(
            built,
            SpiffeId::parse("spiffe://cluster.local/ns/default/checkout").unwrap()
        );
    }

    #[test]
    fn refuses_malformed_ids_with_the_reason() {
        let cases = [
            ("https://cluster.local/ns/default/a", "scheme"),
            ("SPIFFE://cluster.local/ns/default/a", "scheme"),
            ("spiffe://cluster.local", "path"),
            ("spiffe://Cluster.local/ns/default/a", "trust domain"),
            ("spiffe:///ns/default/a", "trust domain is empty"),
            ("spiffe://cluster.local:8080/ns/default/a", "trust domain"),
            ("spiffe://user@cluster.local/ns/default/a", "trust domain"),
            ("spiffe://cluster.local/ns/default", "exactly"),
            ("spiffe://cluster.local/ns/default/a/", "exactly"),
            ("spiffe://cluster.local/ns/default/a/b", "exactly"),
            ("spiffe://cluster.local/namespace/default/a", "exactly"),
            ("spiffe://cluster.local/ns//a", "namespace is empty"),
            ("spiffe://cluster.local/ns/default/", "app id is empty"),
            ("spiffe://cluster.local/ns/default/..", "`..`"),
            ("spiffe://cluster.local/ns/default/a%20b", "app id"),
            ("spiffe://cluster.local/ns/default/a?x=1", "app id"),
            ("spiffe://cluster.local/ns/default/a#frag", "app id"),
            ("spiffe://cluster.local/ns/dé/a", "namespace"),
        ];
        for (uri, reason) in cases {
            let err = SpiffeId::parse(uri).expect_err(uri).to_string();
            assert!(err.contains(uri), "{uri}: {err}");
            assert!(err.contains(reason), "{uri}: expected {reason:?} in {err}");
        }
    }

    #[test]
    fn refuses_ids_longer_than_2048_bytes() {
        let long = format!("spiffe://cluster.local/ns/default/{}", "a".repeat(2048));
        let err = SpiffeId::parse(&long).unwrap_err().to_string();
        assert!(err.contains("longer than 2048 bytes"), "{err}");
        assert!(SpiffeId::new("cluster.local", "default", "a".repeat(2048)).is_err());
    }
}
