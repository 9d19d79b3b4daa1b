//! Forwarding one request to an endpoint set: pick an endpoint, take a pooled connection (or
//! open one; a connect failure moves on to the next endpoint), send, report the outcome.
//!
//! HTTP/1.1 in and out is the fast path ([`crate::http1::proxy`]). The other three pairings —
//! an HTTP/1.1 client to an HTTP/2 upstream, and an HTTP/2 client (hyper) to either — convert
//! through hyper's types here.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::balance::EndpointSet;
use super::breaker::{Admission, Breaker};
use super::endpoint::{Endpoint, FailureKind, Outcome};
use super::h2::{Body, BoxError};
use super::retry::AppRetry;
use crate::http1::client::ClientConn;
use crate::http1::framing::{put_body, BodyDecoder, BodyLength, Decoded, LAST_CHUNK};
use crate::http1::head::{self, ConnectionTokens, HeaderEdits, ResponseHead};
use crate::http1::proxy::{self, ForwardError};
use crate::http1::server::{write_to_client, ServerConn};
use crate::http1::READ_CHUNK;
use crate::mesh_identity::PeerTls;

/// How a sidecar talks to the endpoints of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, multiplexed over one connection per endpoint.
    H2c,
}

/// Where a request goes and how.
pub(crate) struct Target<'a> {
    pub(crate) set: &'a EndpointSet,
    pub(crate) protocol: Protocol,
    /// Bounds the wait for the response head (a route rule's timeout).
    pub(crate) head_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    /// The request's key for a `ringHash` set ([`hash_key_of`]); `None` otherwise.
    pub(crate) hash_key: Option<u64>,
    /// The retry policy for this call (`Resiliency` `targets.apps.<id>.retry`), if any.
    pub(crate) retry: Option<&'a AppRetry>,
    /// The circuit breaker guarding calls to this target, if a policy names one.
    pub(crate) breaker: Option<&'a Breaker>,
    /// mTLS to the target's sidecars, and the identity they must prove; `None`: plaintext
    /// (the local app, or `--mtls off`).
    pub(crate) tls: Option<&'a PeerTls>,
}

/// A request's `ringHash` key: the named header's value, or the named query parameter of the
/// method path (`metadata.partitionKey`); `None` when the request carries none.
pub(crate) fn hash_key_of<D: crate::listeners::Downstream>(
    on: &outrigger_config::HashOn,
    request: &D,
    target: &crate::blocks::invoke::InvokeTarget,
) -> Option<u64> {
    let value = match (&on.header, &on.query) {
        (Some(name), _) => request.header_str(name)?.to_string(),
        (None, Some(name)) => {
            let (_, query) = target.path_and_query.split_once('?')?;
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| value.to_string())
            })?
        }
        (None, None) => return None,
    };
    Some(super::balance::hash_key(&value))
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("no endpoint is left to try")]
    NoEndpoint,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("HTTP/2: {0}")]
    H2(#[from] hyper::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("circuit breaker is open")]
    BreakerOpen,
}

/// How the client ended an exchange it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    /// Its request was malformed: 400, and its connection is closed.
    Malformed,
    /// Its request body stopped arriving: 408, and its connection is closed.
    TooSlow(Duration),
    /// It went away: nobody to answer.
    Gone,
}

/// A request that could not be forwarded, and the endpoint it was last sent to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: UpstreamError,
    pub(crate) address: Option<String>,
}

impl Failure {
    fn at(error: impl Into<UpstreamError>, endpoint: &Endpoint) -> Failure {
        Failure {
            error: error.into(),
            address: Some(endpoint.address.clone()),
        }
    }

    /// The route timeout that passed, if that is what happened.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        match &self.error {
            UpstreamError::Timeout(limit)
            | UpstreamError::Forward(ForwardError::Timeout(limit)) => Some(*limit),
            _ => None,
        }
    }

    /// Whether the client, not the upstream, ended the exchange — and how.
    pub(crate) fn client_fault(&self) -> Option<ClientFault> {
        use crate::http1::server::BodyError;
        match &self.error {
            UpstreamError::BadRequest(_)
            | UpstreamError::Forward(ForwardError::RequestBody(
                BodyError::Framing(_) | BodyError::TooLarge { .. },
            )) => Some(ClientFault::Malformed),
            UpstreamError::Forward(ForwardError::RequestBody(BodyError::Timeout(limit))) => {
                Some(ClientFault::TooSlow(*limit))
            }
            UpstreamError::Forward(
                ForwardError::ClientGone
                | ForwardError::Downstream(_)
                | ForwardError::RequestBody(BodyError::Eof | BodyError::Io(_)),
            ) => Some(ClientFault::Gone),
            _ => None,
        }
    }

    fn kind(&self) -> FailureKind {
        match &self.error {
            UpstreamError::Connect(_) | UpstreamError::NoEndpoint => FailureKind::Connect,
            _ if self.timeout().is_some() => FailureKind::Timeout,
            _ => FailureKind::Protocol,
        }
    }
}

