//! HTTP/1.1 message heads: parsed with httparse, kept as byte ranges into one reusable buffer
//! per connection (no per-header allocation), and written back out for the next hop with the
//! hop-by-hop headers dropped and the framing header the body actually needs.

use std::ops::Range;

use http::Method;

use super::framing::{self, BodyLength, FramingError, FramingHeaders};

/// The most header lines one head may carry.
pub(crate) const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("malformed request head: {0}")]
    Parse(httparse::Error),
    #[error("request has more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("request header block is {size} bytes or more; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("request has more than one Host header")]
    RepeatedHost,
    #[error("method {0:?} is not a valid token")]
    BadMethod(String),
    #[error("request target {0:?} is not an absolute path")]
    BadTarget(String),
    #[error("method CONNECT is not supported here")]
    Connect,
    #[error(transparent)]
    Framing(#[from] FramingError),
}

impl HeadError {
    /// The status a client gets for it.
    pub(crate) fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders => 431,
            HeadError::Framing(FramingError::UnsupportedEncoding(_)) | HeadError::Connect => 501,
            _ => 400,
        }
    }
}

/// One header line: where its name and value sit in the head's buffer, and what it is.
#[derive(Debug, Clone)]
pub(crate) struct HeaderRange {
    name: Range<usize>,
    value: Range<usize>,
    kind: HeaderKind,
}

