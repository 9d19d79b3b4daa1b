//! One exchange forwarded from a client connection ([`ServerConn`]) to an upstream connection
//! ([`ClientConn`]): the rewritten request head, the request body streamed while the response
//! head is awaited (so `100 Continue` and early answers work), then the response head and body
//! streamed back. Both bodies are re-framed on the way: a chunked body is decoded and encoded
//! again, so exactly one terminating chunk ever reaches the next hop.
//!
//! In the common case — a small request and a small answer — this is one read from the
//! client, one write to the upstream, one read from it and one write back.

use std::time::Duration;

use crate::stream::{ReadHalf, WriteHalf};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{ClientConn, MAX_RESPONSE_HEAD};
use super::framing::{put_body, BodyDecoder, BodyLength, Decoded, FramingError, LAST_CHUNK};
use super::head::{self, HeaderEdits, Parsed, Persistence, ResponseHead, ResponseHeadError};
use super::server::{write_to_client, BodyError, ConnTimer, ServerConn};
use super::READ_CHUNK;

/// Interim (1xx) responses relayed before the final one; more is an upstream gone wrong.
const MAX_INTERIM: usize = 32;
/// Bodies of at most this size are copied next to their head and sent in one write.
const COALESCE_LIMIT: usize = 64 * 1024;
/// A body being copied is written on when this much is waiting.
const FLUSH_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The upstream connection failed before a whole response head arrived.
    #[error("{0}")]
    Upstream(std::io::Error),
    #[error("the connection was closed before a response arrived")]
    UpstreamClosed,
    #[error("the connection closed in the middle of the response head")]
    TruncatedResponseHead,
    #[error(transparent)]
    BadResponse(#[from] ResponseHeadError),
    #[error("101 Switching Protocols in answer to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("more than {MAX_INTERIM} interim (1xx) responses")]
    TooManyInterim,
    /// The client closed its connection while the answer was awaited.
    #[error("the client went away before the answer came")]
    ClientGone,
    /// The client's request body was malformed, too slow, or cut short.
    #[error(transparent)]
    RequestBody(#[from] BodyError),
    /// Writing to the client failed: it went away.
    #[error("writing to the client: {0}")]
    Downstream(std::io::Error),
    /// The upstream failed in the middle of the response body, after its head was sent.
    #[error("the upstream broke off the response body: {0}")]
    AfterResponse(String),
    /// The answer's status is one a retry policy retries: nothing of it went to the client,
    /// and the upstream connection is spent.
    #[error("answered {0}")]
    Held(u16),
}

impl ForwardError {
    /// Whether the same request may be sent again on a fresh connection: the upstream failed
    /// before answering anything (the caller also checks the request was whole in memory).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            ForwardError::Upstream(_) | ForwardError::UpstreamClosed
        )
    }
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarded {
    pub(crate) status: u16,
    /// The upstream connection may carry another exchange.
    pub(crate) reusable: bool,
}

/// Writes the request for the upstream into `down.fwd`: the head, then whatever of the body is
/// already read (re-chunked if chunked). Returns whether the whole request is now in
/// `down.fwd`, which makes it safe to send again on another connection.
pub(crate) fn prepare(
    down: &mut ServerConn,
    edits: &HeaderEdits<'_>,
) -> Result<bool, FramingError> {
    down.fwd.clear();
    let framing = down.head.body;
    head::write_request_head(&mut down.fwd, &down.head, edits, framing);
    loop {
        match down.body.next(&mut down.rbuf)? {
            Decoded::Data(n) => {
                put_body(&mut down.fwd, &down.rbuf[..n], framing);
                down.rbuf.advance(n);
                if down.fwd.len() > COALESCE_LIMIT {
                    break;
                }
            }
            Decoded::NeedMore => break,
            Decoded::End => {
                if framing == BodyLength::Chunked {
                    down.fwd.extend_from_slice(LAST_CHUNK);
                }
                break;
            }
        }
    }
    Ok(down.body.is_done())
}