/// Records an attempt with its endpoint and with the target's circuit breaker (a 5xx or no
/// answer is a failure; a client's own fault counts as a success: the upstream did nothing
/// wrong).
fn attempted(
    target: &Target<'_>,
    admission: Option<Admission>,
    endpoint: &Endpoint,
    started: Instant,
    result: Result<u16, &Failure>,
) {
    report(endpoint, started, result);
    breaker_records(target, admission, result);
}

/// Asks the target's breaker to let an attempt through (`Ok(None)`: there is none).
fn admit(target: &Target<'_>) -> Result<Option<Admission>, Failure> {
    match target.breaker {
        None => Ok(None),
        Some(breaker) => breaker.allow().map(Some).ok_or(Failure {
            error: UpstreamError::BreakerOpen,
            address: None,
        }),
    }
}

/// Records a whole call (one attempt) with the target's breaker.
fn breaker_records(
    target: &Target<'_>,
    admission: Option<Admission>,
    result: Result<u16, &Failure>,
) {
    let (Some(breaker), Some(admission)) = (target.breaker, admission) else {
        return;
    };
    match result {
        Ok(status) => breaker.record(admission, status < 500),
        // The client's own doing says nothing about the target.
        Err(failure) if failure.client_fault().is_some() => breaker.release(admission),
        Err(_) => breaker.record(admission, false),
    }
}

/// Records how a request went with its endpoint; a client's own fault says nothing about the
/// endpoint and is not recorded.
fn report(endpoint: &Endpoint, started: Instant, result: Result<u16, &Failure>) {
    if matches!(result, Err(failure) if failure.client_fault().is_some()) {
        return;
    }
    let latency = started.elapsed();
    let outcome = match result {
        Ok(status) => Outcome {
            status: Some(status),
            latency,
            failure: None,
        },
        Err(failure) => Outcome {
            status: None,
            latency,
            failure: Some(failure.kind()),
        },
    };
    endpoint.report(&outcome);
}

async fn connect(endpoint: &Endpoint, target: &Target<'_>) -> std::io::Result<Box<ClientConn>> {
    let addr = endpoint.addr.resolve().await?;
    ClientConn::connect(addr, target.connect_timeout, target.tls)
        .await
        .map(Box::new)
}

/// An idle pooled connection to `endpoint` whose peer proved what `target` expects.
fn pooled(endpoint: &Endpoint, target: &Target<'_>) -> Option<Box<ClientConn>> {
    endpoint.pool.take(target.tls.map(|tls| &tls.expected))
}

// === from an HTTP/1.1 client ===

/// Forwards the request on `down` to `target`, answering the client; returns the status.
pub(crate) async fn from_h1(
    down: &mut ServerConn,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
) -> Result<u16, Failure> {
    match target.protocol {
        Protocol::Http1 => h1_to_h1(down, target, edits).await,
        Protocol::H2c => h1_to_h2(down, target, edits).await,
    }
}

