//! The lean HTTP/1.1 engine: the invocation fast path, on tokio, httparse and `bytes`.
//!
//! - [`framing`]: body lengths and the chunked coding (the strict, exhaustively tested part);
//! - [`head`]: request and response heads, parsed into reusable buffers and written back out;
//! - [`server`]: one client connection — the request loop, pipelining, the header deadline and
//!   keep-alive idle timeout on one resettable timer;
//! - [`client`]: one upstream connection;
//! - [`proxy`]: one exchange forwarded from a server connection to a client connection,
//!   streaming both bodies.
//!
//! Nothing here allocates per request in the common case: each connection owns its read and
//! write buffers and its parsed head, and reuses them for every exchange.

pub(crate) mod client;
pub(crate) mod framing;
pub(crate) mod head;
pub(crate) mod proxy;
pub(crate) mod server;

/// How much is read from a socket at a time.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
