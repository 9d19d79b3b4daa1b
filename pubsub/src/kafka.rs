//! `pubsub.kafka`: rdkafka (librdkafka built from source: Debian's is too old), read the way
//! Dapr's component is configured, with offsets stored only after the verdict.
//!
//! - publish: one record, keyed by `partitionKey` when given, answered once the broker acked;
//! - consume: a consumer group (`consumerGroup`, else `consumerID`, else the app id), auto
//!   commit off; per partition, the committed offset only ever moves past a contiguous run of
//!   settled messages, so a later success never skips an earlier failure;
//! - park: the partition is paused at its committed offset — the others go on — and the
//!   message comes back after a restart;
//! - rebalance: on revoke, what is settled is committed; what is still in flight is released
//!   (its offset is not committed, so the next owner delivers it again).
//!
//! `partitionAssignment: manual` (an Outrigger extension) assigns every partition of the
//! topic to this consumer instead of joining the group's rebalancing, committing offsets to
//! the group all the same: for brokers whose group coordination is broken (tansu 0.6.0
//! answers SyncGroup with an empty assignment) and for single-instance apps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outrigger_config::metadata::ComponentMetadata;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Semaphore;

use crate::{ConsumeOptions, Consumer, Message, OutgoingMessage, PubSub, PubSubError, Token};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    brokers: String,
    pub(crate) consumer_group: Option<String>,
    client_id: String,
    /// `earliest` or `latest` (Dapr's `oldest` / `newest`).
    initial_offset: &'static str,
    max_message_bytes: Option<u32>,
    manual_assignment: bool,
    publish_timeout: Duration,
    /// `librdkafka.<property>` metadata: set on the producer and consumers as given (an
    /// Outrigger extension, for tuning Dapr's metadata does not cover).
    passthrough: Vec<(String, String)>,
}

/// librdkafka properties Outrigger sets itself; `librdkafka.*` may not override them.
const OWNED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "max.poll.interval.ms",
    "acks",
];

impl Settings {
    pub(crate) fn from_metadata(metadata: &ComponentMetadata) -> Result<Settings, String> {
        let brokers = metadata.required("brokers", "localhost:9092")?.to_string();
        match metadata.required("authType", "none")? {
            "none" => {}
            other => {
                return Err(metadata.invalid(
                    "authType",
                    &format!("{other:?} is not supported yet; only \"none\" is (reach Kafka over loopback or a private network)"),
                ))
            }
        }
        let initial_offset = match metadata.get("initialOffset").map(str::trim) {
            None | Some("") | Some("newest") => "latest",
            Some("oldest") => "earliest",
            Some(other) => {
                return Err(metadata.invalid(
                    "initialOffset",
                    &format!("{other:?}; expected \"newest\" or \"oldest\""),
                ))
            }
        };
        let max: u32 = metadata.number("maxMessageBytes", 0)?;
        let non_empty = |name| {
            metadata
                .get(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let manual_assignment = match metadata.get("partitionAssignment").map(str::trim) {
            None | Some("") | Some("group") => false,
            Some("manual") => true,
            Some(other) => {
                return Err(metadata.invalid(
                    "partitionAssignment",
                    &format!("{other:?}; expected \"group\" or \"manual\""),
                ))
            }
        };
        let mut passthrough = Vec::new();
        for name in metadata.names() {
            let Some(property) = name.strip_prefix("librdkafka.") else {
                continue;
            };
            if OWNED_PROPERTIES.contains(&property) {
                return Err(metadata.invalid(
                    name,
                    "Outrigger sets this property itself (from the Dapr metadata) and keeps it",
                ));
            }
            passthrough.push((
                property.to_string(),
                metadata.get(name).unwrap_or_default().to_string(),
            ));
        }
        Ok(Settings {
            passthrough,
            brokers,
            consumer_group: non_empty("consumerGroup").or_else(|| non_empty("consumerID")),
            client_id: non_empty("clientID").unwrap_or_else(|| "outrigger".to_string()),
            initial_offset,
            max_message_bytes: (max > 0).then_some(max),
            manual_assignment,
            publish_timeout: metadata.duration("publishTimeout", Duration::from_secs(10))?,
        })
    }
}

pub(crate) struct KafkaBroker {
    settings: Settings,
    producer: FutureProducer,
}

impl KafkaBroker {
    pub(crate) fn new(settings: Settings) -> Result<KafkaBroker, String> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("client.id", &settings.client_id)
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.publish_timeout.as_millis().to_string(),
            );
        if let Some(max) = settings.max_message_bytes {
            config.set("message.max.bytes", max.to_string());
        }
        for (property, value) in &settings.passthrough {
            config.set(property, value);
        }
        let producer = config
            .create()
            .map_err(|e| format!("kafka producer for {}: {e}", settings.brokers))?;
        Ok(KafkaBroker { settings, producer })
    }