/// The headers the engine looks at, told apart once when the head is parsed so that nothing
/// compares names twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderKind {
    Host,
    Connection,
    Upgrade,
    Expect,
    ContentLength,
    TransferEncoding,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Proxy-Authorization`.
    OtherHopByHop,
    EndToEnd,
}

impl HeaderKind {
    fn of(name: &[u8]) -> HeaderKind {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => HeaderKind::OtherHopByHop,
            4 if is(b"host") => HeaderKind::Host,
            6 if is(b"expect") => HeaderKind::Expect,
            7 if is(b"upgrade") => HeaderKind::Upgrade,
            7 if is(b"trailer") => HeaderKind::OtherHopByHop,
            10 if is(b"connection") => HeaderKind::Connection,
            10 if is(b"keep-alive") => HeaderKind::OtherHopByHop,
            14 if is(b"content-length") => HeaderKind::ContentLength,
            16 if is(b"proxy-connection") => HeaderKind::OtherHopByHop,
            17 if is(b"transfer-encoding") => HeaderKind::TransferEncoding,
            19 if is(b"proxy-authorization") => HeaderKind::OtherHopByHop,
            _ => HeaderKind::EndToEnd,
        }
    }
}

/// Reads a `Connection` header's tokens: whether they say close, keep-alive or upgrade, and
/// whether they name other headers (which are then hop-by-hop too).
#[derive(Debug, Default, Clone, Copy)]
struct ConnectionSays {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    names_others: bool,
}

impl ConnectionSays {
    fn read(&mut self, value: &[u8]) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.names_others = true;
            }
        }
    }
}

/// A parsed request head. Lives as long as its connection and is refilled for every request,
/// so its buffers are allocated once.
#[derive(Debug)]
pub(crate) struct RequestHead {
    raw: Vec<u8>,
    headers: Vec<HeaderRange>,
    pub(crate) method: Method,
    /// The request target, copied out once (httparse checked it is text).
    target: String,
    /// `Connection` names headers beyond close/keep-alive/upgrade.
    connection_names_others: bool,
    /// A `Host` header came with the request (HTTP/1.0 may leave it out).
    has_host: bool,
    pub(crate) http10: bool,
    pub(crate) body: BodyLength,
    /// Whether the client lets the connection stay open after this exchange.
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header: a protocol switch is asked for.
    pub(crate) upgrade: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            raw: Vec::with_capacity(1024),
            headers: Vec::with_capacity(32),
            method: Method::GET,
            target: String::with_capacity(256),
            connection_names_others: false,
            has_host: false,
            http10: false,
            body: BodyLength::Empty,
            keep_alive: true,
            expect_continue: false,
            upgrade: false,
        }
    }
}

/// What parsing the front of a connection's buffer found.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A whole head of this many bytes.
    Complete(usize),
    /// Not yet a whole head.
    Partial,
}

impl RequestHead {
    /// Parses the head at the front of `buf` into `self`; `buf` itself is not consumed (the
    /// caller advances it by the returned length). A head that is still incomplete at
    /// `max_bytes` is an error, as is anything RFC 9112 does not allow.
    pub(crate) fn parse(&mut self, buf: &[u8], max_bytes: usize) -> Result<Parsed, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut slots);
        let len = match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= max_bytes {
                    Err(HeadError::TooLarge {
                        size: buf.len(),
                        limit: max_bytes,
                    })
                } else {
                    Ok(Parsed::Partial)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(e) => return Err(HeadError::Parse(e)),
        };
        if len > max_bytes {
            return Err(HeadError::TooLarge {
                size: len,
                limit: max_bytes,
            });
        }
        let base = buf.as_ptr() as usize;
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let method = request.method.unwrap_or_default();
        let target = request.path.unwrap_or_default();
        self.http10 = request.version == Some(0);
        self.method = Method::from_bytes(method.as_bytes())
            .map_err(|_| HeadError::BadMethod(method.to_string()))?;
        // Tunnels are not served on these listeners (HTTP/2 CONNECT will be, on the mesh port).
        if self.method == Method::CONNECT {
            return Err(HeadError::Connect);
        }
        // Origin form only (and `*` for OPTIONS): an absolute URI here would be a forward-proxy
        // request, which this listener is not.
        if !(target.starts_with('/') || (target == "*" && self.method == Method::OPTIONS)) {
            return Err(HeadError::BadTarget(target.to_string()));
        }
        self.target.clear();
        self.target.push_str(target);
        self.headers.clear();
        let mut framing = FramingHeaders::default();
        let mut hosts = 0;
        let mut connection = ConnectionSays::default();
        let mut upgrade_header = false;
        self.expect_continue = false;
        for header in request.headers.iter() {
            let name = header.name.as_bytes();
            let kind = HeaderKind::of(name);
            match kind {
                HeaderKind::Host => hosts += 1,
                HeaderKind::Connection => connection.read(header.value),
                HeaderKind::Upgrade => upgrade_header = true,
                HeaderKind::Expect => {
                    self.expect_continue = header
                        .value
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"100-continue")
                }
                HeaderKind::ContentLength => framing.push_length(header.value),
                HeaderKind::TransferEncoding => framing.push_encoding(header.value),
                HeaderKind::OtherHopByHop | HeaderKind::EndToEnd => {}
            }
            self.headers.push(HeaderRange {
                name: range(name),
                value: range(header.value),
                kind,
            });
        }
        match hosts {
            0 if !self.http10 => return Err(HeadError::MissingHost),
            0 | 1 => {}
            _ => return Err(HeadError::RepeatedHost),
        }
        self.body = framing::request_length(&framing, self.http10)?;
        self.keep_alive = if self.http10 {
            connection.keep_alive && !connection.close
        } else {
            !connection.close
        };
        self.upgrade = connection.upgrade && upgrade_header;
        self.connection_names_others = connection.names_others;
        self.has_host = hosts == 1;
        self.raw.clear();
        self.raw.extend_from_slice(&buf[..len]);
        Ok(Parsed::Complete(len))
    }

    /// The request target as received: `/path?query`.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(p, _)| p)
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The first value of header `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every header line, names as received.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|h| (&self.raw[h.name.clone()], &self.raw[h.value.clone()]))
    }
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

// === impl ResponseHead ===

