//! The pub/sub building block's broker side: the [`PubSub`] trait and its brokers — in-memory
//! (the embedded default), Redis Streams and Kafka — each opened from a Dapr `Component`. The
//! sidecar's publish API and its subscription delivery speak only to the trait.
//!
//! The contract every broker keeps: a message handed out by a [`Consumer`] is never forgotten
//! until it is [`Consumer::ack`]ed. [`Consumer::park`] keeps it unacknowledged — redelivered
//! after a restart, but not handed out again by this process — and [`Consumer::close`]
//! releases what was handed out and not acked, for redelivery. Nothing is acked by a broker on
//! its own.
#![forbid(unsafe_code)]

mod component;
mod kafka;
mod memory;
mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use component::{open, OpenedPubSub, PubSubSettings};

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub topic: String,
    /// The bytes as they go on the wire (a CloudEvent, or the raw payload).
    pub data: Bytes,
    /// Broker metadata: `partitionKey` (Kafka's record key), and whatever a broker keeps.
    pub metadata: BTreeMap<String, String>,
}

/// A message handed out to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub data: Bytes,
    pub metadata: BTreeMap<String, String>,
    /// Where the broker keeps it, to ack or park it.
    pub token: Token,
}

/// A broker's handle on one message it handed out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Token {
    /// In-memory: the message's sequence number in its topic.
    Memory(u64),
    /// Redis Streams: the entry id (`1700000000000-0`).
    Redis(String),
    /// Kafka: partition and offset, and which assignment of the partition handed it out (a
    /// partition revoked and assigned again starts a new one; settling a message of an older
    /// one commits nothing).
    Kafka {
        partition: i32,
        offset: i64,
        generation: u64,
    },
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Memory(seq) => write!(f, "#{seq}"),
            Token::Redis(id) => f.write_str(id),
            Token::Kafka {
                partition, offset, ..
            } => write!(f, "{partition}@{offset}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubSubError {
    /// The broker failed or did not answer in time; the message says which and how.
    #[error("{0}")]
    Broker(String),
    /// The consumer was closed.
    #[error("the subscription is closed")]
    Closed,
}

/// How a subscription consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// The consumer group (Dapr's `consumerID` / `consumerGroup`; the app id by default).
    pub group: String,
    /// Messages handed out and not yet acked or parked, at most. `next` waits beyond it: a
    /// slow app slows the pull from the broker instead of filling memory.
    pub max_in_flight: usize,
    /// The longest this subscription may hold one message before its verdict (its retry
    /// budget and a margin); `None`: no bound (retries forever). Brokers size their own
    /// "consumer presumed dead" timers from it: Redis' reclaim idle time when
    /// `processingTimeout` is not given, Kafka's `max.poll.interval.ms`.
    pub hold_limit: Option<std::time::Duration>,
}

#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    /// Publishes one message; returns once the broker has it.
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PubSubError>;

    /// Starts consuming `topic`; messages flow until the consumer is closed.
    async fn subscribe(
        &self,
        topic: &str,
        options: ConsumeOptions,
    ) -> Result<Arc<dyn Consumer>, PubSubError>;
}

#[async_trait]
pub trait Consumer: Send + Sync {
    /// The next message to deliver; waits for one (and for room under `max_in_flight`).
    async fn next(&self) -> Result<Message, PubSubError>;

    /// The message's fate is settled (delivered, dropped, dead-lettered): never again.
    async fn ack(&self, token: &Token) -> Result<(), PubSubError>;

    /// Delivery gave up on the message without a verdict to ack it by: it stays
    /// unacknowledged in the broker (redelivered after a restart) and is not handed out again
    /// by this consumer.
    async fn park(&self, token: &Token);

    /// Stops consuming. Messages handed out and not acked go back for redelivery.
    async fn close(&self);

    /// Messages parked so far, for `/v1.0/metadata`.
    fn parked(&self) -> Vec<Token>;
}