    fn fail(&self, e: impl std::fmt::Display) -> PubSubError {
        PubSubError::Broker(format!("kafka at {}: {e}", self.settings.brokers))
    }
}

#[async_trait]
impl PubSub for KafkaBroker {
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PubSubError> {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &message.metadata {
            if name != "partitionKey" {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
        }
        let mut record = FutureRecord::<str, [u8]>::to(&message.topic)
            .payload(message.data.as_ref())
            .headers(headers);
        if let Some(key) = message.metadata.get("partitionKey") {
            record = record.key(key.as_str());
        }
        self.producer
            .send(record, self.settings.publish_timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| self.fail(e))
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: ConsumeOptions,
    ) -> Result<Arc<dyn Consumer>, PubSubError> {
        let group = self
            .settings
            .consumer_group
            .clone()
            .unwrap_or_else(|| options.group.clone());
        let tracker = Arc::new(Tracker::default());
        let context = Context {
            tracker: tracker.clone(),
            topic: topic.to_string(),
        };
        let config = consumer_config(&self.settings, &group, options.hold_limit);
        let consumer: StreamConsumer<Context> = config
            .create_with_context(context)
            .map_err(|e| self.fail(e))?;
        let consumer = Arc::new(consumer);
        if self.settings.manual_assignment {
            let partitions = partitions_of(&consumer, topic)
                .await
                .map_err(|e| self.fail(e))?;
            let committed = committed_offsets(&consumer, topic, &partitions)
                .await
                .map_err(|e| self.fail(e))?;
            let mut assignment = TopicPartitionList::new();
            for partition in &partitions {
                let offset = match committed.get(partition) {
                    Some(offset) if *offset >= 0 => Offset::Offset(*offset),
                    _ if self.settings.initial_offset == "earliest" => Offset::Beginning,
                    _ => Offset::End,
                };
                assignment
                    .add_partition_offset(topic, *partition, offset)
                    .map_err(|e| self.fail(e))?;
            }
            tracker.assign(&partitions);
            consumer.assign(&assignment).map_err(|e| self.fail(e))?;
        } else {
            consumer.subscribe(&[topic]).map_err(|e| self.fail(e))?;
        }
        Ok(Arc::new(KafkaConsumer {
            consumer,
            topic: topic.to_string(),
            tracker,
            slots: Semaphore::new(options.max_in_flight.max(1)),
            brokers: self.settings.brokers.clone(),
        }))
    }
}

/// `max.poll.interval.ms` for a subscription holding a message up to `hold` (librdkafka's
/// range is 1 ms to 24 h; its default is 5 min).
/// The consumer's properties: Outrigger's own, then the `librdkafka.*` passthrough (which
/// may not name an owned property — refused when the component is read).
fn consumer_config(settings: &Settings, group: &str, hold_limit: Option<Duration>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", group)
        .set("client.id", &settings.client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", settings.initial_offset)
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        // The consumer is not polled while its in-flight limit is reached, and a message
        // may be held for its whole retry budget: the group must not take that for death.
        .set("max.poll.interval.ms", max_poll_interval(hold_limit));
    for (property, value) in &settings.passthrough {
        config.set(property, value);
    }
    config
}

fn max_poll_interval(hold: Option<Duration>) -> String {
    let day = Duration::from_secs(86_400);
    let interval = hold.map_or(day, |hold| {
        hold.saturating_add(Duration::from_secs(60))
            .clamp(Duration::from_secs(300), day)
    });
    interval.as_millis().to_string()
}

/// The partitions of `topic` (the metadata call blocks, so it runs off the runtime).
async fn partitions_of(
    consumer: &Arc<StreamConsumer<Context>>,
    topic: &str,
) -> Result<Vec<i32>, String> {
    let consumer = consumer.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!(
                "topic {topic:?} has no partitions (create it first)"
            ));
        }
        Ok(partitions)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn committed_offsets(
    consumer: &Arc<StreamConsumer<Context>>,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, String> {
    let consumer = consumer.clone();
    let mut wanted = TopicPartitionList::new();
    for partition in partitions {
        wanted.add_partition(topic, *partition);
    }
    tokio::task::spawn_blocking(move || {
        let committed = consumer
            .committed_offsets(wanted, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Per partition, the offsets handed out and whether each is settled; the committed offset
/// follows the contiguous settled prefix.
#[derive(Default)]
struct Tracker {
    partitions: Mutex<HashMap<i32, PartitionTrack>>,
    assigned: Mutex<HashSet<i32>>,
    /// Each assigned partition's current assignment, numbered from `next_generation`.
    generations: Mutex<HashMap<i32, u64>>,
    next_generation: std::sync::atomic::AtomicU64,
    parked: Mutex<Vec<Token>>,
}

#[derive(Default)]
struct PartitionTrack {
    /// Offsets handed out, in order, with whether each is settled.
    outstanding: BTreeMap<i64, bool>,
    paused: bool,
}

impl Tracker {
    fn assign(&self, partitions: &[i32]) {
        self.assigned.lock().extend(partitions.iter().copied());
        let mut generations = self.generations.lock();
        for partition in partitions {
            let generation = self
                .next_generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            generations.insert(*partition, generation);
        }
    }

    fn generation(&self, partition: i32) -> u64 {
        self.generations
            .lock()
            .get(&partition)
            .copied()
            .unwrap_or_default()
    }

    fn revoke(&self, partitions: &[i32]) {
        let mut assigned = self.assigned.lock();
        let mut tracks = self.partitions.lock();
        for partition in partitions {
            assigned.remove(partition);
            // What was in flight there is released: its offset is never committed by us.
            tracks.remove(partition);
        }
    }

    /// Records `offset` as out; the partition's current generation, for its token.
    fn handed_out(&self, partition: i32, offset: i64) -> u64 {
        self.partitions
            .lock()
            .entry(partition)
            .or_default()
            .outstanding
            .insert(offset, false);
        self.generation(partition)
    }

    /// Marks `offset` settled; the offset to commit, if the settled prefix grew.
    fn settle(&self, partition: i32, offset: i64, generation: u64) -> Option<i64> {
        if !self.assigned.lock().contains(&partition) {
            return None; // revoked meanwhile: the new owner decides
        }
        if self.generation(partition) != generation {
            // Handed out before the partition was revoked and assigned back: the same offset
            // may be out again under the new assignment, and only that one may settle it.
            return None;
        }
        let mut tracks = self.partitions.lock();
        let track = tracks.get_mut(&partition)?;
        *track.outstanding.get_mut(&offset)? = true;
        let mut next = None;
        while let Some((&first, &done)) = track.outstanding.first_key_value() {
            if !done {
                break;
            }
            track.outstanding.remove(&first);
            next = Some(first + 1);
        }
        next
    }
}

/// Keeps the tracker in step with the group's rebalances.
struct Context {
    tracker: Arc<Tracker>,
    topic: String,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list
                .elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect();
            tracing::info!(topic = %self.topic, ?partitions, "partitions revoked; messages in flight there are released");
            self.tracker.revoke(&partitions);
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions: Vec<i32> = list
                .elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect();
            tracing::info!(topic = %self.topic, ?partitions, "partitions assigned");
            self.tracker.assign(&partitions);
        }
    }
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Context>>,
    topic: String,
    tracker: Arc<Tracker>,
    slots: Semaphore,
    brokers: String,
}

impl KafkaConsumer {
    fn fail(&self, e: impl std::fmt::Display) -> PubSubError {
        PubSubError::Broker(format!("kafka at {}: {e}", self.brokers))
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&self) -> Result<Message, PubSubError> {
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| PubSubError::Closed)?;
        loop {
            let received = self.consumer.recv().await;
            let message = match received {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let partition = message.partition();
            let offset = message.offset();
            let mut metadata = BTreeMap::new();
            if let Some(headers) = message.headers() {
                for header in headers.iter() {
                    if let Some(value) = header.value {
                        metadata.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(value).into_owned(),
                        );
                    }
                }
            }
            if let Some(key) = message.key() {
                metadata.insert("__key".into(), String::from_utf8_lossy(key).into_owned());
            }
            metadata.insert("__partition".into(), partition.to_string());
            metadata.insert("__offset".into(), offset.to_string());
            metadata.insert("__topic".into(), message.topic().to_string());
            let data = Bytes::copy_from_slice(message.payload().unwrap_or_default());
            let generation = self.tracker.handed_out(partition, offset);
            permit.forget();
            return Ok(Message {
                topic: self.topic.clone(),
                data,
                metadata,
                token: Token::Kafka {
                    partition,
                    offset,
                    generation,
                },
            });
        }
    }

    async fn ack(&self, token: &Token) -> Result<(), PubSubError> {
        let Token::Kafka {
            partition,
            offset,
            generation,
        } = *token
        else {
            return Ok(());
        };
        self.slots.add_permits(1);
        if let Some(next) = self.tracker.settle(partition, offset, generation) {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .map_err(|e| self.fail(e))?;
            self.consumer
                .commit(&list, CommitMode::Async)
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    async fn park(&self, token: &Token) {
        let Token::Kafka {
            partition,
            generation,
            ..
        } = *token
        else {
            return;
        };
        self.slots.add_permits(1);
        if self.tracker.generation(partition) != generation {
            return; // the partition moved on meanwhile: its new assignment redelivers it
        }
        self.tracker.parked.lock().push(token.clone());
        let newly_paused = {
            let mut tracks = self.tracker.partitions.lock();
            let track = tracks.entry(partition).or_default();
            !std::mem::replace(&mut track.paused, true)
        };
        if newly_paused {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, partition);
            if let Err(e) = self.consumer.pause(&list) {
                tracing::warn!(topic = %self.topic, partition, error = %e, "could not pause the partition");
            }
            tracing::warn!(topic = %self.topic, partition, "partition held at its committed offset: a message there could not be delivered and there is no dead-letter topic");
        }
    }

    async fn close(&self) {
        self.slots.close();
        self.consumer.unsubscribe();
    }

    fn parked(&self) -> Vec<Token> {
        self.tracker.parked.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_offset_follows_the_settled_prefix_only() {
        let tracker = Tracker::default();
        tracker.assign(&[0]);
        let mut generation = 0;
        for offset in 10..14 {
            generation = tracker.handed_out(0, offset);
        }
        assert_eq!(
            tracker.settle(0, 11, generation),
            None,
            "11 settled before 10: nothing to commit"
        );
        assert_eq!(tracker.settle(0, 10, generation), Some(12));
        assert_eq!(tracker.settle(0, 13, generation), None);
        assert_eq!(tracker.settle(0, 12, generation), Some(14));
        tracker.handed_out(0, 14);
        tracker.revoke(&[0]);
        assert_eq!(
            tracker.settle(0, 14, generation),
            None,
            "a revoked partition commits nothing"
        );
    }

    #[test]
    fn a_message_from_before_a_reassignment_settles_nothing() {
        let tracker = Tracker::default();
        tracker.assign(&[0]);
        let old = tracker.handed_out(0, 5);
        tracker.revoke(&[0]);
        tracker.assign(&[0]);
        // Offset 5 is fetched again under the new assignment while the old delivery runs on.
        let new = tracker.handed_out(0, 5);
        assert_ne!(old, new);
        assert_eq!(
            tracker.settle(0, 5, old),
            None,
            "the old delivery's ack must not commit past the new one"
        );
        assert_eq!(tracker.settle(0, 5, new), Some(6));
    }

    #[test]
    fn librdkafka_passthrough_reaches_the_consumer_too() {
        use outrigger_config::dapr::{
            Component, ComponentSpec, ComponentType, MetadataItem, ObjectMeta,
        };
        let item = |name: &str, value: &str| MetadataItem {
            name: name.into(),
            value: Some(value.into()),
            secret_key_ref: None,
            env_ref: None,
        };
        let component = Component {
            metadata: ObjectMeta {
                name: "bus".into(),
                ..Default::default()
            },
            spec: ComponentSpec {
                component_type: ComponentType::PubsubKafka,
                version: "v1".into(),
                metadata: vec![
                    item("brokers", "127.0.0.1:9092"),
                    item("authType", "none"),
                    item("librdkafka.fetch.wait.max.ms", "1"),
                    item("librdkafka.session.timeout.ms", "30000"),
                ],
                ignore_errors: false,
                init_timeout: None,
            },
            scopes: vec![],
            auth: None,
        };
        let metadata = ComponentMetadata::resolve(&component).unwrap();
        let settings = Settings::from_metadata(&metadata).unwrap();
        let config = consumer_config(&settings, "orders", None);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("1"));
        assert_eq!(config.get("session.timeout.ms"), Some("30000"));
        assert_eq!(config.get("group.id"), Some("orders"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
    }
}
