//! From a Dapr `Component` to a running store: the metadata each type reads, with errors that
//! name the component and the field, and the key prefix every store shares.

use std::sync::Arc;

use outrigger_config::dapr::{Component, ComponentType};

pub(crate) use outrigger_config::metadata::ComponentMetadata as Metadata;

use crate::{memory, postgres, redis, StateStore};

/// What every store here supports, as `/v1.0/metadata` lists it.
pub const CAPABILITIES: &[&str] = &["ETAG", "TRANSACTIONAL", "TTL"];

/// A state component ready to serve.
pub struct OpenedStore {
    pub store: Arc<dyn StateStore>,
    pub key_prefix: KeyPrefix,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// How keys are namespaced in the backend: Dapr's `keyPrefix` metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPrefix {
    /// `<prefix>||<key>`: the app id (the default), the component name, or a fixed string.
    Fixed(String),
    /// The key as given (`keyPrefix: none`), for data shared with non-Dapr clients.
    None,
}

impl KeyPrefix {
    /// The key as the backend stores it.
    pub fn storage_key(&self, key: &str) -> String {
        match self {
            KeyPrefix::Fixed(prefix) => {
                let mut out = String::with_capacity(prefix.len() + 2 + key.len());
                out.push_str(prefix);
                out.push_str("||");
                out.push_str(key);
                out
            }
            KeyPrefix::None => key.to_string(),
        }
    }
}

/// Opens the store a component describes, for the app `app_id`. Nothing is connected yet:
/// the Redis and PostgreSQL stores connect on first use (and reconnect after a failure), so a
/// backend that is down fails requests, not the sidecar's start or a configuration swap.
pub fn open(component: &Component, app_id: &str) -> Result<OpenedStore, String> {
    let metadata = Metadata::resolve(component)?;
    let key_prefix = match metadata.get("keyPrefix").unwrap_or("appid") {
        "appid" | "" => KeyPrefix::Fixed(app_id.to_string()),
        "name" => KeyPrefix::Fixed(component.name().to_string()),
        "none" => KeyPrefix::None,
        custom if custom.contains("||") => {
            return Err(metadata.invalid("keyPrefix", "must not contain \"||\""))
        }
        custom => KeyPrefix::Fixed(custom.to_string()),
    };
    let store: Arc<dyn StateStore> = match component.spec.component_type {
        ComponentType::StateInMemory => Arc::new(memory::MemoryStore::new()),
        ComponentType::StateRedis => Arc::new(redis::RedisStore::new(
            redis::Settings::from_metadata(&metadata)?,
        )),
        ComponentType::StatePostgresql => Arc::new(postgres::PostgresStore::new(
            postgres::Settings::from_metadata(&metadata)?,
        )),
        other => return Err(format!("{other} is not a state store")),
    };
    Ok(OpenedStore { store, key_prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component named `store` from `"<type> name=value …"`.
    fn component(spec: &str) -> Component {
        use outrigger_config::dapr::{ComponentSpec, MetadataItem, ObjectMeta};
        let mut parts = spec.split_whitespace();
        let kind = ComponentType::parse(parts.next().unwrap()).unwrap();
        let metadata = parts
            .map(|kv| {
                let (name, value) = kv.split_once('=').unwrap();
                MetadataItem {
                    name: name.into(),
                    value: Some(value.into()),
                    secret_key_ref: None,
                    env_ref: None,
                }
            })
            .collect();
        Component {
            metadata: ObjectMeta {
                name: "store".into(),
                ..Default::default()
            },
            spec: ComponentSpec {
                component_type: kind,
                version: "v1".into(),
                metadata,
                ignore_errors: false,
                init_timeout: None,
            },
            scopes: vec![],
            auth: None,
        }
    }

    #[test]
    fn key_prefix_defaults_to_the_app_id_and_follows_metadata() {
        let prefix = |spec: &str| open(&component(spec), "app").unwrap().key_prefix;
        assert_eq!(prefix("state.in-memory").storage_key("k"), "app||k");
        assert_eq!(
            prefix("state.in-memory keyPrefix=name").storage_key("k"),
            "store||k"
        );
        assert_eq!(
            prefix("state.in-memory keyPrefix=none").storage_key("k"),
            "k"
        );
        assert_eq!(
            prefix("state.in-memory keyPrefix=shared").storage_key("k"),
            "shared||k"
        );
        assert!(open(&component("state.in-memory keyPrefix=a||b"), "app").is_err());
    }

    #[test]
    fn redis_metadata_errors_name_the_component_and_field() {
        let err = open(&component("state.redis"), "app").unwrap_err();
        assert_eq!(
            err,
            "component \"store\": spec.metadata redisHost: is required, e.g. localhost:6379"
        );
        let err = open(&component("state.redis redisHost=h:1 redisDB=x"), "app").unwrap_err();
        assert_eq!(
            err,
            "component \"store\": spec.metadata redisDB: \"x\" is not a whole number"
        );
        let err = open(&component("state.redis redisHost=nocolon"), "app").unwrap_err();
        assert!(
            err.contains("redisHost: \"nocolon\" is not host:port"),
            "{err}"
        );
    }

    #[test]
    fn postgres_metadata_errors_name_the_component_and_field() {
        let err = open(&component("state.postgresql"), "app").unwrap_err();
        assert!(
            err.starts_with("component \"store\": spec.metadata connectionString: is required"),
            "{err}"
        );
        let err = open(
            &component("state.postgresql connectionString=host=localhost tableName=bad;drop"),
            "app",
        )
        .unwrap_err();
        assert!(err.contains("tableName: \"bad;drop\""), "{err}");
    }

    #[test]
    fn a_pubsub_component_is_not_a_state_store() {
        let err = open(&component("pubsub.in-memory"), "app").unwrap_err();
        assert_eq!(err, "pubsub.in-memory is not a state store");
    }
}
