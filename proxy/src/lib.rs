//! Outrigger's data plane: one sidecar process beside each app.
//!
//! Three listeners ([`listeners`]) on one shared bundle ([`Shared`]):
//! - the Dapr HTTP API (default 127.0.0.1:3500) where the app calls by app id;
//! - the mesh listener (default :15008) where other sidecars deliver calls for this app;
//! - the admin listener (default 127.0.0.1:15000): readiness, metrics, config dump.
//!
//! HTTP/1.1 runs on the crate's own lean engine ([`http1`]); HTTP/2 on hyper. The building
//! blocks ([`blocks`]) are transport-neutral; the upstream side ([`upstream`]) keeps
//! per-endpoint state across configuration swaps. [`run`] binds and serves.
#![forbid(unsafe_code)]

mod active;
mod answer;
#[doc(hidden)]
pub mod bench_support;
mod blocks;
mod components;
mod control_client;
mod discovery;
mod drain;
#[doc(hidden)]
pub mod fuzz_support;
mod http1;
pub mod identity;
mod launch;
mod listeners;
mod mesh_identity;
mod metrics;
mod options;
mod routing;
mod serve;
mod shared;
mod stream;
mod subscriptions;
mod upstream;

pub use discovery::{default_registry_dir, RegistryEntry};
pub use launch::{launch, LaunchError};
pub use options::{AppProtocol, MovablePorts, MtlsOptions, Protocol, SidecarOptions};
pub use serve::{run, BoundListeners};
pub use shared::{ProxyError, Shared};
