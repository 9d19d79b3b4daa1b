//! `state.redis`: each item is a hash with fields `data` and `version` (the layout Dapr's Redis
//! store uses), written only by Lua scripts so that the ETag check and the write are one
//! atomic step, and a transaction's checks and writes are one script too.
//!
//! Versions come from one counter key per database (`outrigger||etag-seq`; user keys cannot
//! contain `||`), so a version is never handed out twice — not even to a key that was deleted
//! and saved again.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script, Value};
use tokio::sync::OnceCell;

use crate::component::Metadata;
use crate::{
    DeleteRequest, Operation, Precondition, SetRequest, StateEntry, StateError, StateStore,
};

const VERSION_COUNTER: &str = "outrigger||etag-seq";

/// Reads any number of keys: per key `{data, version, pttl}`, or 0 when it does not exist.
const READ: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'data', 'version')
  if r[2] then out[i] = {r[1], r[2], redis.call('PTTL', key)} else out[i] = 0 end
end
return out
";

/// Applies operations in order if every precondition holds, else returns -(index of the
/// first failing one). KEYS: the operations' keys, then the version counter. ARGV, five per
/// operation: kind (s = set, d = delete), check (n = none, v = version, a = absent), version,
/// data, ttl in ms (0 = none). A single save is a one-operation transaction.
const APPLY: &str = r"
local n = #KEYS - 1
local counter = KEYS[#KEYS]
local planned = {}
for i = 1, n do
  local key, at = KEYS[i], (i - 1) * 5
  local current = planned[key]
  if current == nil then current = redis.call('HGET', key, 'version') end
  local check = ARGV[at + 2]
  if (check == 'v' and current ~= ARGV[at + 3]) or (check == 'a' and current) then
    return -i
  end
  if ARGV[at + 1] == 's' then planned[key] = 'written' else planned[key] = false end
end
local last = 0
for i = 1, n do
  local key, at = KEYS[i], (i - 1) * 5
  if ARGV[at + 1] == 's' then
    last = redis.call('INCR', counter)
    redis.call('HSET', key, 'data', ARGV[at + 4], 'version', last)
    local ttl = tonumber(ARGV[at + 5])
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
  else
    redis.call('DEL', key)
  end
end
return last
";

pub(crate) struct Settings {
    /// `host:port`.
    pub(crate) host: String,
    port: u16,
    hostname: String,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    dial_timeout: Duration,
    read_timeout: Duration,
}

impl Settings {
    pub(crate) fn from_metadata(metadata: &Metadata) -> Result<Self, String> {
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
        if metadata
            .get("redisType")
            .is_some_and(|t| !t.is_empty() && t != "node")
        {
            return Err(
                metadata.invalid("redisType", "only \"node\" is supported (no cluster mode)")
            );
        }
        let non_empty = |name| {
            metadata
                .get(name)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Ok(Settings {
            host,
            port,
            hostname,
            username: non_empty("redisUsername"),
            password: non_empty("redisPassword"),
            db: metadata.number("redisDB", 0)?,
            dial_timeout: metadata.duration("dialTimeout", Duration::from_secs(5))?,
            read_timeout: metadata.duration("readTimeout", Duration::from_secs(3))?,
        })
    }
}

pub(crate) struct RedisStore {
    settings: Settings,
    connection: OnceCell<ConnectionManager>,
    read: Script,
    apply: Script,
}

impl RedisStore {
    pub(crate) fn new(settings: Settings) -> Self {
        RedisStore {
            settings,
            connection: OnceCell::new(),
            read: Script::new(READ),
            apply: Script::new(APPLY),
        }
    }

    /// The shared, self-reconnecting connection, created on first use.
    async fn connection(&self) -> Result<ConnectionManager, StateError> {
        self.connection
            .get_or_try_init(|| async {
                let s = &self.settings;
                let mut redis_info = RedisConnectionInfo::default().set_db(s.db);
                if let Some(user) = &s.username {
                    redis_info = redis_info.set_username(user);
                }
                if let Some(password) = &s.password {
                    redis_info = redis_info.set_password(password);
                }
                let info = ConnectionAddr::Tcp(s.hostname.clone(), s.port)
                    .into_connection_info()
                    .map_err(StateError::backend)?
                    .set_redis_settings(redis_info);
                let client = redis::Client::open(info).map_err(StateError::backend)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(s.dial_timeout))
                    .set_response_timeout(Some(s.read_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_lazy_with_config(client, config).map_err(StateError::backend)
            })
            .await
            .cloned()
    }

    /// Runs one script call, bounded by the dial and read timeouts together, so a Redis that
    /// is down or stuck fails the request instead of holding it.
    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        let limit = self.settings.dial_timeout + self.settings.read_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StateError::Backend(format!(
                "redis at {}: {e}",
                self.settings.host
            ))),
            Err(_) => Err(StateError::Backend(format!(
                "redis at {} did not answer within {limit:?}",
                self.settings.host
            ))),
        }
    }

    async fn read<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<StateEntry>>, StateError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.read.prepare_invoke();
        for key in keys {
            invocation.key(key.as_ref());
        }
        let value: Value = self.run(invocation.invoke_async(&mut connection)).await?;
        let now = SystemTime::now();
        let Value::Array(items) = value else {
            return Err(StateError::backend(format!(
                "unexpected reply from redis: {value:?}"
            )));
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::Array(fields) => parse_entry(fields, now).map(Some),
                _ => Ok(None),
            })
            .collect()
    }

    async fn apply(&self, operations: &[Operation]) -> Result<String, StateError> {
        let mut connection = self.connection().await?;
        let mut invocation = self.apply.prepare_invoke();
        for op in operations {
            invocation.key(op.key());
            let (kind, data, ttl) = match op {
                Operation::Set(s) => ("s", &s.value[..], s.ttl.millis()),
                Operation::Delete(_) => ("d", &b""[..], 0),
            };
            let (check, version) = match op.precondition() {
                Precondition::None => ("n", 0),
                Precondition::Version(v) => ("v", *v),
                Precondition::Absent => ("a", 0),
            };
            invocation
                .arg(kind)
                .arg(check)
                .arg(version)
                .arg(data)
                .arg(ttl);
        }
        invocation.key(VERSION_COUNTER);
        let outcome: i64 = self.run(invocation.invoke_async(&mut connection)).await?;
        if outcome < 0 {
            let failed = usize::try_from(-outcome - 1)
                .ok()
                .and_then(|i| operations.get(i))
                .ok_or_else(|| {
                    StateError::backend(format!("unexpected reply from redis: {outcome}"))
                })?;
            return Err(StateError::mismatch(failed.key(), failed.precondition()));
        }
        Ok(outcome.to_string())
    }
}

