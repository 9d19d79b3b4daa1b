//! The upstream side: the endpoints a request can go to, with per-endpoint state that outlives
//! configuration swaps ([`endpoint`]), how one is picked ([`balance`]), the connections to them
//! ([`pool`] for HTTP/1.1, [`h2`] for HTTP/2), and forwarding a request with an outcome
//! reported after every attempt ([`forward`]); whole requests the sidecar makes itself ([`call`]);
//! retry schedules from Dapr `Resiliency` policies ([`retry`]).

pub(crate) mod balance;
pub(crate) mod breaker;
pub(crate) mod call;
pub(crate) mod endpoint;
pub(crate) mod forward;
pub(crate) mod h2;
pub(crate) mod pool;
pub(crate) mod retry;

pub(crate) use balance::EndpointSet;
pub(crate) use endpoint::Endpoints;
pub use forward::Protocol;
pub(crate) use forward::{from_h1, from_h2, ClientFault, Failure, Target, UpstreamError};
pub(crate) use h2::Body;
