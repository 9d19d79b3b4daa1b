//! One client connection on the server side: requests read in order (pipelined ones
//! included), each answered before the next is parsed, under a header deadline and a
//! keep-alive idle timeout that share one lazily reset timer.
//!
//! The timer is armed once and only pushed later when it fires early: a request does not
//! cancel and re-arm a timer, it records when the connection was last active.

use std::pin::Pin;
use std::time::Duration;

use crate::stream::Stream;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::framing::{BodyDecoder, BodyLength, Decoded, FramingError};
use super::head::{self, HeadError, Parsed, RequestHead};
use super::READ_CHUNK;
use crate::answer::Answer;

/// Per-listener limits on a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// A request head must arrive whole within this time of its first byte (and a new
    /// connection must send one within this time).
    pub(crate) header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_bytes: usize,
}

/// Request bodies larger than the limit a local API reads are still read and dropped up to
/// this size, so the client (which is usually still sending) gets the 413 on a connection that
/// stays usable; beyond it the connection is closed.
pub(crate) const DISCARD_LIMIT: u64 = 64 * 1024 * 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a new connection speaks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Detected {
    Http1,
    Http2,
    /// Closed, or silent past the header deadline.
    Closed,
}

/// Why the next request could not be read.
#[derive(Debug)]
pub(crate) enum NextRequest {
    /// A request head is parsed into `conn.head`.
    Ready,
    /// The client closed, or went quiet between requests: close without a word.
    Closed,
    /// Half a head arrived and then nothing within the header deadline (408).
    HeaderTimeout,
    /// The head is malformed or too large (4xx and close).
    Bad(HeadError),
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body is larger than the {limit}-byte limit (--max-body-size)")]
    TooLarge { limit: usize, keep_alive: bool },
    #[error("reading the request body: {0}")]
    Framing(#[from] FramingError),
    #[error("the client closed the connection in the middle of the request body")]
    Eof,
    #[error("reading the request body: {0}")]
    Io(#[from] std::io::Error),
    #[error("no request body bytes arrived within {0:?}")]
    Timeout(Duration),
}

// === impl ConnTimer ===

/// One timer per connection. `want` is the deadline in force; the sleep may be armed earlier
/// than that (it is then pushed when it fires) but never later.
pub(crate) struct ConnTimer {
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    want: Instant,
}

impl ConnTimer {
    fn new(deadline: Instant) -> ConnTimer {
        ConnTimer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: deadline,
            want: deadline,
        }
    }

    /// Makes `deadline` the one in force. Only an earlier deadline touches the timer wheel.
    pub(crate) fn set(&mut self, deadline: Instant) {
        self.want = deadline;
        if deadline < self.armed {
            self.armed = deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Resolves when the deadline in force has passed.
    pub(crate) async fn expired(&mut self) {
        loop {
            (&mut self.sleep).await;
            if Instant::now() >= self.want {
                return;
            }
            self.armed = self.want;
            self.sleep.as_mut().reset(self.want);
        }
    }
}

// === impl ServerConn ===

pub(crate) struct ServerConn {
    pub(crate) stream: Stream,
    pub(crate) rbuf: BytesMut,
    pub(crate) wbuf: Vec<u8>,
    pub(crate) head: RequestHead,
    /// What is left of the current request's body.
    pub(crate) body: BodyDecoder,
    /// The request as it goes to the upstream: head and the body bytes already read.
    pub(crate) fwd: Vec<u8>,
    /// The connection stays open after the current exchange.
    pub(crate) keep_alive: bool,
    /// The current exchange's response head has been written: an error can no longer be
    /// answered, only signalled by closing.
    pub(crate) responded: bool,
    continue_sent: bool,
    served: u64,
    pub(crate) timer: ConnTimer,
    pub(crate) limits: ConnLimits,
    /// The identity the client proved (mTLS on the mesh port).
    pub(crate) peer_id: Option<std::sync::Arc<crate::identity::SpiffeId>>,
}

impl ServerConn {
    /// A connection whose first bytes (read while detecting the protocol) are in `rbuf`.
    pub(crate) fn new(
        stream: Stream,
        rbuf: BytesMut,
        limits: ConnLimits,
        accepted: Instant,
    ) -> ServerConn {
        ServerConn {
            stream,
            rbuf,
            wbuf: Vec::with_capacity(4096),
            head: RequestHead::default(),
            body: BodyDecoder::Done,
            fwd: Vec::with_capacity(4096),
            keep_alive: true,
            responded: false,
            continue_sent: false,
            served: 0,
            timer: ConnTimer::new(accepted + limits.header_timeout),
            limits,
            peer_id: None,
        }
    }

    /// Reads the first bytes of a new connection to tell HTTP/2 (its preface) from HTTP/1.1,
    /// under the header deadline; the bytes stay in the read buffer.
    pub(crate) async fn detect(&mut self) -> Detected {
        loop {
            let seen = self.rbuf.len().min(H2_PREFACE.len());
            if self.rbuf[..seen] != H2_PREFACE[..seen] {
                return Detected::Http1;
            }
            if seen == H2_PREFACE.len() {
                return Detected::Http2;
            }
            self.rbuf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.rbuf) => read,
                () = self.timer.expired() => return Detected::Closed,
            };
            if !matches!(read, Ok(n) if n > 0) {
                return Detected::Closed;
            }
        }
    }

    /// The socket and what was read from it, for a protocol served elsewhere.
    pub(crate) fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// Reads and parses the next request head. Bytes after it (the body, or further pipelined
    /// requests) stay in the read buffer.
    pub(crate) async fn next_request(&mut self) -> NextRequest {
        self.responded = false;
        self.continue_sent = false;
        if self.served > 0 {
            self.timer.set(Instant::now() + self.limits.idle_timeout);
        }
        let mut scanned = 0;
        let mut started = !self.rbuf.is_empty();
        if started {
            self.timer.set(Instant::now() + self.limits.header_timeout);
        }
        loop {
            if self.rbuf.len() > scanned
                && may_hold_a_head(&self.rbuf, scanned, self.limits.max_header_bytes)
            {
                match self.head.parse(&self.rbuf, self.limits.max_header_bytes) {
                    Ok(Parsed::Complete(len)) => {
                        self.rbuf.advance(len);
                        self.body = BodyDecoder::new(self.head.body);
                        self.keep_alive = self.head.keep_alive && !self.head.upgrade;
                        self.served += 1;
                        return NextRequest::Ready;
                    }
                    Ok(Parsed::Partial) => {}
                    Err(e) => return NextRequest::Bad(e),
                }
            }
            scanned = self.rbuf.len();
            self.rbuf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.rbuf) => read,
                () = self.timer.expired() => {
                    return if self.rbuf.is_empty() { NextRequest::Closed } else { NextRequest::HeaderTimeout };
                }
            };
            match read {
                Ok(0) | Err(_) => return NextRequest::Closed,
                Ok(_) if !started => {
                    started = true;
                    self.timer.set(Instant::now() + self.limits.header_timeout);
                }
                Ok(_) => {}
            }
        }
    }

    /// Reads more bytes into the read buffer for the body, under the idle timeout.
    async fn fill(&mut self) -> Result<(), BodyError> {
        self.timer.set(Instant::now() + self.limits.idle_timeout);
        self.rbuf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            read = self.stream.read_buf(&mut self.rbuf) => match read? {
                0 => Err(BodyError::Eof),
                _ => Ok(()),
            },
            () = self.timer.expired() => Err(BodyError::Timeout(self.limits.idle_timeout)),
        }
    }

    /// Resolves when the client has closed (or broken) the connection; never while it is
    /// there, including when its next pipelined request has already arrived.
    pub(crate) async fn client_gone(&mut self) {
        if !self.rbuf.is_empty() {
            return std::future::pending().await;
        }
        self.stream.peer_gone(&mut self.rbuf).await
    }

    /// Sends `100 Continue` if the client asked for it and is waiting to send a body.
    pub(crate) async fn continue_if_expected(&mut self) -> std::io::Result<()> {
        if self.head.expect_continue && !self.continue_sent && !self.body.is_done() {
            self.continue_sent = true;
            self.stream
                .write_all_flushed(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        Ok(())
    }

    /// Reads the whole request body, of at most `limit` bytes.
    pub(crate) async fn read_body(&mut self, limit: usize) -> Result<Bytes, BodyError> {
        if let BodyDecoder::Length(n) = self.body {
            if n > DISCARD_LIMIT {
                self.keep_alive = false;
                return Err(BodyError::TooLarge {
                    limit,
                    keep_alive: false,
                });
            }
        }
        self.continue_if_expected().await?;
        let mut body = BytesMut::new();
        let mut seen: u64 = 0;
        let result = self
            .take_body(|data| {
                seen += data.len() as u64;
                if seen <= limit as u64 {
                    body.extend_from_slice(data);
                }
                seen <= DISCARD_LIMIT
            })
            .await;
        match result {
            Ok(true) if seen <= limit as u64 => Ok(body.freeze()),
            Ok(true) => Err(BodyError::TooLarge {
                limit,
                keep_alive: true,
            }),
            Ok(false) => {
                self.keep_alive = false;
                Err(BodyError::TooLarge {
                    limit,
                    keep_alive: false,
                })
            }
            Err(e) => {
                self.keep_alive = false;
                Err(e)
            }
        }
    }

    /// Reads the rest of the request body and drops it, so the connection can carry the next
    /// request; false (close the connection) if it is larger than `limit`, malformed, or
    /// does not arrive.
    pub(crate) async fn discard_body(&mut self, limit: u64) -> bool {
        if let BodyDecoder::Length(n) = self.body {
            if n > limit {
                return false;
            }
        }
        if self.head.expect_continue && !self.continue_sent {
            // The client has not sent the body and will not without a 100; the final answer
            // already went out, so it knows not to.
            return false;
        }
        let mut seen = 0u64;
        matches!(
            self.take_body(|data| {
                seen += data.len() as u64;
                seen <= limit
            })
            .await,
            Ok(true)
        )
    }

    /// Feeds the rest of the body, piece by piece, to `each` (which returns false to stop).
    /// Returns whether the whole body was taken.
    async fn take_body(&mut self, mut each: impl FnMut(&[u8]) -> bool) -> Result<bool, BodyError> {
        loop {
            match self.body.next(&mut self.rbuf)? {
                Decoded::Data(n) => {
                    let keep_going = each(&self.rbuf[..n]);
                    self.rbuf.advance(n);
                    if !keep_going {
                        return Ok(false);
                    }
                }
                Decoded::NeedMore => self.fill().await?,
                Decoded::End => return Ok(true),
            }
        }
    }

    /// The next piece of the request body, or `None` at its end (for bodies handed on as
    /// frames, to an HTTP/2 upstream).
    pub(crate) async fn next_body_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        self.continue_if_expected().await?;
        loop {
            match self.body.next(&mut self.rbuf)? {
                Decoded::Data(n) => return Ok(Some(self.rbuf.split_to(n).freeze())),
                Decoded::NeedMore => self.fill().await?,
                Decoded::End => return Ok(None),
            }
        }
    }

    /// What the response to the current request says about the connection.
    pub(crate) fn persistence(&self) -> head::Persistence {
        head::Persistence::of(self.keep_alive, self.head.http10)
    }

    /// Writes `answer` as the whole response.
    pub(crate) async fn answer(&mut self, answer: &Answer) -> std::io::Result<()> {
        if answer.close {
            self.keep_alive = false;
        }
        self.wbuf.clear();
        head::put_status_line(&mut self.wbuf, answer.status, b"");
        for (name, value) in &answer.headers {
            head::put_header(&mut self.wbuf, name.as_bytes(), value.as_bytes());
        }
        let persistence = self.persistence();
        self.wbuf.extend_from_slice(persistence.header());
        if answer.status != 204 && answer.status != 304 {
            head::put_framing(&mut self.wbuf, BodyLength::Length(answer.body.len() as u64));
        }
        self.wbuf.extend_from_slice(b"\r\n");
        let send_body = self.head.method != http::Method::HEAD && !answer.body.is_empty();
        self.responded = true;
        let idle = self.limits.idle_timeout;
        if send_body && answer.body.len() <= 64 * 1024 {
            self.wbuf.extend_from_slice(&answer.body);
            write_to_client(&mut self.stream, &self.wbuf, &mut self.timer, idle).await
        } else {
            write_to_client(&mut self.stream, &self.wbuf, &mut self.timer, idle).await?;
            if send_body {
                write_to_client(&mut self.stream, &answer.body, &mut self.timer, idle).await?;
            }
            Ok(())
        }
    }

    /// Ends the connection so that the client reads everything written: the write side is
    /// shut, then whatever the client still sends is read and dropped for a moment (closing
    /// with unread bytes would make the kernel reset the connection and lose the response).
    pub(crate) async fn linger_close(mut self) {
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left: usize = 1 << 20;
        let deadline = Instant::now() + Duration::from_secs(2);
        while left > 0 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    }
}

