//! `state.in-memory`: the embedded default store, one map behind one lock in this process.
//! Like Dapr's, it is for development and tests: its data lives and dies with the sidecar.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::{DeleteRequest, Operation, SetRequest, StateEntry, StateError, StateStore, Ttl};

/// Writes between sweeps of expired items (reads skip expired items whenever they happen).
const SWEEP_EVERY: u32 = 1024;

pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    items: HashMap<String, Item>,
    /// The last version handed out; versions are never reused, even across keys.
    version: u64,
    writes_since_sweep: u32,
}

struct Item {
    value: Bytes,
    version: u64,
    expires_at: Option<SystemTime>,
}

impl Item {
    fn live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl MemoryStore {
    pub(crate) fn new() -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl Inner {
    fn current(&self, key: &str, now: SystemTime) -> Option<u64> {
        self.items
            .get(key)
            .filter(|item| item.live(now))
            .map(|item| item.version)
    }

    fn apply_set(&mut self, request: SetRequest, now: SystemTime) -> u64 {
        self.version += 1;
        let expires_at = match request.ttl {
            Ttl::Never => None,
            Ttl::After(d) => Some(now + d),
        };
        self.items.insert(
            request.key,
            Item {
                value: request.value,
                version: self.version,
                expires_at,
            },
        );
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= SWEEP_EVERY {
            self.writes_since_sweep = 0;
            self.items.retain(|_, item| item.live(now));
        }
        self.version
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<StateEntry>, StateError> {
        let now = SystemTime::now();
        let inner = self.inner.lock();
        Ok(inner
            .items
            .get(key)
            .filter(|item| item.live(now))
            .map(|item| StateEntry {
                value: item.value.clone(),
                etag: item.version.to_string(),
                expires_at: item.expires_at,
            }))
    }

    async fn set(&self, request: SetRequest) -> Result<String, StateError> {
        let now = SystemTime::now();
        let mut inner = self.inner.lock();
        let current = inner.current(&request.key, now);
        request.precondition.check(&request.key, current)?;
        Ok(inner.apply_set(request, now).to_string())
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        let now = SystemTime::now();
        let mut inner = self.inner.lock();
        let current = inner.current(&request.key, now);
        request.precondition.check(&request.key, current)?;
        inner.items.remove(&request.key);
        Ok(())
    }

    async fn transact(&self, operations: Vec<Operation>) -> Result<(), StateError> {
        let now = SystemTime::now();
        let mut inner = self.inner.lock();
        // Check every operation against the state the earlier ones leave behind, then apply:
        // nothing is written unless everything can be.
        let mut planned: HashMap<&str, Option<u64>> = HashMap::new();
        let mut next_version = inner.version;
        for op in &operations {
            let key = op.key();
            let current = match planned.get(key) {
                Some(v) => *v,
                None => inner.current(key, now),
            };
            op.precondition().check(key, current)?;
            let after = match op {
                Operation::Set(_) => {
                    next_version += 1;
                    Some(next_version)
                }
                Operation::Delete(_) => None,
            };
            planned.insert(key, after);
        }
        for op in operations {
            match op {
                Operation::Set(s) => {
                    inner.apply_set(s, now);
                }
                Operation::Delete(d) => {
                    inner.items.remove(&d.key);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Precondition;
    use std::time::Duration;

    fn set(key: &str, value: &str, precondition: Precondition) -> SetRequest {
        SetRequest {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            precondition,
            ttl: Ttl::Never,
        }
    }

    #[tokio::test]
    async fn versions_are_never_reused_across_delete_and_recreate() {
        let store = MemoryStore::new();
        let first = store.set(set("k", "1", Precondition::None)).await.unwrap();
        store
            .delete(DeleteRequest {
                key: "k".into(),
                precondition: Precondition::None,
            })
            .await
            .unwrap();
        let second = store.set(set("k", "2", Precondition::None)).await.unwrap();
        assert_ne!(first, second);
        let stale = Precondition::Version(first.parse().unwrap());
        assert!(matches!(
            store.set(set("k", "3", stale)).await,
            Err(StateError::EtagMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_transaction_leaves_nothing_behind() {
        let store = MemoryStore::new();
        store.set(set("a", "1", Precondition::None)).await.unwrap();
        let result = store
            .transact(vec![
                Operation::Set(set("b", "2", Precondition::None)),
                Operation::Set(set("a", "3", Precondition::Version(999))),
            ])
            .await;
        assert!(matches!(result, Err(StateError::EtagMismatch { key, .. }) if key == "a"));
        assert_eq!(store.get("b").await.unwrap(), None);
        assert_eq!(&store.get("a").await.unwrap().unwrap().value[..], b"1");
    }

    #[tokio::test]
    async fn expired_items_read_as_missing_and_can_be_first_written_again() {
        let store = MemoryStore::new();
        let mut request = set("k", "1", Precondition::Absent);
        request.ttl = Ttl::After(Duration::from_millis(20));
        store.set(request).await.unwrap();
        assert!(store.get("k").await.unwrap().unwrap().expires_at.is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(store.get("k").await.unwrap(), None);
        store
            .set(set("k", "2", Precondition::Absent))
            .await
            .unwrap();
    }
}
