//! `state.postgresql`: one row per key in a table the store creates when it first connects,
//! the ETag a `version` column filled from a sequence (never reused), every ETag check part of
//! the statement that writes (`UPDATE … WHERE version = $n`), and a transaction a SQL
//! transaction. Expired rows read as missing and are deleted every `cleanupInterval`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use crate::component::Metadata;
use crate::{
    DeleteRequest, Operation, Precondition, SetRequest, StateEntry, StateError, StateStore,
};

pub(crate) struct Settings {
    pub(crate) table: String,
    config: tokio_postgres::Config,
    timeout: Duration,
    max_connections: usize,
    cleanup_interval: Option<Duration>,
}

impl Settings {
    pub(crate) fn from_metadata(metadata: &Metadata) -> Result<Self, String> {
        let connection_string = metadata.required(
            "connectionString",
            "\"host=localhost user=postgres dbname=dapr\" or postgres://user@host/db",
        )?;
        let config = tokio_postgres::Config::from_str(connection_string)
            .map_err(|e| metadata.invalid("connectionString", &e.to_string()))?;
        let table = metadata
            .get("tableName")
            .unwrap_or("state")
            .trim()
            .to_string();
        if !is_identifier(&table) {
            return Err(metadata.invalid(
                "tableName",
                &format!("{table:?} is not a table name (letters, digits and _, optionally schema.table)"),
            ));
        }
        let cleanup = metadata.duration("cleanupInterval", Duration::from_secs(3600))?;
        let cleanup = match metadata.get("cleanupIntervalInSeconds") {
            Some(_) => metadata.duration("cleanupIntervalInSeconds", cleanup)?,
            None => cleanup,
        };
        Ok(Settings {
            table,
            config,
            timeout: metadata.duration("timeout", Duration::from_secs(20))?,
            max_connections: metadata.number("maxConns", 16)?.max(1),
            cleanup_interval: (!cleanup.is_zero()).then_some(cleanup),
        })
    }
}

fn is_identifier(name: &str) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 50
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

/// The statements, with the table name filled in (it is checked to be an identifier).
struct Sql {
    create: String,
    get: String,
    bulk_get: String,
    upsert: String,
    insert_absent: String,
    update_version: String,
    delete: String,
    delete_version: String,
    cleanup: String,
}

impl Sql {
    fn new(table: &str) -> Self {
        let sequence = format!("{table}_etag_seq");
        let live = "(expires_at IS NULL OR expires_at > now())";
        let expires =
            "CASE WHEN $3::bigint > 0 THEN now() + $3::bigint * interval '1 millisecond' END";
        let expires_ms = "(extract(epoch FROM expires_at) * 1000)::bigint";
        let insert = format!(
            "INSERT INTO {table} AS s (key, value, version, expires_at) \
             VALUES ($1, $2, nextval('{sequence}'), {expires}) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version, \
             expires_at = excluded.expires_at, updated_at = now()"
        );
        Sql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, value bytea NOT NULL, \
                 version bigint NOT NULL, expires_at timestamptz, \
                 updated_at timestamptz NOT NULL DEFAULT now()); \
                 CREATE SEQUENCE IF NOT EXISTS {sequence};"
            ),
            get: format!("SELECT value, version, {expires_ms} FROM {table} WHERE key = $1 AND {live}"),
            bulk_get: format!(
                "SELECT key, value, version, {expires_ms} FROM {table} WHERE key = ANY($1) AND {live}"
            ),
            upsert: format!("{insert} RETURNING version"),
            insert_absent: format!(
                "{insert} WHERE s.expires_at IS NOT NULL AND s.expires_at <= now() RETURNING version"
            ),
            update_version: format!(
                "UPDATE {table} SET value = $2, version = nextval('{sequence}'), expires_at = {expires}, \
                 updated_at = now() WHERE key = $1 AND version = $4 AND {live} RETURNING version"
            ),
            delete: format!("DELETE FROM {table} WHERE key = $1"),
            delete_version: format!("DELETE FROM {table} WHERE key = $1 AND version = $2 AND {live}"),
            cleanup: format!("DELETE FROM {table} WHERE expires_at <= now()"),
        }
    }
}

