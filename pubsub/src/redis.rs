//! `pubsub.redis`: Redis Streams, the way Dapr's component uses them (RESEARCH_NOTES.md §A1),
//! with one difference that matters: nothing is acked until the app's verdict is final.
//!
//! - publish: `XADD <topic> [MAXLEN ~ maxLenApprox] * data <bytes> [metadata <json>]`;
//! - consume: a consumer group named `consumerID` (the app id by default), created with
//!   `MKSTREAM`; this consumer's own pending entries are read first (so a restart redelivers
//!   what it had not settled), then new ones with `XREADGROUP … >` on a connection of its own;
//! - reclaim: every `redeliverInterval`, entries idle ≥ `processingTimeout` in the group
//!   (another instance died holding them) are claimed — never one this consumer is still
//!   delivering or has parked;
//! - ack: `XACK` after the verdict; park: left pending, skipped by reclaim until a restart.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outrigger_config::metadata::ComponentMetadata;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};
use tokio::sync::{mpsc, OnceCell, Semaphore};

use crate::{ConsumeOptions, Consumer, Message, OutgoingMessage, PubSub, PubSubError, Token};

/// The component's metadata, with Dapr's defaults.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    host: String,
    hostname: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    dial_timeout: Duration,
    read_timeout: Duration,
    /// The consumer group and consumer name (Dapr's `consumerID`); `None`: the app id.
    pub(crate) consumer_id: Option<String>,
    /// An entry pending this long in another consumer is taken over; when not given, 60s or
    /// the subscription's hold limit and 10s, whichever is longer.
    pub(crate) processing_timeout: Option<Duration>,
    /// How often pending entries are checked; zero turns reclaiming off.
    pub(crate) redeliver_interval: Duration,
    /// Entries read per `XREADGROUP`.
    queue_depth: usize,
    /// Approximate stream length cap on publish.
    max_len_approx: Option<u64>,
}

impl Settings {
    pub(crate) fn from_metadata(metadata: &ComponentMetadata) -> Result<Settings, String> {
        let host = metadata
            .required("redisHost", "localhost:6379")?
            .to_string();
        let (hostname, port) = host
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| metadata.invalid("redisHost", &format!("{host:?} is not host:port")))?;
        if metadata.bool("enableTLS")? {
            return Err(metadata.invalid(
                "enableTLS",
                "TLS to Redis is not supported yet; reach Redis over loopback or a TLS tunnel",
            ));
        }
        let non_empty = |name| {
            metadata
                .get(name)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let ms = Duration::from_millis;
        let queue_depth: usize = metadata.number("queueDepth", 100)?;
        if queue_depth == 0 {
            return Err(metadata.invalid("queueDepth", "must be at least 1"));
        }
        let max_len: u64 = metadata.number("maxLenApprox", 0)?;
        Ok(Settings {
            host,
            hostname,
            port,
            username: non_empty("redisUsername"),
            password: non_empty("redisPassword"),
            db: metadata.number("redisDB", 0)?,
            dial_timeout: metadata.duration("dialTimeout", Duration::from_secs(5))?,
            read_timeout: metadata.duration("readTimeout", Duration::from_secs(3))?,
            consumer_id: non_empty("consumerID"),
            processing_timeout: metadata
                .get("processingTimeout")
                .map(|_| metadata.duration_with_bare("processingTimeout", Duration::ZERO, ms))
                .transpose()?
                .filter(|d| !d.is_zero()),
            redeliver_interval: metadata.duration_with_bare(
                "redeliverInterval",
                Duration::from_secs(15),
                ms,
            )?,
            queue_depth,
            max_len_approx: (max_len > 0).then_some(max_len),
        })
    }

    fn client(&self) -> Result<redis::Client, String> {
        let mut redis_info = RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        let info = ConnectionAddr::Tcp(self.hostname.clone(), self.port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(redis_info);
        redis::Client::open(info).map_err(|e| e.to_string())
    }
}

pub(crate) struct RedisBroker {
    settings: Settings,
    connection: OnceCell<ConnectionManager>,
}

impl RedisBroker {
    pub(crate) fn new(settings: Settings) -> RedisBroker {
        RedisBroker {
            settings,
            connection: OnceCell::new(),
        }
    }

