//! A whole run: check the spec, resolve the target, open every connection up front, drive them
//! through warm-up and the measured period, and merge their tallies into a [`LoadReport`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::connection::{self, Link, Plan};
use crate::progress::Progress;
use crate::report::LoadReport;
use crate::spec::{LoadSpec, Mode};
use crate::tally::{Tally, Window};
use crate::target::Target;

/// Why a run could not start. Once connections are open, failures are counted in the report
/// rather than returned.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad URL {url:?}: {reason} (expected http://host[:port]/path)")]
    BadUrl { url: String, reason: String },
    #[error("https is not supported: {url:?} (use an http:// URL; HTTP/2 is spoken as h2c)")]
    HttpsUnsupported { url: String },
    #[error("bad header {header:?}: {reason} (expected \"Name: value\")")]
    BadHeader { header: String, reason: String },
    #[error("connections must be at least 1")]
    ZeroConnections,
    #[error("rate must be a positive number of requests per second, got {rate}")]
    BadRate { rate: f64 },
    #[error("duration must be longer than zero")]
    ZeroDuration,
    #[error("timeout must be longer than zero")]
    ZeroTimeout,
    #[error("cannot resolve host {host:?}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("all {connections} connection(s) to {addr} failed: {source} (is the target up?)")]
    Connect {
        addr: SocketAddr,
        connections: usize,
        #[source]
        source: io::Error,
    },
}

/// Runs the load `spec` describes on the current tokio runtime and reports the measured period.
///
/// Every connection is opened before the clock starts; if none can be, the run fails with
/// [`LoadError::Connect`]. Connections that fail later (or some of the first dials) are
/// redialled, and the failures counted as `connect` errors in the report.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    check(spec)?;
    let target = Arc::new(Target::resolve(spec).await?);
    let links = dial_all(&target, spec).await?;

    let window = Window::new(Instant::now(), spec.warmup, spec.duration);
    let finished = Progress::wanted(spec).then(|| Arc::new(AtomicU64::new(0)));
    let progress = finished
        .clone()
        .map(|finished| Progress::start(window, finished));
    let plan = Arc::new(Plan {
        target,
        protocol: spec.protocol,
        mode: spec.mode,
        connections: spec.connections,
        timeout: spec.timeout,
        window,
        finished,
    });
    let mut connections = JoinSet::new();
    for (index, link) in links.into_iter().enumerate() {
        connections.spawn(connection::drive(plan.clone(), index, link));
    }
    let mut tally = Tally::new();
    while let Some(joined) = connections.join_next().await {
        match joined {
            Ok(one) => tally.merge(&one),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => {}
        }
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    Ok(LoadReport::new(spec, &tally, window.measured()))
}

fn check(spec: &LoadSpec) -> Result<(), LoadError> {
    if spec.connections == 0 {
        return Err(LoadError::ZeroConnections);
    }
    if let Mode::OpenLoop { rate } = spec.mode {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LoadError::BadRate { rate });
        }
    }
    if spec.duration.is_zero() {
        return Err(LoadError::ZeroDuration);
    }
    if spec.timeout.is_zero() {
        return Err(LoadError::ZeroTimeout);
    }
    Ok(())
}

/// Opens all connections at once, so the warm-up starts with them open and a dead target fails
/// fast. A connection whose dial failed starts without a link and redials as it goes.
async fn dial_all(target: &Arc<Target>, spec: &LoadSpec) -> Result<Vec<Option<Link>>, LoadError> {
    let mut dials = JoinSet::new();
    for index in 0..spec.connections {
        let target = target.clone();
        let (protocol, limit) = (spec.protocol, spec.timeout);
        dials.spawn(async move { (index, Link::dial(&target, protocol, limit).await) });
    }
    let mut links: Vec<Option<Link>> = (0..spec.connections).map(|_| None).collect();
    let mut first_error = None;
    while let Some(joined) = dials.join_next().await {
        match joined {
            Ok((index, Ok(link))) => links[index] = Some(link),
            Ok((_, Err(error))) => {
                first_error.get_or_insert(error);
            }
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => {}
        }
    }
    if links.iter().all(Option::is_none) {
        return Err(LoadError::Connect {
            addr: target.addr,
            connections: spec.connections,
            source: first_error.unwrap_or_else(|| io::Error::other("dial cancelled")),
        });
    }
    Ok(links)
}