pub(crate) struct PostgresStore {
    settings: Settings,
    sql: Sql,
    pool: OnceCell<Pool>,
    schema_ready: OnceCell<()>,
    cleanup: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(task) = self.cleanup.lock().take() {
            task.abort();
        }
    }
}

impl PostgresStore {
    pub(crate) fn new(settings: Settings) -> Self {
        PostgresStore {
            sql: Sql::new(&settings.table),
            settings,
            pool: OnceCell::new(),
            schema_ready: OnceCell::new(),
            cleanup: parking_lot::Mutex::new(None),
        }
    }

    fn describe(&self, e: &tokio_postgres::Error) -> StateError {
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            }
        };
        StateError::Backend(format!(
            "postgresql table {}: {detail}",
            self.settings.table
        ))
    }

    /// A pooled connection; the first one creates the table and starts the expiry sweep.
    async fn client(&self) -> Result<deadpool_postgres::Client, StateError> {
        let pool = self
            .pool
            .get_or_try_init(|| async {
                let manager = Manager::from_config(
                    self.settings.config.clone(),
                    NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                let timeout = Some(self.settings.timeout);
                Pool::builder(manager)
                    .max_size(self.settings.max_connections)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(timeout)
                    .create_timeout(timeout)
                    .recycle_timeout(timeout)
                    .build()
                    .map_err(StateError::backend)
            })
            .await?;
        let mut client = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.describe(&e),
            other => {
                StateError::Backend(format!("postgresql table {}: {other}", self.settings.table))
            }
        })?;
        self.schema_ready
            .get_or_try_init(|| async {
                let tx = client.transaction().await.map_err(|e| self.describe(&e))?;
                // Two sidecars creating the same table at once would race in the catalog.
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    &[&self.settings.table],
                )
                .await
                .map_err(|e| self.describe(&e))?;
                tx.batch_execute(&self.sql.create)
                    .await
                    .map_err(|e| self.describe(&e))?;
                tx.commit().await.map_err(|e| self.describe(&e))?;
                self.start_cleanup(pool.clone());
                Ok::<(), StateError>(())
            })
            .await?;
        Ok(client)
    }

    fn start_cleanup(&self, pool: Pool) {
        let Some(interval) = self.settings.cleanup_interval else {
            return;
        };
        let sql = self.sql.cleanup.clone();
        let table = self.settings.table.clone();
        *self.cleanup.lock() = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Ok(client) = pool.get().await else {
                    continue;
                };
                match client.execute(sql.as_str(), &[]).await {
                    Ok(n) if n > 0 => {
                        tracing::debug!(%table, deleted = n, "expired state rows deleted")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%table, error = %e, "deleting expired state rows failed")
                    }
                }
            }
        }));
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(StateError::Backend(format!(
                    "postgresql table {}: no answer within {:?}",
                    self.settings.table, self.settings.timeout
                )))
            })
    }

    async fn statement(
        &self,
        client: &impl GenericClient,
        sql: &str,
    ) -> Result<tokio_postgres::Statement, StateError> {
        client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.describe(&e))
    }

    /// One operation on `client` (a connection or an open transaction).
    /// Returns the new version of a saved item.
    async fn apply(
        &self,
        client: &impl GenericClient,
        op: &Operation,
    ) -> Result<Option<i64>, StateError> {
        let mismatch = || StateError::mismatch(op.key(), op.precondition());
        let pg = |e: tokio_postgres::Error| self.describe(&e);
        // A version beyond i64 was never handed out, so it cannot match.
        let version = match op.precondition() {
            Precondition::Version(v) => Some(i64::try_from(*v).map_err(|_| mismatch())?),
            Precondition::None | Precondition::Absent => None,
        };
        match op {
            Operation::Set(s) => {
                let (value, ttl): (&[u8], i64) = (&s.value, s.ttl.millis() as i64);
                let row = match version {
                    Some(version) => {
                        let statement = self.statement(client, &self.sql.update_version).await?;
                        client
                            .query_opt(&statement, &[&s.key, &value, &ttl, &version])
                            .await
                    }
                    None => {
                        let sql = match s.precondition {
                            Precondition::Absent => &self.sql.insert_absent,
                            _ => &self.sql.upsert,
                        };
                        let statement = self.statement(client, sql).await?;
                        client.query_opt(&statement, &[&s.key, &value, &ttl]).await
                    }
                };
                let row = row.map_err(pg)?.ok_or_else(mismatch)?;
                row.try_get(0).map(Some).map_err(pg)
            }
            Operation::Delete(d) => {
                let deleted = match version {
                    Some(version) => {
                        let statement = self.statement(client, &self.sql.delete_version).await?;
                        client.execute(&statement, &[&d.key, &version]).await
                    }
                    // Deleting a missing key without an ETag is fine.
                    None => {
                        let statement = self.statement(client, &self.sql.delete).await?;
                        client.execute(&statement, &[&d.key]).await.map(|_| 1)
                    }
                };
                if deleted.map_err(pg)? == 1 {
                    Ok(None)
                } else {
                    Err(mismatch())
                }
            }
        }
    }

    /// The item in `row` from column `at` on (value, version, expiry in ms). A table of
    /// another shape (say, an older Dapr table of the same name) is an error, not a panic.
    fn entry(&self, row: &tokio_postgres::Row, at: usize) -> Result<StateEntry, StateError> {
        let columns = || -> Result<(Vec<u8>, i64, Option<i64>), tokio_postgres::Error> {
            Ok((row.try_get(at)?, row.try_get(at + 1)?, row.try_get(at + 2)?))
        };
        let (value, version, expires_ms) = columns().map_err(|e| self.describe(&e))?;
        Ok(StateEntry {
            value: Bytes::from(value),
            etag: version.to_string(),
            expires_at: expires_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)),
        })
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn get(&self, key: &str) -> Result<Option<StateEntry>, StateError> {
        self.bounded(async {
            let client = self.client().await?;
            let statement = self.statement(&client, &self.sql.get).await?;
            let row = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(|e| self.describe(&e))?;
            row.map(|row| self.entry(&row, 0)).transpose()
        })
        .await
    }

    async fn bulk_get(&self, keys: &[String]) -> Result<Vec<Option<StateEntry>>, StateError> {
        self.bounded(async {
            let client = self.client().await?;
            let statement = self.statement(&client, &self.sql.bulk_get).await?;
            let rows = client
                .query(&statement, &[&keys])
                .await
                .map_err(|e| self.describe(&e))?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in &rows {
                let key: String = row.try_get(0).map_err(|e| self.describe(&e))?;
                found.insert(key, self.entry(row, 1)?);
            }
            Ok(keys.iter().map(|k| found.remove(k)).collect())
        })
        .await
    }

    async fn set(&self, request: SetRequest) -> Result<String, StateError> {
        self.bounded(async {
            let client = self.client().await?;
            let version = self.apply(&client, &Operation::Set(request)).await?;
            Ok(version.unwrap_or_default().to_string())
        })
        .await
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.bounded(async {
            let client = self.client().await?;
            self.apply(&client, &Operation::Delete(request))
                .await
                .map(drop)
        })
        .await
    }

    async fn transact(&self, operations: Vec<Operation>) -> Result<(), StateError> {
        self.bounded(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.describe(&e))?;
            for op in &operations {
                // Dropping the transaction on an error rolls it back.
                self.apply(&tx, op).await?;
            }
            tx.commit().await.map_err(|e| self.describe(&e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::is_identifier;

    #[test]
    fn table_names_must_be_plain_identifiers() {
        for good in ["state", "dapr_state", "s.state", "_t1"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "1t", "a;drop", "a b", "a.b.c", "\"q\"", "a-b"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