    fn fail(&self, e: impl std::fmt::Display) -> PubSubError {
        PubSubError::Broker(format!("redis at {}: {e}", self.settings.host))
    }

    async fn connection(&self) -> Result<ConnectionManager, PubSubError> {
        self.connection
            .get_or_try_init(|| async {
                let client = self.settings.client().map_err(|e| self.fail(e))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.dial_timeout))
                    .set_response_timeout(Some(self.settings.read_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_lazy_with_config(client, config).map_err(|e| self.fail(e))
            })
            .await
            .cloned()
    }

    /// `XGROUP CREATE <topic> <group> 0 MKSTREAM`; an existing group is fine.
    async fn create_group(&self, topic: &str, group: &str) -> Result<(), PubSubError> {
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(topic)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
        match self.run::<Value>(create).await {
            Ok(_) => Ok(()),
            Err(PubSubError::Broker(e)) if e.contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One command, bounded by the dial and read timeouts together.
    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, PubSubError> {
        let mut connection = self.connection().await?;
        let limit = self.settings.dial_timeout + self.settings.read_timeout;
        match tokio::time::timeout(limit, command.query_async(&mut connection)).await {
            Ok(result) => result.map_err(|e| self.fail(e)),
            Err(_) => Err(self.fail(format!("no answer within {limit:?}"))),
        }
    }
}

#[async_trait]
impl PubSub for RedisBroker {
    async fn publish(&self, message: OutgoingMessage) -> Result<(), PubSubError> {
        let mut command = redis::cmd("XADD");
        command.arg(&message.topic);
        if let Some(max) = self.settings.max_len_approx {
            command.arg("MAXLEN").arg("~").arg(max);
        }
        command.arg("*").arg("data").arg(message.data.as_ref());
        if !message.metadata.is_empty() {
            let metadata = serde_json::to_string(&message.metadata).unwrap_or_default();
            command.arg("metadata").arg(metadata);
        }
        let _: String = self.run(command).await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: ConsumeOptions,
    ) -> Result<Arc<dyn Consumer>, PubSubError> {
        let group = self
            .settings
            .consumer_id
            .clone()
            .unwrap_or_else(|| options.group.clone());
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(topic)
            .arg(&group)
            .arg("0")
            .arg("MKSTREAM");
        match self.run::<Value>(create).await {
            Ok(_) => {}
            Err(PubSubError::Broker(e)) if e.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        let reader = self
            .settings
            .client()
            .map_err(|e| self.fail(e))?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.fail(e))?;
        let (tx, rx) = mpsc::channel(self.settings.queue_depth);
        let shared = Arc::new(Shared {
            topic: topic.to_string(),
            group: group.clone(),
            handed_out: Mutex::new(HashSet::new()),
            parked: Mutex::new(Vec::new()),
            host: self.settings.host.clone(),
        });
        let broker = RedisBroker::new(self.settings.clone());
        let mut tasks = vec![tokio::spawn(read_loop(
            reader,
            RedisBroker::new(self.settings.clone()),
            shared.clone(),
            tx.clone(),
        ))];
        if !self.settings.redeliver_interval.is_zero() {
            let idle = self.settings.processing_timeout.unwrap_or_else(|| {
                options
                    .hold_limit
                    .map_or(Duration::from_secs(3600), |hold| {
                        hold.saturating_add(Duration::from_secs(10))
                            .max(Duration::from_secs(60))
                    })
            });
            tasks.push(tokio::spawn(reclaim_loop(
                broker,
                shared.clone(),
                tx,
                self.settings.clone(),
                idle,
            )));
        }
        Ok(Arc::new(RedisConsumer {
            broker: RedisBroker::new(self.settings.clone()),
            shared,
            messages: tokio::sync::Mutex::new(rx),
            slots: Semaphore::new(options.max_in_flight.max(1)),
            tasks: Mutex::new(tasks),
        }))
    }
}

/// What the consumer and its background loops share.
struct Shared {
    topic: String,
    group: String,
    /// Entries handed out (or queued to be) and not yet acked or parked: never reclaimed.
    handed_out: Mutex<HashSet<String>>,
    parked: Mutex<Vec<String>>,
    host: String,
}

impl Shared {
    /// Whether an entry may be handed out now (not already out, not parked); marks it out.
    fn claim(&self, id: &str) -> bool {
        if self.parked.lock().iter().any(|p| p == id) {
            return false;
        }
        self.handed_out.lock().insert(id.to_string())
    }
}

/// How long one `XREADGROUP` blocks waiting for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// The reader's own connection: a blocking read holds it, so it is not shared, and its
/// response timeout covers the block.
async fn reader_connection(settings: &Settings) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.dial_timeout))
        .set_response_timeout(Some(BLOCK + settings.read_timeout));
    settings
        .client()?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())
}

