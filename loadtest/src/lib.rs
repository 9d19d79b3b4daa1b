//! Outrigger's load generator, the engine of `outrigger load` and of the benchmark harness.
//!
//! Open loop sends at a fixed total rate and times each request from its *scheduled* send time,
//! so a stalled server shows up in the latency (wrk2's coordinated-omission correction); closed
//! loop sends each connection's next request as soon as the previous answer is read, to find
//! the maximum throughput. Both speak HTTP/1.1 or h2c, record latencies in HDR histograms and
//! report a [`LoadReport`].
//!
//! A request flows: [`run`] checks the [`LoadSpec`] and opens the connections, each connection
//! (`connection`) sends the prebuilt request (`target`) and records in its own tally (`tally`),
//! and the merged tallies become the [`LoadReport`] (`report`).
#![forbid(unsafe_code)]

pub mod cli;
mod connection;
mod progress;
mod report;
mod run;
mod spec;
mod tally;
mod target;

pub use report::{LoadReport, Percentiles};
pub use run::{run, LoadError};
pub use spec::{LoadSpec, Mode, Protocol};
