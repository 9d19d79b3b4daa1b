//! Outrigger's data plane: one sidecar process beside each app.
//!
//! Three listeners, each a pingora service on the same tokio runtime:
//! - the Dapr HTTP API ([`dapr_http`], default 127.0.0.1:3500) where the app calls by app id;
//! - the mesh listener ([`mesh_inbound`], default :15008) where other sidecars deliver calls
//!   for this app, over HTTP/2;
//! - the admin listener ([`admin`], default 127.0.0.1:15000): readiness, metrics, config dump.
//!
//! [`Sidecar`] holds what every request reads: the active configuration (one `ArcSwap`),
//! endpoint discovery, metrics and the drain counter. [`run`] binds and serves it.
#![forbid(unsafe_code)]

pub mod admin;
mod balance;
#[doc(hidden)]
pub mod bench_support;
mod components;
mod control_client;
pub mod dapr_http;
mod discovery;
mod drain;
mod errors;
mod header_guard;
mod launch;
pub mod mesh_inbound;
mod metrics;
mod options;
mod routing;
mod sidecar;
mod transport;

pub use discovery::{default_registry_dir, RegistryEntry};
pub use launch::{launch, LaunchError};
pub use options::{AppProtocol, MovablePorts, SidecarOptions};
pub use sidecar::{run, BoundListeners, ProxyError, Sidecar};