/// Reads this consumer's own pending entries (left by a previous run), then new ones. A
/// failed read reconnects (Redis restarted) and re-creates the group if the stream was
/// deleted; the backlog is read again then, as a restart would.
async fn read_loop(
    mut connection: MultiplexedConnection,
    broker: RedisBroker,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Message>,
) {
    let count = broker.settings.queue_depth;
    let mut from_pending = Some("0".to_string());
    loop {
        let start = from_pending.clone().unwrap_or_else(|| ">".to_string());
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&shared.group)
            .arg(&shared.group)
            .arg("COUNT")
            .arg(count);
        if from_pending.is_none() {
            command.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&shared.topic).arg(&start);
        let reply: Result<Value, _> = command.query_async(&mut connection).await;
        let entries = match reply {
            Ok(value) => stream_entries(value),
            Err(e) => {
                tracing::warn!(topic = %shared.topic, host = %shared.host, error = %e, "reading the stream failed; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if e.to_string().contains("NOGROUP") {
                    let _ = broker.create_group(&shared.topic, &shared.group).await;
                }
                match reader_connection(&broker.settings).await {
                    Ok(fresh) => connection = fresh,
                    Err(e) => {
                        tracing::warn!(topic = %shared.topic, host = %shared.host, error = %e, "reconnecting to Redis failed");
                    }
                }
                from_pending = Some("0".to_string());
                continue;
            }
        };
        if let Some(cursor) = &mut from_pending {
            match entries.last() {
                Some((id, _)) => *cursor = id.clone(),
                // The backlog is done: from here on, only new entries.
                None => from_pending = None,
            }
        }
        for (id, fields) in entries {
            if !shared.claim(&id) {
                continue;
            }
            if tx.send(message(&shared.topic, id, fields)).await.is_err() {
                return;
            }
        }
    }
}

/// Takes over entries another consumer of the group left pending for `processingTimeout`.
async fn reclaim_loop(
    broker: RedisBroker,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Message>,
    settings: Settings,
    idle: Duration,
) {
    let idle_ms = idle.as_millis().to_string();
    loop {
        tokio::time::sleep(settings.redeliver_interval).await;
        let mut pending = redis::cmd("XPENDING");
        pending
            .arg(&shared.topic)
            .arg(&shared.group)
            .arg("IDLE")
            .arg(&idle_ms)
            .arg("-")
            .arg("+")
            .arg(settings.queue_depth);
        let Ok(Value::Array(rows)) = broker.run::<Value>(pending).await else {
            continue;
        };
        let ids: Vec<String> = rows
            .into_iter()
            .filter_map(|row| match row {
                Value::Array(fields) => fields.into_iter().next().and_then(text),
                _ => None,
            })
            .filter(|id| {
                !shared.handed_out.lock().contains(id)
                    && !shared.parked.lock().iter().any(|p| p == id)
            })
            .collect();
        if ids.is_empty() {
            continue;
        }
        let mut claim = redis::cmd("XCLAIM");
        claim
            .arg(&shared.topic)
            .arg(&shared.group)
            .arg(&shared.group)
            .arg(&idle_ms);
        for id in &ids {
            claim.arg(id);
        }
        let Ok(value) = broker.run::<Value>(claim).await else {
            continue;
        };
        for (id, fields) in entries_of(value) {
            if !shared.claim(&id) {
                continue;
            }
            tracing::info!(topic = %shared.topic, id = %id, "reclaimed an entry another consumer left pending");
            if tx.send(message(&shared.topic, id, fields)).await.is_err() {
                return;
            }
        }
    }
}