async fn h1_to_h1(
    down: &mut ServerConn,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
) -> Result<u16, Failure> {
    let whole = proxy::prepare(down, edits).map_err(|e| Failure {
        error: UpstreamError::BadRequest(e.to_string()),
        address: None,
    })?;
    let mut tried = Vec::new();
    let mut last = None;
    // A retry policy applies only to a request that is whole in memory (so it can be sent
    // again as it was), and only while nothing has gone to the client.
    let retry = target.retry.filter(|_| whole);
    if let Some(retry) = retry {
        retry.budget.call();
    }
    let mut retries = 0u32;
    loop {
        let picked = match target.set.pick_for(&tried, target.hash_key) {
            Some(picked) => Some(picked),
            None => {
                match retry_wait(retry, retries, down.responded).filter(|_| within_budget(retry)) {
                    // Every instance failed this round: wait out the backoff, then start over.
                    Some(wait) => {
                        if !backoff(down, wait).await {
                            return Err(client_gone());
                        }
                        retries += 1;
                        if let Some(retry) = retry {
                            retry.retried.inc();
                        }
                        tried.clear();
                        target.set.pick_for(&tried, target.hash_key)
                    }
                    None => None,
                }
            }
        };
        let Some((index, endpoint)) = picked else {
            return Err(last.unwrap_or(Failure {
                error: UpstreamError::NoEndpoint,
                address: None,
            }));
        };
        // Each attempt asks the breaker (breaker inside retry, as daprd wraps them).
        let admission = admit(target)?;
        let started = Instant::now();
        let in_flight = endpoint.begin();
        // Held back for a retry: a status the policy retries, while retries remain.
        // The budget is paid when the answer is held: a held answer is always retried.
        let hold_status = |status: u16| {
            retry.is_some_and(|r| r.schedule.retries_invocation_status(status))
                && retry_wait(retry, retries, false).is_some()
                && within_budget(retry)
        };
        let hold: Option<&(dyn Fn(u16) -> bool + Sync)> =
            retry.map(|_| &hold_status as &(dyn Fn(u16) -> bool + Sync));
        let mut conn = match pooled(endpoint, target) {
            Some(conn) => conn,
            None => match connect(endpoint, target).await {
                Ok(conn) => conn,
                Err(e) => {
                    let failure = Failure::at(UpstreamError::Connect(e), endpoint);
                    attempted(target, admission, endpoint, started, Err(&failure));
                    tried.push(index);
                    last = Some(failure);
                    continue;
                }
            },
        };
        let was_reused = conn.reused;
        let mut result = proxy::exchange(down, &mut conn, target.head_timeout, hold).await;
        let idempotent = is_idempotent(&down.head.method);
        if was_reused
            && whole
            && idempotent
            && !down.responded
            && matches!(&result, Err(e) if e.is_retryable())
        {
            // The peer closed an idle connection just as it was used: the request is whole in
            // memory, nothing reached the client, and sending it twice does no harm (the app
            // may have read it before closing), so it goes once more on a fresh connection.
            match connect(endpoint, target).await {
                Ok(fresh) => {
                    conn = fresh;
                    result = proxy::exchange(down, &mut conn, target.head_timeout, hold).await;
                }
                Err(e) => {
                    let failure = Failure::at(UpstreamError::Connect(e), endpoint);
                    attempted(target, admission, endpoint, started, Err(&failure));
                    tried.push(index);
                    last = Some(failure);
                    continue;
                }
            }
        }
        return match result {
            Ok(done) => {
                attempted(target, admission, endpoint, started, Ok(done.status));
                if done.reusable {
                    endpoint.pool.put(conn);
                }
                Ok(done.status)
            }
            Err(ForwardError::Held(status)) => {
                attempted(target, admission, endpoint, started, Ok(status));
                drop(conn); // its response body was never read
                drop(in_flight);
                // Held only while a retry remains (`hold_status`): the fallback never runs.
                let wait = retry_wait(retry, retries, false).unwrap_or_default();
                tracing::debug!(endpoint = %endpoint.address, status, retry = retries + 1, ?wait, "retrying");
                if !backoff(down, wait).await {
                    return Err(client_gone());
                }
                retries += 1;
                if let Some(retry) = retry {
                    retry.retried.inc();
                }
                tried.push(index);
                if tried.len() >= target.set.len() {
                    tried.clear();
                }
                continue;
            }
            Err(e) => {
                let failure = Failure::at(e, endpoint);
                attempted(target, admission, endpoint, started, Err(&failure));
                let again = matches!(
                    &failure.error,
                    UpstreamError::Forward(e) if e.is_retryable() || matches!(e, ForwardError::Timeout(_))
                );
                match retry_wait(retry, retries, down.responded)
                    .filter(|_| again && within_budget(retry))
                {
                    Some(wait) => {
                        drop(conn);
                        drop(in_flight);
                        if !backoff(down, wait).await {
                            return Err(client_gone());
                        }
                        retries += 1;
                        if let Some(retry) = retry {
                            retry.retried.inc();
                        }
                        tried.push(index);
                        if tried.len() >= target.set.len() {
                            tried.clear();
                        }
                        last = Some(failure);
                        continue;
                    }
                    None => Err(failure),
                }
            }
        };
    }
}

/// Waits out a retry backoff; `false` when the client went away meanwhile (nobody is left to
/// answer, so nothing more is sent).
async fn backoff(down: &mut ServerConn, wait: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = down.client_gone() => false,
    }
}

fn client_gone() -> Failure {
    Failure {
        error: UpstreamError::Forward(ForwardError::ClientGone),
        address: None,
    }
}

/// Invocation retries a `-1` (forever) policy is held to: a caller is waiting.
const MAX_INVOCATION_RETRIES: u32 = 10;

/// The wait before the next retry, if the policy has one left and nothing went to the client.
fn retry_wait(retry: Option<&AppRetry>, done: u32, responded: bool) -> Option<Duration> {
    let retry = retry?;
    if responded || done >= MAX_INVOCATION_RETRIES {
        return None;
    }
    retry.schedule.delay(done + 1)
}

/// Takes a retry from the app's budget (call last: a granted retry is spent).
fn within_budget(retry: Option<&AppRetry>) -> bool {
    retry.is_some_and(|r| r.budget.try_retry())
}

/// Methods a repeat of which does no more than the first (RFC 9110 §9.2.2): the only ones
/// sent again after a connection failed under them.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Picks an endpoint and its HTTP/2 connection; a connect failure moves on to the next.
/// Endpoints in `tried` are skipped; every endpoint used is added to it.
async fn h2_sender(
    target: &Target<'_>,
    tried: &mut Vec<usize>,
) -> Result<(Arc<Endpoint>, hyper::client::conn::http2::SendRequest<Body>), Failure> {
    let mut last = None;
    loop {
        let Some((index, endpoint)) = target.set.pick_for(tried, target.hash_key) else {
            return Err(last.unwrap_or(Failure {
                error: UpstreamError::NoEndpoint,
                address: None,
            }));
        };
        match endpoint
            .h2
            .sender(&endpoint.addr, target.connect_timeout, target.tls)
            .await
        {
            Ok(sender) => {
                tried.push(index);
                return Ok((endpoint.clone(), sender));
            }
            Err(e) => {
                let failure = Failure::at(UpstreamError::Connect(e), endpoint);
                report(endpoint, Instant::now(), Err(&failure));
                tried.push(index);
                last = Some(failure);
            }
        }
    }
}

