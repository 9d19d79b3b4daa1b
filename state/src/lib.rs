//! The state building block's storage side: the [`StateStore`] trait and its three stores —
//! in-memory (the embedded default), Redis and PostgreSQL — each opened from a Dapr
//! `Component`. The HTTP (and later gRPC) API in the proxy speaks only to the trait.
//!
//! Every store keeps the same contract: an ETag is a decimal version number that no write in
//! the store ever reuses (so an ETag read before a delete and re-create never matches the new
//! item), checks and writes are atomic, and a transaction either applies every operation or
//! none.
#![forbid(unsafe_code)]

mod component;
mod memory;
mod postgres;
mod redis;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

pub use component::{open, KeyPrefix, OpenedStore, CAPABILITIES};

/// One stored item as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    pub value: Bytes,
    pub etag: String,
    /// When the item expires, if it was saved with `ttlInSeconds`.
    pub expires_at: Option<SystemTime>,
}

/// Dapr's `options.concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// Not given: an ETag, when present, must match; without one the write is unconditional.
    #[default]
    Unspecified,
    /// An ETag must match; without one the key must not exist yet.
    FirstWrite,
    /// The ETag is ignored; the write always wins.
    LastWrite,
}

impl Concurrency {
    /// `first-write`, `last-write`, or empty for unspecified.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "" => Ok(Concurrency::Unspecified),
            "first-write" => Ok(Concurrency::FirstWrite),
            "last-write" => Ok(Concurrency::LastWrite),
            other => Err(format!(
                "unknown concurrency {other:?}; expected \"first-write\" or \"last-write\""
            )),
        }
    }
}

/// What must hold about the stored item for a write or delete to go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: last-write, or no ETag and no first-write.
    None,
    /// The item exists with this version.
    Version(u64),
    /// The item does not exist (first-write without an ETag).
    Absent,
}

impl Precondition {
    /// The precondition Dapr's rules give an ETag and a concurrency mode. An ETag that is not
    /// one of this store's versions is refused here, before the store is asked.
    pub fn from_request(etag: Option<&str>, concurrency: Concurrency) -> Result<Self, StateError> {
        match (concurrency, etag) {
            (Concurrency::LastWrite, _) => Ok(Precondition::None),
            (_, Some(etag)) => parse_etag(etag).map(Precondition::Version),
            (Concurrency::FirstWrite, None) => Ok(Precondition::Absent),
            (Concurrency::Unspecified, None) => Ok(Precondition::None),
        }
    }

    /// Passes when it holds for `key`, whose stored version is `current` (`None`: absent).
    pub fn check(&self, key: &str, current: Option<u64>) -> Result<(), StateError> {
        let holds = match self {
            Precondition::None => true,
            Precondition::Version(v) => current == Some(*v),
            Precondition::Absent => current.is_none(),
        };
        if holds {
            Ok(())
        } else {
            Err(StateError::mismatch(key, self))
        }
    }
}

/// Every store's ETags are the decimal version numbers it hands out.
fn parse_etag(etag: &str) -> Result<u64, StateError> {
    let valid = !etag.is_empty() && etag.len() <= 20 && etag.bytes().all(|b| b.is_ascii_digit());
    valid
        .then(|| etag.parse().ok())
        .flatten()
        .ok_or_else(|| StateError::InvalidEtag {
            etag: etag.to_string(),
        })
}

/// How long a saved item lives: Dapr's `metadata.ttlInSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// No expiry (no `ttlInSeconds`, or `-1`). A save replaces any earlier expiry.
    #[default]
    Never,
    After(Duration),
}

impl Ttl {
    /// `ttlInSeconds`: a whole number of seconds, `-1` for none.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().parse::<i64>() {
            Ok(-1) => Ok(Ttl::Never),
            Ok(seconds) if seconds > 0 => Ok(Ttl::After(Duration::from_secs(seconds as u64))),
            _ => Err(format!(
                "metadata.ttlInSeconds {text:?} is not a whole number of seconds above 0 (or -1 for no expiry)"
            )),
        }
    }

    fn millis(self) -> u64 {
        match self {
            Ttl::Never => 0,
            Ttl::After(d) => d.as_millis().max(1) as u64,
        }
    }
}

