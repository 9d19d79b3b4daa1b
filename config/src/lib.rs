//! Outrigger's configuration model and the loader that builds it.
//!
//! One immutable [`Snapshot`] describes everything a sidecar routes and serves: clusters of
//! endpoints, routes by target app id, policies, and the Dapr components and subscriptions.
//! It is loaded from a `--resources-path` directory of Dapr and mesh YAML ([`load_dir`]),
//! serialises to JSON (for `/config_dump` and, later, the control plane's wire), and is
//! swapped into a running proxy as one atomic value.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod dapr;
pub mod duration;
mod error;
mod loader;
pub mod mesh;
pub mod metadata;
pub mod redact;
mod route;
mod snapshot;
pub mod subscription;

pub use error::LoadError;
pub use loader::{load_dir, load_dir_unchecked, load_dir_with_sources, load_str, Sources};
pub use route::{HeaderMatch, HeaderRewrite, Route, RouteMatch, RouteRule, WeightedCluster};
pub use snapshot::{Cluster, Endpoint, HashOn, LoadBalancer, Policies, Snapshot, SnapshotError};