/// The URI an HTTP/2 request carries: scheme, authority (the client's host, else the
/// endpoint's address) and the path.
fn h2_uri(
    authority: Option<&str>,
    endpoint: &Endpoint,
    path: &str,
) -> Result<http::Uri, UpstreamError> {
    let authority = authority.unwrap_or(&endpoint.address);
    http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| UpstreamError::BadRequest(format!("request target {path:?}: {e}")))
}

async fn h1_to_h2(
    down: &mut ServerConn,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
) -> Result<u16, Failure> {
    if let Some(retry) = target.retry {
        if let Some(body) = whole_h1_body(down).await? {
            return h1_to_h2_retrying(down, target, edits, retry, body).await;
        }
    }
    let admission = admit(target)?;
    let (endpoint, mut sender) = match h2_sender(target, &mut Vec::new()).await {
        Ok(picked) => picked,
        Err(failure) => {
            breaker_records(target, admission, Err(&failure));
            return Err(failure);
        }
    };
    let started = Instant::now();
    let _in_flight = endpoint.begin();
    let result = h1_to_h2_exchange(down, &endpoint, &mut sender, target, edits).await;
    report(&endpoint, started, result.as_ref().copied());
    breaker_records(target, admission, result.as_ref().copied());
    result
}

async fn h1_to_h2_exchange(
    down: &mut ServerConn,
    endpoint: &Endpoint,
    sender: &mut hyper::client::conn::http2::SendRequest<Body>,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
) -> Result<u16, Failure> {
    let fail = |error: UpstreamError| Failure::at(error, endpoint);
    let uri = h1_uri(down, endpoint, edits).map_err(fail)?;
    let headers = h2_headers_of_h1(down, edits);
    let (body, frames) = if down.body.is_done() {
        (Empty::new().map_err(|never| match never {}).boxed(), None)
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        (StreamBody::new(stream).boxed(), Some(tx))
    };
    // Kept to cut the request stream if the answer comes before the body is sent whole.
    let mut abort = frames.clone();
    let mut request = Request::new(body);
    *request.method_mut() = down.head.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    let send = sender.send_request(request);
    let exchange = async {
        match target.head_timeout {
            Some(limit) => tokio::time::timeout(limit, send)
                .await
                .map_err(|_| UpstreamError::Timeout(limit))?
                .map_err(UpstreamError::H2),
            None => send.await.map_err(UpstreamError::H2),
        }
    };
    tokio::pin!(exchange);
    let early = {
        let pump = {
            let down = &mut *down;
            async move {
                let Some(tx) = frames else {
                    return std::future::pending().await;
                };
                while let Some(chunk) = down.next_body_chunk().await? {
                    if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                        break;
                    }
                }
                Ok(())
            }
        };
        tokio::pin!(pump);
        let mut early = None;
        let mut pumped = abort.is_none();
        while !pumped {
            tokio::select! {
                biased;
                response = &mut exchange => {
                    early = Some(response);
                    break;
                }
                done = &mut pump => match done {
                    Ok(()) => {
                        pumped = true;
                        abort = None; // the last sender gone ends the request body
                    }
                    Err(e) => return Err(fail(ForwardError::RequestBody(e).into())),
                },
            }
        }
        early
    };
    let response = match early {
        Some(response) => response.map_err(fail)?,
        None => tokio::select! {
            biased;
            response = &mut exchange => response.map_err(fail)?,
            () = down.client_gone() => return Err(fail(ForwardError::ClientGone.into())),
        },
    };
    if let Some(tx) = abort.take() {
        // Answered before the whole body was sent: cut the request stream rather than let it
        // look complete, and close the client connection (the rest of its body is unread).
        let _ = tx.try_send(Err(
            "the upstream answered before the request body ended".into()
        ));
        down.keep_alive = false;
    }
    write_h2_response(down, response).await.map_err(fail)
}

/// The URI of an HTTP/1.1 client's request for an HTTP/2 upstream.
fn h1_uri(
    down: &ServerConn,
    endpoint: &Endpoint,
    edits: &HeaderEdits<'_>,
) -> Result<http::Uri, UpstreamError> {
    let host = down
        .head
        .header("host")
        .and_then(|h| std::str::from_utf8(h).ok());
    h2_uri(host, endpoint, edits.target.unwrap_or(down.head.target()))
}