/// A save of one key (already prefixed for the backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRequest {
    pub key: String,
    pub value: Bytes,
    pub precondition: Precondition,
    pub ttl: Ttl,
}

/// A delete of one key (already prefixed for the backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    pub key: String,
    pub precondition: Precondition,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Set(SetRequest),
    Delete(DeleteRequest),
}

impl Operation {
    pub fn key(&self) -> &str {
        match self {
            Operation::Set(s) => &s.key,
            Operation::Delete(d) => &d.key,
        }
    }

    pub fn precondition(&self) -> &Precondition {
        match self {
            Operation::Set(s) => &s.precondition,
            Operation::Delete(d) => &d.precondition,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The item's version is not the one the request named (or it exists when first-write
    /// required it not to, or it is gone).
    #[error("etag mismatch for key {key:?}: {detail}")]
    EtagMismatch { key: String, detail: String },
    #[error("invalid etag {etag:?}: this store's etags are decimal version numbers")]
    InvalidEtag { etag: String },
    /// The backend failed or could not be reached in time.
    #[error("{0}")]
    Backend(String),
}

impl StateError {
    fn backend(what: impl std::fmt::Display) -> Self {
        StateError::Backend(what.to_string())
    }

    fn mismatch(key: &str, precondition: &Precondition) -> Self {
        let detail = match precondition {
            Precondition::Version(v) => {
                format!("the stored item is not at version {v} (changed, deleted or never saved)")
            }
            Precondition::Absent => {
                "first-write without an etag, but the key already exists".to_string()
            }
            Precondition::None => "the write was refused".to_string(),
        };
        StateError::EtagMismatch {
            key: key.to_string(),
            detail,
        }
    }
}

/// A state store backend. Keys arrive already prefixed (`<appId>||<key>`); values are opaque
/// bytes. Implementations must make each call atomic and must never reuse a version.
#[async_trait]
pub trait StateStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<StateEntry>, StateError>;

    /// Reads many keys; the answer is in the order of `keys`.
    async fn bulk_get(&self, keys: &[String]) -> Result<Vec<Option<StateEntry>>, StateError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Saves one item and returns its new ETag.
    async fn set(&self, request: SetRequest) -> Result<String, StateError>;

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError>;

    /// Applies every operation in order, or none of them: the first failed precondition
    /// rolls the whole transaction back and is returned.
    async fn transact(&self, operations: Vec<Operation>) -> Result<(), StateError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_follow_daprs_concurrency_rules() {
        use Concurrency::*;
        assert_eq!(
            Precondition::from_request(None, FirstWrite).unwrap(),
            Precondition::Absent
        );
        assert_eq!(
            Precondition::from_request(Some("7"), FirstWrite).unwrap(),
            Precondition::Version(7)
        );
        assert_eq!(
            Precondition::from_request(Some("7"), Unspecified).unwrap(),
            Precondition::Version(7)
        );
        assert_eq!(
            Precondition::from_request(None, Unspecified).unwrap(),
            Precondition::None
        );
        assert_eq!(
            Precondition::from_request(Some("not-a-version"), LastWrite).unwrap(),
            Precondition::None
        );
        assert_eq!(
            Precondition::from_request(Some("x1"), FirstWrite),
            Err(StateError::InvalidEtag { etag: "x1".into() })
        );
        assert!(Precondition::from_request(Some(""), Unspecified).is_err());
        assert!(Precondition::from_request(Some("99999999999999999999999"), Unspecified).is_err());
    }

    #[test]
    fn ttl_accepts_positive_seconds_and_minus_one() {
        assert_eq!(Ttl::parse("5"), Ok(Ttl::After(Duration::from_secs(5))));
        assert_eq!(Ttl::parse("-1"), Ok(Ttl::Never));
        for bad in ["0", "-2", "1.5", "soon", ""] {
            assert!(Ttl::parse(bad).is_err(), "{bad}");
        }
    }
}