/// Sends the prepared request (`down.fwd`), streams the rest of the request body, and
/// forwards the answer to the client. `head_timeout` bounds the wait for the response head.
/// While the answer is awaited the client is watched: if it goes away, so does the exchange
/// (and its upstream connection), rather than holding both until the upstream answers.
pub(crate) async fn exchange(
    down: &mut ServerConn,
    up: &mut ClientConn,
    head_timeout: Option<Duration>,
    hold: Option<&(dyn Fn(u16) -> bool + Sync)>,
) -> Result<Forwarded, ForwardError> {
    up.reused = true;
    let request_was_head = down.head.method == http::Method::HEAD;
    let client_http10 = down.head.http10;
    let framing = down.head.body;
    {
        let idle = down.limits.idle_timeout;
        let (fwd, body, rbuf, timer) = (&down.fwd, &mut down.body, &mut down.rbuf, &mut down.timer);
        let (mut down_r, mut down_w) = down.stream.split();
        let (up_rbuf, up_wbuf, up_head) = (&mut up.rbuf, &mut up.wbuf, &mut up.head);
        let (mut up_r, mut up_w) = up.stream.split();
        let send_then_head = async {
            up_w.write_all(fwd).await.map_err(ForwardError::Upstream)?;
            up_w.flush().await.map_err(ForwardError::Upstream)?;
            let interim = (!client_http10).then_some(&mut down_w);
            let head = read_response_head(&mut up_r, up_rbuf, up_head, request_was_head, interim);
            tokio::pin!(head);
            if !body.is_done() {
                let source = BodySource {
                    reader: &mut down_r,
                    rbuf: &mut *rbuf,
                    timer: &mut *timer,
                    idle,
                };
                let copy = copy_request_body(source, &mut up_w, up_wbuf, body, framing);
                tokio::pin!(copy);
                tokio::select! {
                    biased;
                    // The upstream answered before taking the whole body.
                    result = &mut head => return result,
                    result = &mut copy => match result {
                        Ok(()) => {}
                        Err(CopyError::Client(e)) => return Err(ForwardError::RequestBody(e)),
                        // The upstream stopped reading: it may still answer (say, 413).
                        Err(CopyError::Upstream(e)) => {
                            tracing::debug!(error = %e, "the upstream stopped taking the request body");
                        }
                    },
                }
            }
            // Bytes already read past this request are the client's next one: it is there.
            let pipelined = !rbuf.is_empty();
            tokio::select! {
                biased;
                result = &mut head => result,
                () = client_gone(&mut down_r, rbuf), if !pipelined => Err(ForwardError::ClientGone),
            }
        };
        match head_timeout {
            Some(limit) => tokio::time::timeout(limit, send_then_head)
                .await
                .map_err(|_| ForwardError::Timeout(limit))??,
            None => send_then_head.await?,
        }
    }
    let body_done = down.body.is_done();
    if !body_done {
        // The upstream answered before taking the whole body; the rest is never read, so
        // neither connection can carry another exchange.
        down.keep_alive = false;
    }
    if up.head.is_switching_protocols() {
        if !down.head.upgrade {
            return Err(ForwardError::UnaskedUpgrade);
        }
        return tunnel(down, up).await;
    }
    let status = up.head.status;
    if hold.is_some_and(|hold| hold(status)) {
        return Err(ForwardError::Held(status));
    }
    let response_body = up.head.body;
    let out = match response_body {
        BodyLength::Chunked | BodyLength::CloseDelimited if client_http10 => {
            // An HTTP/1.0 client knows no chunks: the body ends with the connection.
            down.keep_alive = false;
            BodyLength::CloseDelimited
        }
        BodyLength::Chunked | BodyLength::CloseDelimited => BodyLength::Chunked,
        other => other,
    };
    down.wbuf.clear();
    let pass_length = request_was_head || status == 304;
    let persistence = down.persistence();
    head::write_response_head(&mut down.wbuf, &up.head, out, persistence, pass_length);
    send_response_body(down, up, response_body, out).await?;
    let reusable = body_done
        && up.head.keep_alive
        && response_body != BodyLength::CloseDelimited
        && up.rbuf.is_empty();
    Ok(Forwarded { status, reusable })
}