/// Writes all of `bytes` to the client. The socket usually takes them at once and no timer is
/// touched; a client that takes nothing for the idle timeout (a reader that never reads) is
/// given up on.
pub(crate) async fn write_to_client(
    stream: &mut Stream,
    bytes: &[u8],
    timer: &mut ConnTimer,
    idle: Duration,
) -> std::io::Result<()> {
    let stream = match stream {
        Stream::Tcp(stream) => stream,
        Stream::Tls(stream) => {
            // TLS takes the bytes into its own buffer: bound the whole write instead.
            timer.set(Instant::now() + idle);
            let write = async {
                stream.write_all(bytes).await?;
                stream.flush().await
            };
            return tokio::select! {
                biased;
                written = write => written,
                () = timer.expired() => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client took nothing for {}", outrigger_config::duration::format(&idle)),
                )),
            };
        }
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        match stream.try_write(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                timer.set(Instant::now() + idle);
                tokio::select! {
                    biased;
                    ready = stream.writable() => ready?,
                    () = timer.expired() => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the client took nothing for {}", outrigger_config::duration::format(&idle)),
                        ))
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the bytes after `scanned` could complete a head: they hold the end of a blank line,
/// or the buffer reached the limit (to report it). The first bytes are always parsed, so
/// garbage is refused at once; later, a head trickling in byte by byte is not re-parsed for
/// every byte.
fn may_hold_a_head(buf: &[u8], scanned: usize, max: usize) -> bool {
    if scanned == 0 || buf.len() >= max {
        return true;
    }
    let from = scanned.saturating_sub(3);
    buf[from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_only_when_a_blank_line_may_have_arrived() {
        let partial = b"GET / HTTP/1.1\r\nHost: h\r\n";
        assert!(may_hold_a_head(partial, 0, 1000));
        assert!(!may_hold_a_head(b"GET / HTTP/1.1\r\nHost: h", 10, 1000));
        let mut done = partial.to_vec();
        done.extend_from_slice(b"\r\n");
        assert!(may_hold_a_head(&done, partial.len(), 1000));
        assert!(may_hold_a_head(b"GET / HTTP/1.1\n\n", 15, 1000));
        assert!(may_hold_a_head(&[b'a'; 20], 10, 20));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_at_the_latest_deadline_set() {
        let start = Instant::now();
        let mut timer = ConnTimer::new(start + Duration::from_secs(10));
        timer.set(start + Duration::from_secs(25));
        timer.expired().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(25));
        timer.set(Instant::now() + Duration::from_secs(1));
        timer.expired().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(26));
    }
}
