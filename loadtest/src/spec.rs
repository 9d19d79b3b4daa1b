//! What a load run is asked to do: the target URL and request, the protocol, how many
//! connections, open or closed loop, and the warm-up, measured and per-request durations.
//! Plain data; [`crate::run`] checks it and reports what is wrong as a [`crate::LoadError`].

use std::time::Duration;

use bytes::Bytes;
use http::Method;

/// The HTTP version spoken on every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    Http1,
    /// HTTP/2 with prior knowledge (h2c) for `http://` URLs.
    Http2,
}

impl Protocol {
    /// The name used in reports: `http1` or `http2`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// open loop: `rate` requests/second in total, spread evenly over the connections; latency is
    /// measured from each request's *scheduled* send time (wrk2-style coordinated-omission correction)
    ///
    /// Delays that are the generator's own (tokio's timer rounds sleeps up to the next
    /// millisecond) are taken off, so the latency is what the target made the request wait.
    OpenLoop { rate: f64 },
    /// closed loop: every connection sends its next request as soon as the previous answer is read
    ClosedLoop,
}

impl Mode {
    /// The name used in reports: `open-loop` or `closed-loop`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::OpenLoop { .. } => "open-loop",
            Mode::ClosedLoop => "closed-loop",
        }
    }

    /// The total request rate asked for, if any.
    pub fn target_rate(self) -> Option<f64> {
        match self {
            Mode::OpenLoop { rate } => Some(rate),
            Mode::ClosedLoop => None,
        }
    }
}

/// One load run: what to send, where, how hard and for how long.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `http://host:port/path?query` (plain http only; `https` is refused).
    pub url: String,
    pub method: Method,
    /// Extra request headers, sent as given (a `host` header here replaces the URL's).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub protocol: Protocol,
    /// At least 1.
    pub connections: usize,
    pub mode: Mode,
    /// Requests in this first period are sent but not recorded.
    pub warmup: Duration,
    /// The measured period after warm-up.
    pub duration: Duration,
    /// Per request, from its send (not its schedule) to the last body byte.
    pub timeout: Duration,
    /// Draw a progress bar on stderr (only if stderr is a terminal and `duration >= 5s`).
    pub progress: bool,
}

impl LoadSpec {
    /// GET `url`, no headers or body, HTTP/1.1, one connection, closed loop, no warm-up,
    /// 10 s measured, 10 s timeout, no progress bar.
    pub fn get(url: impl Into<String>) -> Self {
        LoadSpec {
            url: url.into(),
            method: Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            protocol: Protocol::Http1,
            connections: 1,
            mode: Mode::ClosedLoop,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            progress: false,
        }
    }
}