/// Resolves when the client has closed (or broken) its connection; never, if it is still
/// there — including when it has already sent its next pipelined request.
async fn client_gone(reader: &mut ReadHalf<'_>, rbuf: &mut BytesMut) {
    reader.peer_gone(rbuf).await
}

pub(crate) enum CopyError {
    Client(BodyError),
    Upstream(std::io::Error),
}

/// The client side of a body being copied: its socket, read buffer and idle timer.
pub(crate) struct BodySource<'a, 'r> {
    pub(crate) reader: &'a mut ReadHalf<'r>,
    pub(crate) rbuf: &'a mut BytesMut,
    pub(crate) timer: &'a mut ConnTimer,
    pub(crate) idle: Duration,
}

impl BodySource<'_, '_> {
    /// Reads more of the body, under the idle timeout.
    async fn fill(&mut self) -> Result<(), BodyError> {
        self.timer.set(tokio::time::Instant::now() + self.idle);
        self.rbuf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            read = self.reader.read_buf(self.rbuf) => match read? {
                0 => Err(BodyError::Eof),
                _ => Ok(()),
            },
            () = self.timer.expired() => Err(BodyError::Timeout(self.idle)),
        }
    }
}

/// Copies the rest of the request body from the client to the upstream, framed as `framing`
/// (a chunked body is decoded and encoded again).
async fn copy_request_body(
    mut source: BodySource<'_, '_>,
    up_w: &mut WriteHalf<'_>,
    wbuf: &mut Vec<u8>,
    body: &mut BodyDecoder,
    framing: BodyLength,
) -> Result<(), CopyError> {
    loop {
        wbuf.clear();
        let next = loop {
            match body
                .next(source.rbuf)
                .map_err(|e| CopyError::Client(e.into()))?
            {
                Decoded::Data(n) => {
                    put_body(wbuf, &source.rbuf[..n], framing);
                    source.rbuf.advance(n);
                    if wbuf.len() >= FLUSH_LIMIT {
                        break Step::Flush;
                    }
                }
                Decoded::NeedMore => break Step::Read,
                Decoded::End => {
                    if framing == BodyLength::Chunked {
                        wbuf.extend_from_slice(LAST_CHUNK);
                    }
                    break Step::End;
                }
            }
        };
        if !wbuf.is_empty() {
            up_w.write_all(wbuf).await.map_err(CopyError::Upstream)?;
            up_w.flush().await.map_err(CopyError::Upstream)?;
        }
        match next {
            Step::End => return Ok(()),
            Step::Read => source.fill().await.map_err(CopyError::Client)?,
            Step::Flush => {}
        }
    }
}

/// Why copying a body paused.
enum Step {
    /// The write buffer is full: send it, then go on decoding.
    Flush,
    /// The read buffer holds no whole piece: send what there is, then read.
    Read,
    /// The body ended.
    End,
}

/// Reads the final response head into `head`. Interim (1xx) responses are relayed to the
/// client through `interim` when given (an HTTP/1.1 client), else dropped.
pub(crate) async fn read_response_head(
    up_r: &mut ReadHalf<'_>,
    rbuf: &mut BytesMut,
    head: &mut ResponseHead,
    request_was_head: bool,
    mut interim: Option<&mut WriteHalf<'_>>,
) -> Result<(), ForwardError> {
    let mut interims = 0;
    loop {
        if !rbuf.is_empty() {
            if let Parsed::Complete(len) = head.parse(rbuf, request_was_head, MAX_RESPONSE_HEAD)? {
                rbuf.advance(len);
                if (100..200).contains(&head.status) && !head.is_switching_protocols() {
                    interims += 1;
                    if interims > MAX_INTERIM {
                        return Err(ForwardError::TooManyInterim);
                    }
                    if let Some(client) = interim.as_deref_mut() {
                        let mut relay = Vec::with_capacity(64);
                        head::write_response_head(
                            &mut relay,
                            head,
                            BodyLength::Empty,
                            Persistence::KeepAlive,
                            false,
                        );
                        client
                            .write_all(&relay)
                            .await
                            .map_err(ForwardError::Downstream)?;
                        client.flush().await.map_err(ForwardError::Downstream)?;
                    }
                    continue;
                }
                return Ok(());
            }
        }
        rbuf.reserve(READ_CHUNK);
        match up_r.read_buf(rbuf).await {
            Ok(0) if rbuf.is_empty() => return Err(ForwardError::UpstreamClosed),
            Ok(0) => return Err(ForwardError::TruncatedResponseHead),
            Ok(_) => {}
            Err(e) => return Err(ForwardError::Upstream(e)),
        }
    }
}