/// The end-to-end headers of an HTTP/1.1 client's request (no `Host`: the URI carries the
/// authority), edits applied.
fn h2_headers_of_h1(down: &ServerConn, edits: &HeaderEdits<'_>) -> http::HeaderMap {
    let head = &down.head;
    let mut headers = http::HeaderMap::new();
    let connection = ConnectionTokens::of(head.headers());
    for (name, value) in head.headers() {
        if name.eq_ignore_ascii_case(b"host") || !head::forwards(name, &connection, edits) {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    add_edits(&mut headers, edits);
    headers
}

/// The largest request body kept in memory so that the request can be sent again under a
/// retry policy. A longer one, or one of unknown length, streams and is sent once.
pub(crate) const RETRY_BODY_LIMIT: u64 = 64 * 1024;

/// An HTTP/1.1 client's whole request body, read into memory when its declared length is
/// within [`RETRY_BODY_LIMIT`] (`None` otherwise: it is to stream).
async fn whole_h1_body(down: &mut ServerConn) -> Result<Option<Bytes>, Failure> {
    if down.body.is_done() {
        return Ok(Some(Bytes::new()));
    }
    if !matches!(down.head.body, BodyLength::Length(n) if n <= RETRY_BODY_LIMIT) {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match down.next_body_chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(Some(body.freeze())),
            Err(e) => {
                return Err(Failure {
                    error: ForwardError::RequestBody(e).into(),
                    address: None,
                })
            }
        }
    }
}

/// Whether a failed attempt is worth making again: anything but the client's own doing, an
/// open breaker or a request that cannot be built.
fn retryable_failure(failure: &Failure) -> bool {
    failure.client_fault().is_none()
        && !matches!(
            failure.error,
            UpstreamError::BreakerOpen | UpstreamError::BadRequest(_)
        )
}

/// The wait before an attempt at a request kept whole is made again, if the policy retries
/// what `result` was and a retry remains in the schedule and the app's budget.
fn again_after<R>(
    retry: &AppRetry,
    retries: u32,
    result: &Result<Response<R>, Failure>,
) -> Option<Duration> {
    let wanted = match result {
        Ok(response) => retry
            .schedule
            .retries_invocation_status(response.status().as_u16()),
        Err(failure) => retryable_failure(failure),
    };
    if !wanted {
        return None;
    }
    retry_wait(Some(retry), retries, false).filter(|_| within_budget(Some(retry)))
}

/// One attempt at an HTTP/2 upstream with a request kept whole: an endpoint not in `tried`
/// (recorded there), the request, the response head within the target's timeout.
async fn h2_attempt(
    target: &Target<'_>,
    tried: &mut Vec<usize>,
    request: impl Fn(&Endpoint) -> Result<Request<Body>, UpstreamError>,
) -> Result<Response<Incoming>, Failure> {
    let (endpoint, mut sender) = h2_sender(target, tried).await?;
    let started = Instant::now();
    let _in_flight = endpoint.begin();
    let request = request(&endpoint).map_err(|e| Failure::at(e, &endpoint))?;
    send_h2(&mut sender, request, target, &endpoint, started).await
}

/// Sends `request` on an HTTP/2 connection to `endpoint` and waits for the response head
/// within the target's timeout; the outcome is reported to the endpoint.
async fn send_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<Body>,
    request: Request<Body>,
    target: &Target<'_>,
    endpoint: &Endpoint,
    started: Instant,
) -> Result<Response<Incoming>, Failure> {
    let fail = |error: UpstreamError| Failure::at(error, endpoint);
    let send = sender.send_request(request);
    let result = match target.head_timeout {
        Some(limit) => tokio::time::timeout(limit, send)
            .await
            .map_err(|_| fail(UpstreamError::Timeout(limit)))
            .and_then(|r| r.map_err(|e| fail(e.into()))),
        None => send.await.map_err(|e| fail(e.into())),
    };
    report(
        endpoint,
        started,
        result.as_ref().map(|r| r.status().as_u16()),
    );
    result
}

/// Starts over when every endpoint was tried this round.
fn next_round(target: &Target<'_>, tried: &mut Vec<usize>) {
    if tried.len() >= target.set.len() {
        tried.clear();
    }
}