/// A parsed response head from an upstream, refilled for every response on its connection.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    raw: Vec<u8>,
    headers: Vec<HeaderRange>,
    /// `Connection` names headers beyond close/keep-alive/upgrade.
    connection_names_others: bool,
    pub(crate) status: u16,
    reason: Range<usize>,
    pub(crate) http10: bool,
    pub(crate) body: BodyLength,
    /// Whether the upstream lets the connection be reused after this response.
    pub(crate) keep_alive: bool,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead {
            raw: Vec::with_capacity(512),
            headers: Vec::with_capacity(16),
            connection_names_others: false,
            status: 0,
            reason: 0..0,
            http10: false,
            body: BodyLength::Empty,
            keep_alive: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResponseHeadError {
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("response header block is larger than {0} bytes")]
    TooLarge(usize),
    #[error("response status {0} is not between 100 and 599")]
    BadStatus(u16),
    #[error("response framing: {0}")]
    Framing(#[from] FramingError),
}

impl ResponseHead {
    /// Parses the response head at the front of `buf` (see [`RequestHead::parse`]).
    pub(crate) fn parse(
        &mut self,
        buf: &[u8],
        request_was_head: bool,
        max_bytes: usize,
    ) -> Result<Parsed, ResponseHeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let len = match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= max_bytes => len,
            Ok(httparse::Status::Complete(_)) => {
                return Err(ResponseHeadError::TooLarge(max_bytes))
            }
            Ok(httparse::Status::Partial) if buf.len() >= max_bytes => {
                return Err(ResponseHeadError::TooLarge(max_bytes))
            }
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(e) => return Err(ResponseHeadError::Parse(e)),
        };
        let base = buf.as_ptr() as usize;
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        self.status = match response.code {
            Some(code @ 100..=599) => code,
            other => return Err(ResponseHeadError::BadStatus(other.unwrap_or(0))),
        };
        self.http10 = response.version == Some(0);
        self.reason = range(response.reason.unwrap_or_default().as_bytes());
        self.headers.clear();
        let mut framing = FramingHeaders::default();
        let mut connection = ConnectionSays::default();
        for header in response.headers.iter() {
            let name = header.name.as_bytes();
            let kind = HeaderKind::of(name);
            match kind {
                HeaderKind::Connection => connection.read(header.value),
                HeaderKind::ContentLength => framing.push_length(header.value),
                HeaderKind::TransferEncoding => framing.push_encoding(header.value),
                _ => {}
            }
            self.headers.push(HeaderRange {
                name: range(name),
                value: range(header.value),
                kind,
            });
        }
        self.body = framing::response_length(self.status, request_was_head, &framing)?;
        self.keep_alive = if self.http10 {
            connection.keep_alive && !connection.close
        } else {
            !connection.close
        };
        self.connection_names_others = connection.names_others;
        self.raw.clear();
        self.raw.extend_from_slice(&buf[..len]);
        Ok(Parsed::Complete(len))
    }

    pub(crate) fn reason(&self) -> &[u8] {
        &self.raw[self.reason.clone()]
    }

    pub(crate) fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|h| (&self.raw[h.name.clone()], &self.raw[h.value.clone()]))
    }

    /// `101 Switching Protocols`: the connection becomes a tunnel.
    pub(crate) fn is_switching_protocols(&self) -> bool {
        self.status == 101
    }
}

// === writing heads ===

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the framing
/// headers, which the writer sets from the body it actually sends.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"proxy-authorization",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a header is named in the message's own `Connection` header (and so is hop-by-hop
/// too). `connection` holds that header's values.
pub(crate) fn listed_in_connection(connection: &[&[u8]], name: &[u8]) -> bool {
    connection
        .iter()
        .any(|value| tokens(value).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Changes to a request's headers on the way to the next hop.
#[derive(Default, Debug)]
pub(crate) struct HeaderEdits<'a> {
    /// The request target to send instead of the received one.
    pub(crate) target: Option<&'a str>,
    /// Header names (lowercase) to drop.
    pub(crate) remove: &'a [&'a str],
    /// Further header names (lowercase) to drop, from a route rule.
    pub(crate) remove_more: &'a [String],
    /// Headers to add (after any removal).
    pub(crate) add: &'a [(&'a str, &'a str)],
    /// More headers to add, from a route rule.
    pub(crate) add_more: &'a [(String, String)],
    /// The `Host` to send when the request has none (HTTP/1.0), since HTTP/1.1 requires one.
    pub(crate) default_host: Option<&'a str>,
}

