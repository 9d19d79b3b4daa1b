//! Secret values in component metadata: which fields hold them, a copy of a snapshot with them
//! masked for display (`/config_dump`), and a scrubber for messages that might quote them
//! (NACKs, log lines). References to secrets (`secretKeyRef`, `envRef`) are not secrets and
//! stay visible.

use std::borrow::Cow;

use crate::dapr::Component;
use crate::Snapshot;

/// What a secret value is shown as.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are masked in displays but not scrubbed out of free text, where
/// replacing every occurrence of a two-letter string would garble the message.
const MIN_SCRUBBED_LEN: usize = 4;

/// Name parts that mark a field (or a `name=value` pair inside a connection string) as secret.
const SECRET_NAME_PARTS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "credential",
    "apikey",
    "api_key",
    "accesskey",
    "access_key",
    "accountkey",
    "privatekey",
    "private_key",
    "clientkey",
    "client_key",
    "signingkey",
    "masterkey",
    "sharedaccesskey",
    "sasl",
];

/// Whether a metadata field (or connection-string option) named `name` holds a secret:
/// `redisPassword`, `saslPassword`, `accessToken`, `clientSecret`, `privateKey`, …
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    // `SharedAccessKeyName`, `clientSecretPath`, `tokenFile`: names and places, not secrets.
    let points_elsewhere = ["name", "id", "path", "file"]
        .iter()
        .any(|suffix| name.ends_with(suffix));
    name == "key" || (!points_elsewhere && SECRET_NAME_PARTS.iter().any(|part| name.contains(part)))
}

/// The value with the credentials it embeds masked — a URL's `user:password@` and any
/// `password=…`-style option (libpq `key=value` strings, query strings, `;`-separated
/// strings) — and the secrets it found. `None` when there was nothing to mask.
pub fn mask_embedded(value: &str) -> Option<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut masked = value.to_string();
    // scheme://user:password@host
    if let Some(scheme_end) = masked.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = masked[authority_start..]
            .find(['/', '?', '#'])
            .map_or(masked.len(), |i| authority_start + i);
        if let Some(at) = masked[authority_start..authority_end].rfind('@') {
            let userinfo = &masked[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                let password_start = authority_start + colon + 1;
                let password_end = authority_start + at;
                if password_end > password_start {
                    found.push(masked[password_start..password_end].to_string());
                    masked.replace_range(password_start..password_end, REDACTED);
                }
            }
        }
    }
    // name=value options whose name is secret, separated by whitespace, `;`, `&` or `?`.
    let mut search_from = 0;
    while let Some(eq) = masked[search_from..].find('=').map(|i| search_from + i) {
        let name_start = masked[..eq]
            .rfind(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '?'))
            .map_or(0, |i| i + 1);
        let name = masked[name_start..eq].trim();
        let value_start = eq + 1;
        let (value_end, quoted) = if masked[value_start..].starts_with('\'') {
            let close = masked[value_start + 1..]
                .find('\'')
                .map_or(masked.len(), |i| value_start + 1 + i + 1);
            (close, true)
        } else {
            let end = masked[value_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, ';' | '&'))
                .map_or(masked.len(), |i| value_start + i);
            (end, false)
        };
        if is_secret_name(name) && value_end > value_start {
            let secret = if quoted {
                masked[value_start + 1..value_end.saturating_sub(1).max(value_start + 1)]
                    .to_string()
            } else {
                masked[value_start..value_end].to_string()
            };
            if secret != REDACTED && !secret.is_empty() {
                found.push(secret);
                masked.replace_range(value_start..value_end, REDACTED);
                search_from = value_start + REDACTED.len();
                continue;
            }
        }
        search_from = value_end.max(eq + 1);
    }
    (!found.is_empty()).then_some((masked, found))
}

// === impl Component, Snapshot ===

impl Component {
    /// A copy with every inline secret masked: whole values of secret-named fields, and the
    /// credentials embedded in any other value.
    pub fn redacted(&self) -> Component {
        let mut copy = self.clone();
        for item in &mut copy.spec.metadata {
            let Some(value) = item.value.as_mut() else {
                continue;
            };
            if is_secret_name(&item.name) {
                *value = REDACTED.to_string();
            } else if let Some((masked, _)) = mask_embedded(value) {
                *value = masked;
            }
        }
        copy
    }