fn message(topic: &str, id: String, fields: BTreeMap<String, Bytes>) -> Message {
    let metadata = fields
        .get("metadata")
        .and_then(|m| serde_json::from_slice(m).ok())
        .unwrap_or_default();
    Message {
        topic: topic.to_string(),
        data: fields.get("data").cloned().unwrap_or_default(),
        metadata,
        token: Token::Redis(id),
    }
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// `XREADGROUP`'s reply: `[[stream, [[id, [field, value, …]], …]]]`, or nil on a timeout.
fn stream_entries(value: Value) -> Vec<(String, BTreeMap<String, Bytes>)> {
    let Value::Array(streams) = value else {
        return Vec::new();
    };
    streams
        .into_iter()
        .filter_map(|stream| match stream {
            Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
            _ => None,
        })
        .flat_map(entries_of)
        .collect()
}

/// A list of stream entries: `[[id, [field, value, …]], …]` (deleted entries, nil, skipped).
fn entries_of(value: Value) -> Vec<(String, BTreeMap<String, Bytes>)> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = text(parts.pop()?)?;
            let Value::Array(fields) = fields else {
                return None;
            };
            let mut map = BTreeMap::new();
            let mut iter = fields.into_iter();
            while let (Some(name), Some(value)) = (iter.next(), iter.next()) {
                if let (Some(name), Value::BulkString(value)) = (text(name), value) {
                    map.insert(name, Bytes::from(value));
                }
            }
            Some((id, map))
        })
        .collect()
}

struct RedisConsumer {
    broker: RedisBroker,
    shared: Arc<Shared>,
    messages: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    slots: Semaphore,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[async_trait]
impl Consumer for RedisConsumer {
    async fn next(&self) -> Result<Message, PubSubError> {
        let permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| PubSubError::Closed)?;
        let message = self
            .messages
            .lock()
            .await
            .recv()
            .await
            .ok_or(PubSubError::Closed)?;
        permit.forget();
        Ok(message)
    }

    async fn ack(&self, token: &Token) -> Result<(), PubSubError> {
        let Token::Redis(id) = token else {
            return Ok(());
        };
        // XACK is idempotent: a failure (Redis restarting) is tried again for a few seconds.
        let mut result = Ok(0);
        for wait_ms in [0u64, 200, 500, 1000, 2000] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            let mut command = redis::cmd("XACK");
            command
                .arg(&self.shared.topic)
                .arg(&self.shared.group)
                .arg(id);
            result = self.broker.run::<i64>(command).await;
            if result.is_ok() {
                break;
            }
        }
        // Settled either way for this consumer: acked, or left pending for the next read of
        // the backlog (after a reconnect or a restart) to hand out again.
        if self.shared.handed_out.lock().remove(id) {
            self.slots.add_permits(1);
        }
        result.map(|_| ())
    }

    async fn park(&self, token: &Token) {
        let Token::Redis(id) = token else {
            return;
        };
        if self.shared.handed_out.lock().remove(id) {
            self.shared.parked.lock().push(id.clone());
            self.slots.add_permits(1);
        }
    }

    async fn close(&self) {
        self.slots.close();
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        // Entries handed out and not acked stay pending in the group: the next consumer
        // (this app restarted, or another instance after processingTimeout) delivers them.
        self.messages.lock().await.close();
    }

    fn parked(&self) -> Vec<Token> {
        self.shared
            .parked
            .lock()
            .iter()
            .map(|id| Token::Redis(id.clone()))
            .collect()
    }
}
