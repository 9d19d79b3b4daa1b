//! `outrigger bench`: runs the same HTTP load against a direct call, Outrigger (one and two
//! hops) and peer proxies people run today (nginx, haproxy — two hops each), in one run on one
//! machine, alternating scenarios and taking medians, and writes a markdown report, raw JSON and
//! SVG plots. Ratios between scenarios of the same run are what carry over to other machines.
#![forbid(unsafe_code)]

pub mod cli;
mod convergence;
mod peers;
mod plot;
mod procs;
mod pubsub;
mod report;
mod resilience;
mod runner;
mod scenario;
mod state_get;
mod upstream;
