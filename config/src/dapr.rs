//! Dapr's YAML resources, accepted unchanged: `Component`, `Resiliency`, `Subscription` and
//! `Configuration`. Field names follow Dapr's (camelCase), so a resource serialises back to
//! JSON in the shape a Dapr user recognises.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `metadata:` of every resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

// === Component ===

/// A Dapr `Component` (`dapr.io/v1alpha1`): a state store, pub/sub broker or secret store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    pub metadata: ObjectMeta,
    pub spec: ComponentSpec,
    /// App ids allowed to use the component; empty means every app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ComponentAuth>,
}

impl Component {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The component's metadata value by name, when it is given inline.
    pub fn metadata_value(&self, name: &str) -> Option<&str> {
        self.spec
            .metadata
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.value.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    #[serde(rename = "type")]
    pub component_type: ComponentType,
    #[serde(default = "default_component_version")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<MetadataItem>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_errors: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::option"
    )]
    pub init_timeout: Option<Duration>,
}

fn default_component_version() -> String {
    "v1".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentAuth {
    pub secret_store: String,
}

/// One `spec.metadata` entry: an inline value, a secret reference or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataItem {
    pub name: String,
    /// Inline values are kept as text whatever their YAML type (`6379`, `true`), as Dapr does.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn scalar_as_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(Option::<Scalar>::deserialize(d)?.map(|s| match s {
        Scalar::Text(t) => t,
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => f.to_string(),
        Scalar::Bool(b) => b.to_string(),
    }))
}

/// The component types Outrigger knows. An unknown `spec.type` is refused at load time with
/// this list in the message, rather than accepted and silently ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentType {
    StateInMemory,
    StateRedis,
    StatePostgresql,
    PubsubInMemory,
    PubsubRedis,
    PubsubKafka,
    PubsubJetstream,
    PubsubRabbitmq,
    PubsubMqtt3,
    SecretStoreLocalFile,
    SecretStoreLocalEnv,
}

impl ComponentType {
    pub const ALL: [ComponentType; 11] = [
        ComponentType::StateInMemory,
        ComponentType::StateRedis,
        ComponentType::StatePostgresql,
        ComponentType::PubsubInMemory,
        ComponentType::PubsubRedis,
        ComponentType::PubsubKafka,
        ComponentType::PubsubJetstream,
        ComponentType::PubsubRabbitmq,
        ComponentType::PubsubMqtt3,
        ComponentType::SecretStoreLocalFile,
        ComponentType::SecretStoreLocalEnv,
    ];

    /// The name used in `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentType::StateInMemory => "state.in-memory",
            ComponentType::StateRedis => "state.redis",
            ComponentType::StatePostgresql => "state.postgresql",
            ComponentType::PubsubInMemory => "pubsub.in-memory",
            ComponentType::PubsubRedis => "pubsub.redis",
            ComponentType::PubsubKafka => "pubsub.kafka",
            ComponentType::PubsubJetstream => "pubsub.jetstream",
            ComponentType::PubsubRabbitmq => "pubsub.rabbitmq",
            ComponentType::PubsubMqtt3 => "pubsub.mqtt3",
            ComponentType::SecretStoreLocalFile => "secretstores.local.file",
            ComponentType::SecretStoreLocalEnv => "secretstores.local.env",
        }
    }

    /// The building block: `state`, `pubsub` or `secretstores`.
    pub fn block(self) -> &'static str {
        self.as_str().split('.').next().unwrap_or_default()
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        ComponentType::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| {
                let supported: Vec<&str> = ComponentType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown component type {text:?}; supported types are: {}",
                    supported.join(", ")
                )
            })
    }
}

impl fmt::Display for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ComponentType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ComponentType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ComponentType::parse(&text).map_err(serde::de::Error::custom)
    }
}

// === Resiliency ===

/// A Dapr `Resiliency` (`dapr.io/v1alpha1`): named policies and the targets they apply to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resiliency {
    pub metadata: ObjectMeta,
    pub spec: ResiliencySpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResiliencySpec {
    #[serde(default)]
    pub policies: ResiliencyPolicies,
    #[serde(default)]
    pub targets: ResiliencyTargets,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResiliencyPolicies {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timeouts: BTreeMap<String, TimeoutPolicy>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retries: BTreeMap<String, RetryPolicy>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub circuit_breakers: BTreeMap<String, CircuitBreakerPolicy>,
}

/// A named timeout: `general: 5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimeoutPolicy(#[serde(with = "crate::duration")] pub Duration);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryBackoff {
    Constant,
    Exponential,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub policy: RetryBackoff,
    /// Constant backoff interval (Dapr's default: 5s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::option"
    )]
    pub duration: Option<Duration>,
    /// Exponential backoff cap (Dapr's default: 60s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::option"
    )]
    pub max_interval: Option<Duration>,
    /// -1 retries forever (Dapr's default).
    #[serde(default = "default_max_retries")]
    pub max_retries: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<RetryMatching>,
}

fn default_max_retries() -> i64 {
    -1
}

/// Which failures a retry policy retries: `"500,502-504"` style lists, kept as Dapr writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryMatching {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "httpStatusCodes"
    )]
    pub http_status_codes: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "gRPCStatusCodes"
    )]
    pub grpc_status_codes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerPolicy {
    #[serde(default = "default_breaker_max_requests")]
    pub max_requests: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::option"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::option"
    )]
    pub timeout: Option<Duration>,
    /// A trip expression such as `consecutiveFailures >= 5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<String>,
}

fn default_breaker_max_requests() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResiliencyTargets {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, PolicyRefs>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentPolicyRefs>,
}

/// The policy names applied to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRefs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentPolicyRefs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<PolicyRefs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<PolicyRefs>,
}

// === Subscription ===

/// A declarative Dapr `Subscription`, in either API version. `v1alpha1`'s single
/// `spec.route` is normalised into `routes.default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub metadata: ObjectMeta,
    pub spec: SubscriptionSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    pub pubsubname: String,
    pub topic: String,
    #[serde(default)]
    pub routes: SubscriptionRoutes,
    /// Only in `v1alpha1`; the loader moves it into `routes.default`.
    #[serde(default, skip_serializing)]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "string_map"
    )]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_subscribe: Option<BulkSubscribe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRoutes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<SubscriptionRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRule {
    /// A CEL expression over the CloudEvent, e.g. `event.type == "widget"`.
    #[serde(rename = "match")]
    pub match_expr: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkSubscribe {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_await_duration_ms: Option<u64>,
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "scalar_as_string")] Option<String>);
    let raw = BTreeMap::<String, Wrapped>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.0.unwrap_or_default()))
        .collect())
}

// === Configuration ===

/// A Dapr `Configuration`. Outrigger reads the parts it acts on (features, tracing, access
/// control, mTLS); the rest is kept as given so that `/config_dump` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ConfigurationSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<Feature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<serde_json::Value>,
    /// Every other field, unchanged.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub enabled: bool,
}

/// `"429,500-599"` (a `retries` policy's `matching.httpStatusCodes`) into inclusive ranges;
/// each code between 100 and 599.
pub fn parse_status_codes(text: &str) -> Result<Vec<(u16, u16)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            let parse = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
            };
            match (parse(low), parse(high)) {
                (Some(low), Some(high)) if low <= high => Ok((low, high)),
                _ => Err(format!(
                    "{part:?} is not a status code (100-599) or a range such as 500-599"
                )),
            }
        })
        .collect()
}