/// An HTTP/1.1 client's request, whole in memory, to an HTTP/2 upstream under a retry
/// policy: each attempt asks the breaker and has its own timeout (timeout inside breaker
/// inside retry); a retried status is dropped unread; the last attempt's answer is the one
/// the client gets.
async fn h1_to_h2_retrying(
    down: &mut ServerConn,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
    retry: &AppRetry,
    body: Bytes,
) -> Result<u16, Failure> {
    retry.budget.call();
    let headers = h2_headers_of_h1(down, edits);
    let method = down.head.method.clone();
    let host = down
        .head
        .header("host")
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(str::to_string);
    let path = edits.target.unwrap_or(down.head.target()).to_string();
    let mut tried = Vec::new();
    let mut retries = 0u32;
    loop {
        next_round(target, &mut tried);
        let admission = admit(target)?;
        let request = |endpoint: &Endpoint| {
            let mut request = Request::new(
                http_body_util::Full::new(body.clone())
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *request.method_mut() = method.clone();
            *request.uri_mut() = h2_uri(host.as_deref(), endpoint, &path)?;
            *request.version_mut() = http::Version::HTTP_2;
            *request.headers_mut() = headers.clone();
            Ok(request)
        };
        let attempt = h2_attempt(target, &mut tried, request);
        let result = tokio::select! {
            result = attempt => result,
            () = down.client_gone() => {
                let gone = client_gone();
                breaker_records(target, admission, Err(&gone));
                return Err(gone);
            }
        };
        breaker_records(
            target,
            admission,
            result.as_ref().map(|r| r.status().as_u16()),
        );
        let Some(wait) = again_after(retry, retries, &result) else {
            let response = result?;
            let address = tried
                .last()
                .map(|i| target.set.members[*i].endpoint.clone());
            return write_h2_response(down, response)
                .await
                .map_err(|error| Failure {
                    error,
                    address: address.map(|e| e.address.clone()),
                });
        };
        drop(result);
        if !backoff(down, wait).await {
            return Err(client_gone());
        }
        retries += 1;
        retry.retried.inc();
    }
}

fn add_edits(headers: &mut http::HeaderMap, edits: &HeaderEdits<'_>) {
    for (name, value) in edits.added() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// Writes an HTTP/2 response to an HTTP/1.1 client, streaming its body.
async fn write_h2_response(
    down: &mut ServerConn,
    response: Response<Incoming>,
) -> Result<u16, UpstreamError> {
    let status = response.status().as_u16();
    let (parts, mut body) = response.into_parts();
    let no_body = down.head.method == http::Method::HEAD
        || status == 204
        || status == 304
        || (100..200).contains(&status);
    let out = if no_body {
        BodyLength::Empty
    } else if let Some(n) = http_body::Body::size_hint(&body).exact() {
        BodyLength::Length(n)
    } else if down.head.http10 {
        down.keep_alive = false;
        BodyLength::CloseDelimited
    } else {
        BodyLength::Chunked
    };
    down.wbuf.clear();
    head::put_status_line(&mut down.wbuf, status, b"");
    for (name, value) in &parts.headers {
        let keep_length = no_body && name == http::header::CONTENT_LENGTH;
        if keep_length || !head::is_hop_by_hop(name.as_str().as_bytes()) {
            head::put_header(&mut down.wbuf, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let persistence = down.persistence();
    down.wbuf.extend_from_slice(persistence.header());
    head::put_framing(&mut down.wbuf, out);
    down.wbuf.extend_from_slice(b"\r\n");
    let idle = down.limits.idle_timeout;
    let downstream = |e| UpstreamError::Forward(ForwardError::Downstream(e));
    if !no_body {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| UpstreamError::Forward(ForwardError::AfterResponse(e.to_string())))?;
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    put_body(&mut down.wbuf, &data, out);
                    down.responded = true;
                    write_to_client(&mut down.stream, &down.wbuf, &mut down.timer, idle)
                        .await
                        .map_err(downstream)?;
                    down.wbuf.clear();
                }
            }
        }
        if out == BodyLength::Chunked {
            down.wbuf.extend_from_slice(LAST_CHUNK);
        }
    }
    down.responded = true;
    write_to_client(&mut down.stream, &down.wbuf, &mut down.timer, idle)
        .await
        .map_err(downstream)?;
    down.wbuf.clear();
    Ok(status)
}

// === from an HTTP/2 client ===

/// Forwards a request given as hyper's types (an HTTP/2 client's, or one the sidecar makes
/// itself, such as a pub/sub delivery) to `target`; the response streams back as hyper's body.
pub(crate) async fn from_h2<B>(
    request: Request<B>,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
) -> Result<Response<Body>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(retry) = target.retry {
        let (parts, body) = request.into_parts();
        return match whole_h2_body(body).await? {
            Ok(body) => from_h2_retrying(parts, body, target, edits, retry).await,
            Err(body) => from_h2_once(Request::from_parts(parts, body), target, edits).await,
        };
    }
    from_h2_once(request, target, edits).await
}

/// The longest an HTTP/2 request body that is to be kept for retries may take to arrive.
const RETRY_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP/2 request body, read into memory when it is known to be within
/// [`RETRY_BODY_LIMIT`] (it has ended, or its length is declared); otherwise given back to
/// stream. A body that breaks off or takes longer than [`RETRY_BODY_TIMEOUT`] is the
/// client's fault.
async fn whole_h2_body<B>(body: B) -> Result<Result<Bytes, B>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    use crate::http1::server::BodyError;
    let known_small = http_body::Body::is_end_stream(&body)
        || http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n <= RETRY_BODY_LIMIT);
    if !known_small {
        return Ok(Err(body));
    }
    let limited = http_body_util::Limited::new(body, RETRY_BODY_LIMIT as usize);
    match tokio::time::timeout(RETRY_BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Ok(collected.to_bytes())),
        Ok(Err(e)) => Err(Failure {
            error: UpstreamError::BadRequest(format!("reading the request body: {e}")),
            address: None,
        }),
        Err(_) => Err(Failure {
            error: ForwardError::RequestBody(BodyError::Timeout(RETRY_BODY_TIMEOUT)).into(),
            address: None,
        }),
    }
}