impl HeaderEdits<'_> {
    /// Whether a received header is dropped by these edits (removed, or replaced by an added
    /// one of the same name).
    pub(crate) fn removes(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            || self
                .remove_more
                .iter()
                .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            || self
                .add
                .iter()
                .any(|(a, _)| a.as_bytes().eq_ignore_ascii_case(name))
            || self
                .add_more
                .iter()
                .any(|(a, _)| a.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Every header these edits add, in order.
    pub(crate) fn added(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.add
            .iter()
            .map(|(n, v)| (*n, *v))
            .chain(self.add_more.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

/// The values of a message's own `Connection` headers (at most four are looked at), whose
/// tokens name further hop-by-hop headers.
pub(crate) struct ConnectionTokens<'a> {
    values: [&'a [u8]; 4],
    len: usize,
}

impl<'a> ConnectionTokens<'a> {
    pub(crate) fn of(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut tokens = ConnectionTokens {
            values: [b""; 4],
            len: 0,
        };
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(b"connection") && tokens.len < tokens.values.len() {
                tokens.values[tokens.len] = value;
                tokens.len += 1;
            }
        }
        tokens
    }

    pub(crate) fn names(&self, name: &[u8]) -> bool {
        self.len > 0 && listed_in_connection(&self.values[..self.len], name)
    }
}

/// Whether a received request header goes on to the next hop: not hop-by-hop, not named in
/// `Connection`, not dropped by the edits.
pub(crate) fn forwards(
    name: &[u8],
    connection: &ConnectionTokens<'_>,
    edits: &HeaderEdits<'_>,
) -> bool {
    !(is_hop_by_hop(name) || edits.removes(name) || connection.names(name))
}

/// Writes the head of `request` for the next hop into `out`: the method, the (possibly new)
/// target, the end-to-end headers minus `edits.remove`, plus `edits.add`, and the framing
/// header for `body`. An upgrade request keeps its `Connection: upgrade` and `Upgrade`.
pub(crate) fn write_request_head(
    out: &mut Vec<u8>,
    request: &RequestHead,
    edits: &HeaderEdits<'_>,
    body: BodyLength,
) {
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(edits.target.unwrap_or(request.target()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !request.has_host {
        put_header(
            out,
            b"host",
            edits.default_host.unwrap_or("localhost").as_bytes(),
        );
    }
    for header in &request.headers {
        let name = &request.raw[header.name.clone()];
        let forward = match header.kind {
            HeaderKind::Upgrade => request.upgrade,
            // `Connection: host` cannot take away the one header HTTP/1.1 requires.
            HeaderKind::Host => !edits.removes(name),
            HeaderKind::Expect | HeaderKind::EndToEnd => {
                let dropped = edits.removes(name)
                    || (request.connection_names_others
                        && named_in_connection(&request.raw, &request.headers, name));
                !dropped
            }
            _ => false,
        };
        if forward {
            put_header(out, name, &request.raw[header.value.clone()]);
        }
    }
    if request.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    put_framing(out, body);
    for (name, value) in edits.added() {
        put_header(out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether `name` is listed in one of the head's `Connection` headers.
fn named_in_connection(raw: &[u8], headers: &[HeaderRange], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Connection)
        .any(|h| tokens(&raw[h.value.clone()]).any(|t| t.eq_ignore_ascii_case(name)))
}

/// What a response says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive,
    /// An HTTP/1.0 client asked to keep the connection: it must hear `Connection: keep-alive`.
    KeepAliveHttp10,
    /// The connection ends after this response.
    Close,
}

impl Persistence {
    pub(crate) fn of(keep_alive: bool, http10: bool) -> Persistence {
        match (keep_alive, http10) {
            (false, _) => Persistence::Close,
            (true, true) => Persistence::KeepAliveHttp10,
            (true, false) => Persistence::KeepAlive,
        }
    }

    pub(crate) fn header(self) -> &'static [u8] {
        match self {
            Persistence::KeepAlive => b"",
            Persistence::KeepAliveHttp10 => b"Connection: keep-alive\r\n",
            Persistence::Close => b"Connection: close\r\n",
        }
    }
}

/// Writes a response head for the client: status line, end-to-end headers, `body`'s framing
/// header, and what `persistence` says about the connection. `pass_length` keeps the
/// upstream's `Content-Length` as it was (answers to HEAD, and 304, describe a body they do
/// not carry).
pub(crate) fn write_response_head(
    out: &mut Vec<u8>,
    response: &ResponseHead,
    body: BodyLength,
    persistence: Persistence,
    pass_length: bool,
) {
    put_status_line(out, response.status, response.reason());
    let switching = response.is_switching_protocols();
    for header in &response.headers {
        let name = &response.raw[header.name.clone()];
        let forward = match header.kind {
            HeaderKind::Upgrade => switching,
            HeaderKind::ContentLength => pass_length,
            HeaderKind::Host | HeaderKind::Expect | HeaderKind::EndToEnd => {
                !(response.connection_names_others
                    && named_in_connection(&response.raw, &response.headers, name))
            }
            _ => false,
        };
        if forward {
            put_header(out, name, &response.raw[header.value.clone()]);
        }
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else {
        out.extend_from_slice(persistence.header());
    }
    put_framing(out, body);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn put_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(status));
    out.push(b' ');
    let reason = if reason.is_empty() {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("")
            .as_bytes()
    } else {
        reason
    };
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The framing header for a body about to be sent.
pub(crate) fn put_framing(out: &mut Vec<u8>, body: BodyLength) {
    match body {
        BodyLength::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            put_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyLength::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyLength::Empty | BodyLength::CloseDelimited => {}
    }
}

pub(crate) fn put_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<RequestHead, HeadError> {
        let mut head = RequestHead::default();
        match head.parse(raw.as_bytes(), 64 * 1024)? {
            Parsed::Complete(len) => {
                assert_eq!(len, raw.find("\r\n\r\n").unwrap() + 4);
                Ok(head)
            }
            Parsed::Partial => panic!("partial: {raw:?}"),
        }
    }

    #[test]
    fn a_request_head_with_its_target_headers_and_framing() {
        let head = parse("POST /v1.0/invoke/b/method/x?y=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.path(), "/v1.0/invoke/b/method/x");
        assert_eq!(head.query(), Some("y=1"));
        assert_eq!(head.header("x-a"), Some(&b"1"[..]));
        assert_eq!(head.body, BodyLength::Length(3));
        assert!(head.keep_alive && !head.http10 && !head.upgrade);
    }

    #[test]
    fn any_method_token_is_accepted() {
        let head = parse("FOO /x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(head.method.as_str(), "FOO");
    }

    #[test]
    fn host_is_required_once_in_http11() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\nX: 1\r\n\r\n").unwrap_err(),
            HeadError::MissingHost
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err(),
            HeadError::RepeatedHost
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn bad_heads_are_refused_with_the_right_status() {
        let cases = [
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
                501,
            ),
            ("GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400),
            ("GARBAGE\r\n\r\n", 400),
            ("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n", 501),
            ("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 501),
        ];
        for (raw, status) in cases {
            let err = parse(raw).unwrap_err();
            assert_eq!(err.status(), status, "{raw:?}: {err}");
        }
    }

    #[test]
    fn an_incomplete_head_waits_until_the_limit() {
        let mut head = RequestHead::default();
        assert!(matches!(
            head.parse(b"GET / HTTP/1.1\r\nHost", 100),
            Ok(Parsed::Partial)
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(200));
        assert_eq!(head.parse(long.as_bytes(), 100).unwrap_err().status(), 431);
        let mut many = "GET / HTTP/1.1\r\n".to_string();
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            head.parse(many.as_bytes(), 1 << 20).unwrap_err(),
            HeadError::TooManyHeaders
        );
    }

    #[test]
    fn the_forwarded_head_drops_hop_by_hop_headers_and_sets_its_own_framing() {
        let head = parse("POST /a?b HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nDapr-Api-Token: secret\r\nX-End: 2\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let edits = HeaderEdits {
            target: Some("/m/x?b"),
            remove: &["dapr-api-token"],
            add: &[("dapr-caller-app-id", "a")],
            ..HeaderEdits::default()
        };
        write_request_head(&mut out, &head, &edits, BodyLength::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /m/x?b HTTP/1.1\r\nHost: h\r\nX-End: 2\r\ntransfer-encoding: chunked\r\ndapr-caller-app-id: a\r\n\r\n"
        );
    }

    #[test]
    fn an_added_header_replaces_a_received_one() {
        let head =
            parse("GET / HTTP/1.1\r\nHost: h\r\ndapr-caller-app-id: forged\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let edits = HeaderEdits {
            add: &[("dapr-caller-app-id", "a")],
            ..HeaderEdits::default()
        };
        write_request_head(&mut out, &head, &edits, BodyLength::Empty);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\ndapr-caller-app-id: a\r\n\r\n"
        );
    }

    #[test]
    fn the_forwarded_head_always_carries_a_host() {
        let mut out = Vec::new();
        let edits = HeaderEdits {
            default_host: Some("b"),
            ..HeaderEdits::default()
        };
        let http10 = parse("GET /x HTTP/1.0\r\n\r\n").unwrap();
        write_request_head(&mut out, &http10, &edits, BodyLength::Empty);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nhost: b\r\n\r\n"
        );
        let mut out = Vec::new();
        let listed =
            parse("GET /x HTTP/1.1\r\nHost: h\r\nConnection: host, x-a\r\nX-A: 1\r\n\r\n").unwrap();
        write_request_head(&mut out, &listed, &edits, BodyLength::Empty);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
        );
    }

    #[test]
    fn response_statuses_outside_100_to_599_are_refused() {
        let mut response = ResponseHead::default();
        for raw in [
            &b"HTTP/1.1 000 Zero\r\n\r\n"[..],
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 600 High\r\n\r\n",
        ] {
            assert!(
                matches!(
                    response.parse(raw, false, 4096),
                    Err(ResponseHeadError::BadStatus(_))
                ),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn an_upgrade_request_keeps_its_upgrade_headers() {
        let head = parse(
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert!(head.upgrade);
        let mut out = Vec::new();
        write_request_head(&mut out, &head, &HeaderEdits::default(), BodyLength::Empty);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn a_response_head_and_its_rewrite() {
        let mut response = ResponseHead::default();
        let raw =
            b"HTTP/1.1 201 Made\r\nContent-Length: 2\r\nConnection: close\r\nX-A: b\r\n\r\nok";
        assert!(matches!(
            response.parse(raw, false, 4096),
            Ok(Parsed::Complete(n)) if n == raw.len() - 2
        ));
        assert_eq!(response.status, 201);
        assert!(!response.keep_alive);
        assert_eq!(response.body, BodyLength::Length(2));
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            &response,
            BodyLength::Length(2),
            Persistence::KeepAlive,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 201 Made\r\nX-A: b\r\ncontent-length: 2\r\n\r\n"
        );
        let mut out = Vec::new();
        put_status_line(&mut out, 404, b"");
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\n");
    }
}