/// Writes the response head (already in `down.wbuf`) and streams the body after it, framed as
/// `out`.
async fn send_response_body(
    down: &mut ServerConn,
    up: &mut ClientConn,
    body: BodyLength,
    out: BodyLength,
) -> Result<(), ForwardError> {
    let mut decoder = BodyDecoder::new(body);
    // The whole of a small answer usually came with its head: both go in one write.
    loop {
        match decoder
            .next(&mut up.rbuf)
            .map_err(|e| ForwardError::AfterResponse(e.to_string()))?
        {
            Decoded::Data(n) => {
                put_body(&mut down.wbuf, &up.rbuf[..n], out);
                up.rbuf.advance(n);
                if down.wbuf.len() >= FLUSH_LIMIT {
                    flush(down).await?;
                }
            }
            Decoded::NeedMore => {
                flush(down).await?;
                read_upstream(up, &mut decoder).await?;
            }
            Decoded::End => {
                if out == BodyLength::Chunked {
                    down.wbuf.extend_from_slice(LAST_CHUNK);
                }
                return flush(down).await;
            }
        }
    }
}

/// Writes what the write buffer holds to the client. The first write of an answer marks it
/// started: from then on a failure can only be signalled by closing the connection.
async fn flush(down: &mut ServerConn) -> Result<(), ForwardError> {
    if !down.wbuf.is_empty() {
        down.responded = true;
        let idle = down.limits.idle_timeout;
        write_to_client(&mut down.stream, &down.wbuf, &mut down.timer, idle)
            .await
            .map_err(ForwardError::Downstream)?;
        down.wbuf.clear();
    }
    Ok(())
}

/// Reads more of the response body. The upstream closing ends a body that runs until the
/// close, and cuts any other short.
async fn read_upstream(up: &mut ClientConn, decoder: &mut BodyDecoder) -> Result<(), ForwardError> {
    up.rbuf.reserve(READ_CHUNK);
    match up.stream.read_buf(&mut up.rbuf).await {
        Ok(0) => decoder
            .end_of_input()
            .map_err(|e| ForwardError::AfterResponse(e.to_string())),
        Ok(_) => Ok(()),
        Err(e) => Err(ForwardError::AfterResponse(e.to_string())),
    }
}

/// After `101 Switching Protocols`: the head goes to the client, then bytes flow both ways
/// until either side closes. Neither connection is reused.
async fn tunnel(down: &mut ServerConn, up: &mut ClientConn) -> Result<Forwarded, ForwardError> {
    down.keep_alive = false;
    down.wbuf.clear();
    head::write_response_head(
        &mut down.wbuf,
        &up.head,
        BodyLength::Empty,
        Persistence::KeepAlive,
        false,
    );
    down.wbuf.extend_from_slice(&up.rbuf);
    up.rbuf.clear();
    down.responded = true;
    down.stream
        .write_all_flushed(&down.wbuf)
        .await
        .map_err(ForwardError::Downstream)?;
    if !down.rbuf.is_empty() {
        up.stream
            .write_all_flushed(&down.rbuf)
            .await
            .map_err(|e| ForwardError::AfterResponse(e.to_string()))?;
        down.rbuf.clear();
    }
    let _ = tokio::io::copy_bidirectional(&mut down.stream, &mut up.stream).await;
    Ok(Forwarded {
        status: 101,
        reusable: false,
    })
}