/// One attempt, guarded by the target's breaker.
async fn from_h2_once<B>(
    request: Request<B>,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
) -> Result<Response<Body>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let admission = admit(target)?;
    let mut tried = Vec::new();
    let result = match target.protocol {
        Protocol::H2c => h2_to_h2(request, target, edits, &mut tried).await,
        Protocol::Http1 => h2_to_h1(request, target, edits, &mut tried).await,
    };
    breaker_records(
        target,
        admission,
        result.as_ref().map(|r| r.status().as_u16()),
    );
    result
}

/// A request kept whole, sent again while the policy says so (as [`h1_to_h2_retrying`]).
/// Dropping the future (the client reset its stream) ends the retries.
async fn from_h2_retrying(
    parts: http::request::Parts,
    body: Bytes,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
    retry: &AppRetry,
) -> Result<Response<Body>, Failure> {
    retry.budget.call();
    let mut tried = Vec::new();
    let mut retries = 0u32;
    loop {
        next_round(target, &mut tried);
        let admission = admit(target)?;
        let request = Request::from_parts(parts.clone(), http_body_util::Full::new(body.clone()));
        let result = match target.protocol {
            Protocol::H2c => h2_to_h2(request, target, edits, &mut tried).await,
            Protocol::Http1 => h2_to_h1(request, target, edits, &mut tried).await,
        };
        breaker_records(
            target,
            admission,
            result.as_ref().map(|r| r.status().as_u16()),
        );
        let Some(wait) = again_after(retry, retries, &result) else {
            return result;
        };
        drop(result);
        tokio::time::sleep(wait).await;
        retries += 1;
        retry.retried.inc();
    }
}

fn to_box_error<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

async fn h2_to_h2<B>(
    request: Request<B>,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
    tried: &mut Vec<usize>,
) -> Result<Response<Body>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (endpoint, mut sender) = h2_sender(target, tried).await?;
    let started = Instant::now();
    let _in_flight = endpoint.begin();
    let fail = |error: UpstreamError| Failure::at(error, &endpoint);
    let (mut parts, body) = request.into_parts();
    let path = edits
        .target
        .map(str::to_string)
        .or_else(|| parts.uri.path_and_query().map(|p| p.to_string()))
        .unwrap_or_else(|| "/".to_string());
    let authority = parts.uri.authority().map(|a| a.to_string());
    parts.uri = h2_uri(authority.as_deref(), &endpoint, &path).map_err(fail)?;
    let names: Vec<HeaderName> = parts.headers.keys().cloned().collect();
    for name in names {
        if head::is_hop_by_hop(name.as_str().as_bytes()) || edits.removes(name.as_str().as_bytes())
        {
            parts.headers.remove(&name);
        }
    }
    add_edits(&mut parts.headers, edits);
    let request = Request::from_parts(parts, body.map_err(to_box_error).boxed());
    send_h2(&mut sender, request, target, &endpoint, started)
        .await
        .map(|response| response.map(|b| b.map_err(BoxError::from).boxed()))
}

