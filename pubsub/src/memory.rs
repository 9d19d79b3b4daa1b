//! `pubsub.in-memory`: topics inside this process, one queue per consumer group. Nothing
//! survives a restart (as Dapr's in-memory broker), but within the process a message is held
//! until it is acked: a closed consumer's unacked messages go back to the front of its group's
//! queue for the next consumer of that group.
//!
//! Bounded: a group's queue holds at most 10,000 messages and 64 MiB; a publish that would go
//! beyond refuses (the publisher gets a 500 naming the limit) rather than grow the process.
//! A topic nobody subscribes to holds nothing (and is not even created).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

use crate::{ConsumeOptions, Consumer, Message, OutgoingMessage, PubSub, PubSubError, Token};

#[derive(Default)]
pub(crate) struct MemoryBroker {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    next_seq: AtomicU64,
}

#[derive(Default)]
struct Topic {
    groups: Mutex<HashMap<String, Arc<Group>>>,
}

/// Undelivered messages one group's queue may hold, and their bytes.
const MAX_QUEUED: usize = 10_000;
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// One consumer group's queue of a topic.
#[derive(Default)]
struct Group {
    queue: Mutex<Queue>,
    ready: Notify,
    /// Consumers attached right now; a topic publishes only to groups someone consumes.
    attached: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<Message>,
    bytes: usize,
}

impl Queue {
    fn push_back(&mut self, message: Message) {
        self.bytes += message.data.len();
        self.messages.push_back(message);
    }

    fn push_front(&mut self, message: Message) {
        self.bytes += message.data.len();
        self.messages.push_front(message);
    }

    fn pop_front(&mut self) -> Option<Message> {
        let message = self.messages.pop_front()?;
        self.bytes -= message.data.len();
        Some(message)
    }

    fn takes(&self, bytes: usize) -> bool {
        self.messages.len() < MAX_QUEUED && self.bytes + bytes <= MAX_QUEUED_BYTES
    }
}

impl MemoryBroker {
    fn topic(&self, name: &str) -> Arc<Topic> {
        self.topics
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl PubSub for MemoryBroker {
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PubSubError> {
        let Some(topic) = self.topics.lock().get(&message.topic).cloned() else {
            return Ok(());
        };
        let groups: Vec<Arc<Group>> = topic
            .groups
            .lock()
            .values()
            .filter(|g| g.attached.load(Ordering::Acquire) > 0)
            .cloned()
            .collect();
        if groups
            .iter()
            .any(|g| !g.queue.lock().takes(message.data.len()))
        {
            return Err(PubSubError::Broker(format!(
                "in-memory topic {}: a subscriber's queue holds {MAX_QUEUED} messages or {} MiB undelivered; publish refused until it drains",
                message.topic,
                MAX_QUEUED_BYTES / (1024 * 1024)
            )));
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        for group in groups {
            group.queue.lock().push_back(Message {
                topic: message.topic.clone(),
                data: message.data.clone(),
                metadata: message.metadata.clone(),
                token: Token::Memory(seq),
            });
            group.ready.notify_one();
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: ConsumeOptions,
    ) -> Result<Arc<dyn Consumer>, PubSubError> {
        let group = self
            .topic(topic)
            .groups
            .lock()
            .entry(options.group.clone())
            .or_default()
            .clone();
        group.attached.fetch_add(1, Ordering::AcqRel);
        Ok(Arc::new(MemoryConsumer {
            group,
            slots: Semaphore::new(options.max_in_flight.max(1)),
            in_flight: Mutex::new(HashMap::new()),
            parked: Mutex::new(Vec::new()),
            closed: Default::default(),
        }))
    }
}

struct MemoryConsumer {
    group: Arc<Group>,
    slots: Semaphore,
    in_flight: Mutex<HashMap<Token, Message>>,
    parked: Mutex<Vec<Message>>,
    closed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&self) -> Result<Message, PubSubError> {
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| PubSubError::Closed)?;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(PubSubError::Closed);
            }
            let ready = self.group.ready.notified();
            if let Some(message) = self.group.queue.lock().pop_front() {
                permit.forget();
                self.in_flight
                    .lock()
                    .insert(message.token.clone(), message.clone());
                return Ok(message);
            }
            ready.await;
        }
    }