fn parse_entry(fields: Vec<Value>, now: SystemTime) -> Result<StateEntry, StateError> {
    let mut fields = fields.into_iter();
    let (data, version, pttl) = (fields.next(), fields.next(), fields.next());
    let value = match data {
        Some(Value::BulkString(bytes)) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    let etag = match version {
        Some(Value::BulkString(v)) => String::from_utf8_lossy(&v).into_owned(),
        Some(Value::Int(v)) => v.to_string(),
        other => {
            return Err(StateError::backend(format!(
                "item without a version: {other:?}"
            )))
        }
    };
    let expires_at = match pttl {
        Some(Value::Int(ms)) if ms >= 0 => Some(now + Duration::from_millis(ms as u64)),
        _ => None,
    };
    Ok(StateEntry {
        value,
        etag,
        expires_at,
    })
}

#[async_trait]
impl StateStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<StateEntry>, StateError> {
        let mut entries = self.read(&[key]).await?;
        Ok(entries.pop().flatten())
    }

    async fn bulk_get(&self, keys: &[String]) -> Result<Vec<Option<StateEntry>>, StateError> {
        self.read(keys).await
    }

    async fn set(&self, request: SetRequest) -> Result<String, StateError> {
        self.apply(&[Operation::Set(request)]).await
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.apply(&[Operation::Delete(request)]).await.map(drop)
    }

    async fn transact(&self, operations: Vec<Operation>) -> Result<(), StateError> {
        if operations.is_empty() {
            return Ok(());
        }
        self.apply(&operations).await.map(drop)
    }
}