async fn h2_to_h1<B>(
    request: Request<B>,
    target: &Target<'_>,
    edits: &HeaderEdits<'_>,
    tried: &mut Vec<usize>,
) -> Result<Response<Body>, Failure>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = request.into_parts();
    let framing = if http_body::Body::is_end_stream(&body) {
        if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            BodyLength::Length(0)
        } else {
            BodyLength::Empty
        }
    } else {
        match http_body::Body::size_hint(&body).exact() {
            Some(n) => BodyLength::Length(n),
            None => BodyLength::Chunked,
        }
    };
    let mut head_bytes = Vec::with_capacity(512);
    write_h2_request_head(&mut head_bytes, &parts, edits, framing);
    let request_was_head = parts.method == http::Method::HEAD;

    let mut last = None;
    let (endpoint, mut conn, started) = loop {
        let Some((index, endpoint)) = target.set.pick_for(tried, target.hash_key) else {
            return Err(last.unwrap_or(Failure {
                error: UpstreamError::NoEndpoint,
                address: None,
            }));
        };
        let started = Instant::now();
        match pooled(endpoint, target) {
            Some(conn) => {
                tried.push(index);
                break (endpoint.clone(), conn, started);
            }
            None => match connect(endpoint, target).await {
                Ok(conn) => {
                    tried.push(index);
                    break (endpoint.clone(), conn, started);
                }
                Err(e) => {
                    let failure = Failure::at(UpstreamError::Connect(e), endpoint);
                    report(endpoint, started, Err(&failure));
                    tried.push(index);
                    last = Some(failure);
                }
            },
        }
    };
    let fail = |error: UpstreamError| Failure::at(error, &endpoint);
    conn.reused = true;
    let body_done = {
        let (rbuf, wbuf, response_head) = (&mut conn.rbuf, &mut conn.wbuf, &mut conn.head);
        let (mut up_r, mut up_w) = conn.stream.split();
        let send_then_head = async {
            up_w.write_all(&head_bytes)
                .await
                .map_err(ForwardError::Upstream)?;
            up_w.flush().await.map_err(ForwardError::Upstream)?;
            let head =
                proxy::read_response_head(&mut up_r, rbuf, response_head, request_was_head, None);
            if framing == BodyLength::Empty || framing == BodyLength::Length(0) {
                return head.await.map(|()| true);
            }
            let copy = async {
                while let Some(frame) = body.frame().await {
                    let frame =
                        frame.map_err(|e| std::io::Error::other(to_box_error(e).to_string()))?;
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            wbuf.clear();
                            put_body(wbuf, &data, framing);
                            up_w.write_all(wbuf).await?;
                            up_w.flush().await?;
                        }
                    }
                }
                if framing == BodyLength::Chunked {
                    up_w.write_all(LAST_CHUNK).await?;
                    up_w.flush().await?;
                }
                Ok::<(), std::io::Error>(())
            };
            tokio::pin!(copy, head);
            let mut copied = false;
            loop {
                tokio::select! {
                    biased;
                    result = &mut head => return result.map(|()| copied),
                    result = &mut copy, if !copied => {
                        copied = true;
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "request body not sent whole");
                        }
                    }
                }
            }
        };
        let result = match target.head_timeout {
            Some(limit) => tokio::time::timeout(limit, send_then_head)
                .await
                .unwrap_or(Err(ForwardError::Timeout(limit))),
            None => send_then_head.await,
        };
        match result {
            Ok(done) => done,
            Err(e) => {
                let failure = fail(e.into());
                report(&endpoint, started, Err(&failure));
                return Err(failure);
            }
        }
    };
    let status = conn.head.status;
    report(&endpoint, started, Ok(status));
    if conn.head.is_switching_protocols() {
        return Err(fail(ForwardError::UnaskedUpgrade.into()));
    }
    let status_code = http::StatusCode::from_u16(status)
        .map_err(|e| fail(UpstreamError::BadRequest(format!("response status: {e}"))))?;
    let mut headers = http::HeaderMap::new();
    copy_response_headers(&conn.head, &mut headers);
    let decoder = BodyDecoder::new(conn.head.body);
    let body = if decoder.is_done() {
        let reusable = body_done && conn.head.keep_alive && conn.rbuf.is_empty();
        if reusable {
            endpoint.pool.put(conn);
        }
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        tokio::spawn(stream_h1_body(
            endpoint.clone(),
            conn,
            decoder,
            body_done,
            tx,
        ));
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = status_code;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The HTTP/1.1 head for an HTTP/2 request: `Host` from the authority when the request has
/// none, hop-by-hop headers dropped, edits applied.
fn write_h2_request_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    edits: &HeaderEdits<'_>,
    framing: BodyLength,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let path = edits
        .target
        .or_else(|| parts.uri.path_and_query().map(|p| p.as_str()))
        .unwrap_or("/");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(http::header::HOST) {
        let host = parts.uri.authority().map_or("localhost", |a| a.as_str());
        head::put_header(out, b"host", host.as_bytes());
    }
    let none = ConnectionTokens::of(std::iter::empty());
    for (name, value) in &parts.headers {
        if head::forwards(name.as_str().as_bytes(), &none, edits) {
            head::put_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    head::put_framing(out, framing);
    for (name, value) in edits.added() {
        head::put_header(out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The end-to-end headers of an HTTP/1.1 response, for an HTTP/2 one.
fn copy_response_headers(head: &ResponseHead, headers: &mut http::HeaderMap) {
    let connection = ConnectionTokens::of(head.headers());
    for (name, value) in head.headers() {
        if head::is_hop_by_hop(name) || connection.names(name) {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
}

/// Reads an HTTP/1.1 response body into frames for an HTTP/2 client; the connection goes
/// back to its pool if the body ended cleanly.
async fn stream_h1_body(
    endpoint: Arc<Endpoint>,
    mut conn: Box<ClientConn>,
    mut decoder: BodyDecoder,
    request_done: bool,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) {
    let until_close = matches!(decoder, BodyDecoder::UntilClose);
    loop {
        let step = decoder.next(&mut conn.rbuf);
        match step {
            Ok(Decoded::Data(n)) => {
                let data = conn.rbuf.split_to(n).freeze();
                if tx.send(Ok(Frame::data(data))).await.is_err() {
                    return;
                }
            }
            Ok(Decoded::NeedMore) => {
                conn.rbuf.reserve(READ_CHUNK);
                let read =
                    tokio::io::AsyncReadExt::read_buf(&mut conn.stream, &mut conn.rbuf).await;
                let ended = match read {
                    Ok(0) => decoder.end_of_input().map_err(|e| e.to_string()),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = ended {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            Ok(Decoded::End) => break,
            Err(e) => {
                let _ = tx.send(Err(e.to_string().into())).await;
                return;
            }
        }
    }
    if request_done && !until_close && conn.head.keep_alive && !conn.rbuf.has_remaining() {
        endpoint.pool.put(conn);
    }
}