    /// The inline secret values this component holds.
    fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for item in &self.spec.metadata {
            let Some(value) = item.value.as_deref() else {
                continue;
            };
            if is_secret_name(&item.name) {
                out.push(value.to_string());
                // A connection string in a secret-named field: its parts too.
            }
            if let Some((_, found)) = mask_embedded(value) {
                out.extend(found);
            }
        }
        out
    }
}

impl Snapshot {
    /// A copy fit to show: every component's secrets masked.
    pub fn redacted(&self) -> Snapshot {
        let mut copy = self.clone();
        for component in copy.components.values_mut() {
            *component = component.redacted();
        }
        copy
    }
}

/// The secret values of a snapshot, to scrub out of messages that might quote them.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    pub fn of(snapshot: &Snapshot) -> Secrets {
        let mut secrets: Vec<String> = snapshot
            .components
            .values()
            .flat_map(Component::secrets)
            .filter(|s| s.len() >= MIN_SCRUBBED_LEN && s != REDACTED)
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Secrets(secrets)
    }

    /// `text` with every secret replaced by `[redacted]`.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.0.iter().any(|s| text.contains(s.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for secret in &self.0 {
            out = out.replace(secret.as_str(), REDACTED);
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_field_names() {
        for name in [
            "redisPassword",
            "saslPassword",
            "accessToken",
            "clientSecret",
            "privateKey",
            "apiKey",
            "key",
            "AccountKey",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "redisHost",
            "keyPrefix",
            "tableName",
            "consumerGroup",
            "brokers",
            "SharedAccessKeyName",
            "privateKeyPath",
            "clientId",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn credentials_inside_connection_strings_are_masked() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/orders?sslmode=disable",
                "postgres://app:[redacted]@db:5432/orders?sslmode=disable",
                vec!["s3cret"],
            ),
            (
                "host=db user=app password=s3cret dbname=orders",
                "host=db user=app password=[redacted] dbname=orders",
                vec!["s3cret"],
            ),
            (
                "host=db password='two words' port=5432",
                "host=db password=[redacted] port=5432",
                vec!["two words"],
            ),
            (
                "Endpoint=sb://x/;SharedAccessKeyName=root;SharedAccessKey=abc123=",
                "Endpoint=sb://x/;SharedAccessKeyName=root;SharedAccessKey=[redacted]",
                vec!["abc123="],
            ),
            (
                "redis://:hunter22@cache:6379/0",
                "redis://:[redacted]@cache:6379/0",
                vec!["hunter22"],
            ),
        ];
        for (value, masked, found) in cases {
            let (got, secrets) = mask_embedded(value).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(got, masked, "{value}");
            assert_eq!(secrets, found, "{value}");
        }
        assert_eq!(mask_embedded("localhost:6379"), None);
        assert_eq!(mask_embedded("host=db user=app dbname=orders"), None);
    }

    #[test]
    fn a_snapshot_is_redacted_for_display_and_its_secrets_scrubbed_from_messages() {
        let snapshot = crate::load_str(
            "c.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: cache}\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - {name: redisHost, value: 'localhost:6379'}\n  - {name: redisPassword, value: hunter2-inline}\n  - name: saslPassword\n    secretKeyRef: {name: kafka, key: password}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: db}\nspec:\n  type: state.postgresql\n  version: v1\n  metadata:\n  - {name: connectionString, value: 'host=db user=app password=pg-s3cret dbname=x'}\n",
        )
        .unwrap();
        let shown = serde_json::to_string(&snapshot.redacted()).unwrap();
        for secret in ["hunter2-inline", "pg-s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("\"secretKeyRef\":{\"name\":\"kafka\",\"key\":\"password\"}"),
            "{shown}"
        );
        assert!(shown.contains("localhost:6379"), "{shown}");
        assert!(shown.contains("password=[redacted] dbname=x"), "{shown}");
        let secrets = Secrets::of(&snapshot);
        assert_eq!(
            secrets.scrub("redisDB: \"hunter2-inline\" is not a whole number; pg-s3cret"),
            "redisDB: \"[redacted]\" is not a whole number; [redacted]"
        );
        assert!(matches!(secrets.scrub("nothing here"), Cow::Borrowed(_)));
    }
}