    async fn ack(&self, token: &Token) -> Result<(), PubSubError> {
        if self.in_flight.lock().remove(token).is_some() {
            self.slots.add_permits(1);
        }
        Ok(())
    }

    async fn park(&self, token: &Token) {
        if let Some(message) = self.in_flight.lock().remove(token) {
            self.parked.lock().push(message);
            self.slots.add_permits(1);
        }
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.slots.close();
        // What was handed out and not acked goes back first in line; parked messages too —
        // in memory, a "restart" of the subscription is the only redelivery there is.
        let mut back: Vec<Message> = self.in_flight.lock().drain().map(|(_, m)| m).collect();
        back.extend(self.parked.lock().drain(..));
        back.sort_by(|a, b| a.token.cmp(&b.token));
        {
            let mut queue = self.group.queue.lock();
            for message in back.into_iter().rev() {
                queue.push_front(message);
            }
        }
        self.group.attached.fetch_sub(1, Ordering::AcqRel);
        self.group.ready.notify_waiters();
        self.group.ready.notify_one();
    }

    fn parked(&self) -> Vec<Token> {
        self.parked.lock().iter().map(|m| m.token.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, data: &'static str) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.into(),
            data: bytes::Bytes::from_static(data.as_bytes()),
            metadata: Default::default(),
        }
    }

    fn options(group: &str, max: usize) -> ConsumeOptions {
        ConsumeOptions {
            group: group.into(),
            max_in_flight: max,
            hold_limit: None,
        }
    }

    #[tokio::test]
    async fn every_group_gets_each_message_and_a_closed_consumer_gives_back_what_it_held() {
        let broker = MemoryBroker::default();
        let a = broker.subscribe("t", options("a", 10)).await.unwrap();
        let b = broker.subscribe("t", options("b", 10)).await.unwrap();
        broker.publish(message("t", "one")).await.unwrap();
        broker.publish(message("t", "two")).await.unwrap();
        let first = a.next().await.unwrap();
        assert_eq!(&first.data[..], b"one");
        assert_eq!(&b.next().await.unwrap().data[..], b"one");
        a.ack(&first.token).await.unwrap();
        let second = a.next().await.unwrap();
        assert_eq!(&second.data[..], b"two");
        // Not acked: a new consumer of the group gets it again after the close.
        let again = broker.subscribe("t", options("a", 10)).await.unwrap();
        a.close().await;
        assert_eq!(&again.next().await.unwrap().data[..], b"two");
    }

    #[tokio::test]
    async fn next_waits_while_max_in_flight_are_out() {
        let broker = MemoryBroker::default();
        let consumer = broker.subscribe("t", options("g", 1)).await.unwrap();
        broker.publish(message("t", "one")).await.unwrap();
        broker.publish(message("t", "two")).await.unwrap();
        let first = consumer.next().await.unwrap();
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), consumer.next()).await;
        assert!(
            waiting.is_err(),
            "a second message came out while one was in flight"
        );
        consumer.park(&first.token).await;
        assert_eq!(&consumer.next().await.unwrap().data[..], b"two");
        assert_eq!(consumer.parked(), vec![first.token]);
    }

    #[tokio::test]
    async fn a_topic_without_consumers_keeps_nothing() {
        let broker = MemoryBroker::default();
        broker.publish(message("t", "lost")).await.unwrap();
        let consumer = broker.subscribe("t", options("g", 1)).await.unwrap();
        broker.publish(message("t", "kept")).await.unwrap();
        assert_eq!(&consumer.next().await.unwrap().data[..], b"kept");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_publishes_and_an_unsubscribed_topic_holds_nothing() {
        let broker = MemoryBroker::default();
        broker.publish(message("nobody", "x")).await.unwrap();
        assert!(broker.topics.lock().is_empty(), "no topic made for nobody");
        let consumer = broker.subscribe("t", options("g", 1)).await.unwrap();
        for _ in 0..MAX_QUEUED {
            broker.publish(message("t", "m")).await.unwrap();
        }
        let refused = broker.publish(message("t", "one too many")).await;
        match refused {
            Err(PubSubError::Broker(why)) => assert!(why.contains("10000 messages"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let first = consumer.next().await.unwrap();
        consumer.ack(&first.token).await.unwrap();
        broker.publish(message("t", "room again")).await.unwrap();
    }
}
