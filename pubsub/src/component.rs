//! From a Dapr `Component` to a running broker: the metadata each type reads, Dapr's topic
//! scoping (`allowedTopics`, `publishingScopes`, `subscriptionScopes`), and the settings the
//! sidecar's delivery needs (how many messages in flight, how long a broker lets a message sit
//! unacked before another consumer takes it).

use std::sync::Arc;
use std::time::Duration;

use outrigger_config::dapr::{Component, ComponentType};
use outrigger_config::metadata::ComponentMetadata;

use crate::{kafka, memory, redis, PubSub};

/// A pub/sub component ready to serve.
pub struct OpenedPubSub {
    pub broker: Arc<dyn PubSub>,
    pub settings: PubSubSettings,
}

impl std::fmt::Debug for OpenedPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedPubSub")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PubSubSettings {
    /// Messages of one subscription delivered at once, at most (Dapr's Redis `concurrency`;
    /// the same metadata field for every broker here). Default 10.
    pub concurrency: usize,
    /// The consumer group a subscription joins: `consumerID` / `consumerGroup`, or the app id.
    pub consumer_group: String,
    /// Redis Streams: `processingTimeout` when the component gives it (and reclaiming is on):
    /// how long an unacked message may sit before another consumer of the group takes it
    /// over. A subscription's retries must fit inside it.
    pub processing_timeout: Option<Duration>,
    /// `allowedTopics`: when given, the only topics published or subscribed to.
    allowed_topics: Option<Vec<String>>,
    /// `publishingScopes` / `subscriptionScopes` for this app: when this app is listed, the
    /// only topics it may publish / subscribe to.
    publishing_scope: Option<Vec<String>>,
    subscription_scope: Option<Vec<String>>,
    /// The broker is this process (`pubsub.in-memory`).
    pub in_process: bool,
}

impl PubSubSettings {
    /// Whether this app may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        allowed(&self.allowed_topics, topic) && allowed(&self.publishing_scope, topic)
    }

    /// Whether this app may subscribe to `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        allowed(&self.allowed_topics, topic) && allowed(&self.subscription_scope, topic)
    }
}

fn allowed(list: &Option<Vec<String>>, topic: &str) -> bool {
    list.as_ref()
        .is_none_or(|topics| topics.iter().any(|t| t == topic))
}

/// `app1=topic1;app2=topic2,topic3`: the topics listed for `app_id`, if it is listed.
fn scope_for(text: &str, app_id: &str) -> Option<Vec<String>> {
    text.split(';').find_map(|entry| {
        let (app, topics) = entry.split_once('=')?;
        (app.trim() == app_id).then(|| {
            topics
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
    })
}

/// Opens the broker a component describes, for the app `app_id`. Redis and Kafka connect on
/// first use, so a broker that is down fails publishes and delays deliveries, not the
/// sidecar's start or a configuration swap.
pub fn open(component: &Component, app_id: &str) -> Result<OpenedPubSub, String> {
    let metadata = ComponentMetadata::resolve(component)?;
    let concurrency: usize = metadata.number("concurrency", 10)?;
    if concurrency == 0 {
        return Err(metadata.invalid("concurrency", "must be at least 1"));
    }
    let list = |name: &str| {
        metadata
            .get(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
    };
    let mut settings = PubSubSettings {
        concurrency,
        consumer_group: app_id.to_string(),
        processing_timeout: None,
        allowed_topics: list("allowedTopics"),
        publishing_scope: metadata
            .get("publishingScopes")
            .and_then(|s| scope_for(s, app_id)),
        subscription_scope: metadata
            .get("subscriptionScopes")
            .and_then(|s| scope_for(s, app_id)),
        in_process: false,
    };
    let broker: Arc<dyn PubSub> = match component.spec.component_type {
        ComponentType::PubsubInMemory => {
            settings.in_process = true;
            Arc::new(memory::MemoryBroker::default())
        }
        ComponentType::PubsubRedis => {
            let redis = redis::Settings::from_metadata(&metadata)?;
            if let Some(group) = &redis.consumer_id {
                settings.consumer_group = group.clone();
            }
            settings.processing_timeout = redis
                .processing_timeout
                .filter(|_| !redis.redeliver_interval.is_zero());
            Arc::new(redis::RedisBroker::new(redis))
        }
        ComponentType::PubsubKafka => {
            let kafka = kafka::Settings::from_metadata(&metadata)?;
            if let Some(group) = &kafka.consumer_group {
                settings.consumer_group = group.clone();
            }
            Arc::new(kafka::KafkaBroker::new(kafka).map_err(|e| {
                format!("component {:?}: {e}", component.name())
            })?)
        }
        other => {
            return Err(format!(
                "component {:?}: {other} is not served yet; pub/sub works with pubsub.in-memory, pubsub.redis and pubsub.kafka",
                component.name()
            ))
        }
    };
    Ok(OpenedPubSub { broker, settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_limit_topics_for_the_apps_they_list() {
        assert_eq!(
            scope_for("a=orders,refunds;b=", "a"),
            Some(vec!["orders".to_string(), "refunds".to_string()])
        );
        assert_eq!(scope_for("a=orders;b=", "b"), Some(vec![]));
        assert_eq!(scope_for("a=orders", "c"), None);
        let settings = PubSubSettings {
            concurrency: 1,
            consumer_group: "a".into(),
            processing_timeout: None,
            allowed_topics: Some(vec!["orders".into(), "refunds".into()]),
            publishing_scope: Some(vec!["orders".into()]),
            subscription_scope: None,
            in_process: false,
        };
        assert!(settings.may_publish("orders"));
        assert!(!settings.may_publish("refunds"));
        assert!(settings.may_subscribe("refunds"));
        assert!(!settings.may_subscribe("audit"));
    }
}
