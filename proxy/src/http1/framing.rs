//! HTTP/1.1 message body framing (RFC 9112 §6): how long a body is, read from the head, and
//! the chunked transfer coding, decoded incrementally and written back out.
//!
//! This is where request smuggling is stopped, so it is strict: a request with both
//! `Content-Length` and `Transfer-Encoding`, a `Content-Length` that is a list or repeated, a
//! transfer coding other than a single `chunked`, a chunk line with bare LF or stray bytes —
//! each is an error, never a guess. The forwarder re-encodes every chunked body it passes on, so
//! what reaches the next hop is canonical whatever the sender wrote.

use bytes::{Buf, BytesMut};

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// No body at all (no length header, or a response that cannot have one).
    Empty,
    /// Exactly this many bytes (`Content-Length`; may be 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the connection closes (responses only).
    CloseDelimited,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("request has both Content-Length and Transfer-Encoding; send one of them")]
    LengthAndEncoding,
    #[error("Content-Length {0:?} is not a single decimal number")]
    BadContentLength(String),
    #[error("Content-Length is given more than once")]
    RepeatedContentLength,
    #[error("Transfer-Encoding {0:?} is not supported; only \"chunked\" is")]
    UnsupportedEncoding(String),
    #[error("Transfer-Encoding is not allowed in an HTTP/1.0 request")]
    EncodingInHttp10,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    #[error("chunked body line is longer than {0} bytes")]
    ChunkLineTooLong(usize),
    #[error("chunked body trailers are larger than {0} bytes")]
    TrailersTooLarge(usize),
    #[error("the connection closed before the body ended")]
    Truncated,
}

/// The values of the framing headers of one head, as they were received.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FramingHeaders<'a> {
    /// Each `Content-Length` header value, in order (at most two are kept: two is already wrong).
    pub(crate) content_length: [Option<&'a [u8]>; 2],
    /// Each `Transfer-Encoding` header value (at most two kept).
    pub(crate) transfer_encoding: [Option<&'a [u8]>; 2],
}

impl<'a> FramingHeaders<'a> {
    /// Notes one header if it is a framing header.
    #[cfg(test)]
    pub(crate) fn observe(&mut self, name: &[u8], value: &'a [u8]) {
        if name.eq_ignore_ascii_case(b"content-length") {
            self.push_length(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.push_encoding(value);
        }
    }

    /// Notes a `Content-Length` value.
    pub(crate) fn push_length(&mut self, value: &'a [u8]) {
        push(&mut self.content_length, value);
    }

    /// Notes a `Transfer-Encoding` value.
    pub(crate) fn push_encoding(&mut self, value: &'a [u8]) {
        push(&mut self.transfer_encoding, value);
    }
}

fn push<'a>(slot: &mut [Option<&'a [u8]>; 2], value: &'a [u8]) {
    match slot {
        [None, _] => slot[0] = Some(value),
        [Some(_), None] => slot[1] = Some(value),
        // A third is as wrong as a second; the first two decide.
        _ => {}
    }
}

/// The body length of a request (RFC 9112 §6.3, rules 3–6, read strictly).
pub(crate) fn request_length(
    headers: &FramingHeaders<'_>,
    http10: bool,
) -> Result<BodyLength, FramingError> {
    if headers.transfer_encoding[0].is_some() {
        if headers.content_length[0].is_some() {
            return Err(FramingError::LengthAndEncoding);
        }
        if http10 {
            return Err(FramingError::EncodingInHttp10);
        }
        return chunked_only(&headers.transfer_encoding).map(|()| BodyLength::Chunked);
    }
    match headers.content_length {
        [None, _] => Ok(BodyLength::Empty),
        [Some(_), Some(_)] => Err(FramingError::RepeatedContentLength),
        [Some(value), None] => parse_content_length(value).map(BodyLength::Length),
    }
}

/// The body length of a response to a request with `request_method_head` (RFC 9112 §6.3,
/// rules 1–6). Lenient where the RFC allows it for responses (identical repeated lengths),
/// strict where a wrong guess would desynchronise the connection (any transfer coding but a
/// single `chunked`).
pub(crate) fn response_length(
    status: u16,
    request_was_head: bool,
    headers: &FramingHeaders<'_>,
) -> Result<BodyLength, FramingError> {
    if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(BodyLength::Empty);
    }
    if headers.transfer_encoding[0].is_some() {
        // A coding on top of chunked would have to be passed on undecoded, and one without
        // chunked runs to the close with no way to tell a cut body from a whole one: neither
        // is forwarded (Envoy answers 502 too).
        return chunked_only(&headers.transfer_encoding).map(|()| BodyLength::Chunked);
    }
    match headers.content_length {
        [None, _] => Ok(BodyLength::CloseDelimited),
        [Some(first), second] => {
            let length = parse_content_length_list(first)?;
            if let Some(second) = second {
                if parse_content_length_list(second)? != length {
                    return Err(FramingError::BadContentLength(
                        String::from_utf8_lossy(second).into_owned(),
                    ));
                }
            }
            Ok(BodyLength::Length(length))
        }
    }
}

/// `Transfer-Encoding` must be exactly one `chunked`, in one header.
fn chunked_only(values: &[Option<&[u8]>; 2]) -> Result<(), FramingError> {
    let shown = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match values {
        [Some(value), None] if trim(value).eq_ignore_ascii_case(b"chunked") => Ok(()),
        [Some(value), None] => Err(FramingError::UnsupportedEncoding(shown(value))),
        [Some(first), Some(second)] => Err(FramingError::UnsupportedEncoding(format!(
            "{}, {}",
            shown(first),
            shown(second)
        ))),
        [None, _] => Ok(()),
    }
}

/// A request's `Content-Length`: 1 to 19 digits, nothing else (no sign, no list, no spaces
/// inside).
fn parse_content_length(value: &[u8]) -> Result<u64, FramingError> {
    let digits = trim(value);
    let bad = || FramingError::BadContentLength(String::from_utf8_lossy(value).into_owned());
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    digits
        .iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(bad)
}

/// A response's `Content-Length`, which may be a list of identical values (RFC 9110 §8.6).
fn parse_content_length_list(value: &[u8]) -> Result<u64, FramingError> {
    let mut length = None;
    for part in value.split(|b| *b == b',') {
        let n = parse_content_length(part).map_err(|_| {
            FramingError::BadContentLength(String::from_utf8_lossy(value).into_owned())
        })?;
        if length.is_some_and(|l| l != n) {
            return Err(FramingError::BadContentLength(
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
        length = Some(n);
    }
    length.ok_or_else(|| FramingError::BadContentLength(String::new()))
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

// === impl ChunkedDecoder ===

/// The longest chunk-size line (size and extensions) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted after the last chunk (they are read and dropped).
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;

/// Decodes a chunked body incrementally from the front of a buffer.
///
/// [`ChunkedDecoder::decode`] consumes framing bytes and reports how many data bytes now sit
/// at the front of the buffer; the caller takes exactly those (and nothing after them) before
/// calling again. Bytes after the final CRLF are left untouched: on a keep-alive connection
/// they are the next message.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    /// Data bytes left in the current chunk.
    remaining: u64,
    /// Bytes of the current size line or trailer section seen so far (for the limits).
    line: usize,
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size (at least one).
    Size {
        digits: u8,
    },
    /// After the size: optional whitespace, then `;` extensions or CR.
    AfterSize,
    /// Inside chunk extensions, until CR.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line, until CR.
    Trailer,
    /// Expecting the LF ending a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    Done,
}

/// What one call of [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// This many data bytes are at the front of the buffer.
    Data(usize),
    /// The buffer holds no complete piece; read more and call again.
    NeedMore,
    /// The body ended (last chunk and trailers consumed).
    End,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { digits: 0 },
            remaining: 0,
            line: 0,
            trailers: 0,
        }
    }
}

impl ChunkedDecoder {
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        use ChunkState::*;
        loop {
            if self.state == Done {
                return Ok(Decoded::End);
            }
            if self.state == Data {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (buf.len() as u64).min(self.remaining) as usize;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = DataCr;
                }
                return Ok(Decoded::Data(n));
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = match (self.state, byte) {
                (Size { digits }, b) if b.is_ascii_hexdigit() => {
                    if digits == 16 {
                        return Err(FramingError::BadChunk("chunk size is too large"));
                    }
                    let value = u64::from(hex_value(b));
                    self.remaining = (self.remaining << 4) | value;
                    self.bump_line()?;
                    Size { digits: digits + 1 }
                }
                (Size { digits: 0 }, _) => {
                    return Err(FramingError::BadChunk("expected a hexadecimal chunk size"))
                }
                (Size { .. } | AfterSize, b' ' | b'\t') => {
                    self.bump_line()?;
                    AfterSize
                }
                (Size { .. } | AfterSize, b';') => {
                    self.bump_line()?;
                    Extension
                }
                (Size { .. } | AfterSize | Extension, b'\r') => SizeLf,
                (Size { .. } | AfterSize, _) => {
                    return Err(FramingError::BadChunk(
                        "unexpected byte after the chunk size",
                    ))
                }
                (Extension, b'\n') => {
                    return Err(FramingError::BadChunk("bare LF in a chunk extension"))
                }
                (Extension, b) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                    self.bump_line()?;
                    Extension
                }
                (Extension, _) => {
                    return Err(FramingError::BadChunk("control byte in a chunk extension"))
                }
                (SizeLf, b'\n') => {
                    self.line = 0;
                    if self.remaining == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (SizeLf, _) => {
                    return Err(FramingError::BadChunk("chunk size line must end with CRLF"))
                }
                (DataCr, b'\r') => DataLf,
                (DataCr, _) => {
                    return Err(FramingError::BadChunk("chunk data is longer than its size"))
                }
                (DataLf, b'\n') => Size { digits: 0 },
                (DataLf, _) => return Err(FramingError::BadChunk("chunk data must end with CRLF")),
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, b'\n') => {
                    return Err(FramingError::BadChunk("bare LF in the trailer section"))
                }
                (Trailer, b'\r') => TrailerLf,
                (TrailerStart | Trailer, _) => {
                    self.bump_trailers()?;
                    Trailer
                }
                (TrailerLf, b'\n') => {
                    self.bump_trailers()?;
                    TrailerStart
                }
                (TrailerLf, _) => {
                    return Err(FramingError::BadChunk("trailer line must end with CRLF"))
                }
                (EndLf, b'\n') => Done,
                (EndLf, _) => {
                    return Err(FramingError::BadChunk("chunked body must end with CRLF"))
                }
                (Data | Done, _) => unreachable!("handled before reading a byte"),
            };
        }
    }

    fn bump_line(&mut self) -> Result<(), FramingError> {
        self.line += 1;
        if self.line > MAX_CHUNK_LINE {
            return Err(FramingError::ChunkLineTooLong(MAX_CHUNK_LINE));
        }
        Ok(())
    }

    fn bump_trailers(&mut self) -> Result<(), FramingError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(FramingError::TrailersTooLarge(MAX_TRAILERS));
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

// === impl BodyDecoder ===

/// Where a body being read stands: how much is left, or the chunked decoder's state. One
/// decoder serves request and response bodies of every framing.
#[derive(Debug, Clone)]
pub(crate) enum BodyDecoder {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// A response body that runs until the connection closes.
    UntilClose,
}

impl BodyDecoder {
    pub(crate) fn new(length: BodyLength) -> BodyDecoder {
        match length {
            BodyLength::Empty | BodyLength::Length(0) => BodyDecoder::Done,
            BodyLength::Length(n) => BodyDecoder::Length(n),
            BodyLength::Chunked => BodyDecoder::Chunked(ChunkedDecoder::default()),
            BodyLength::CloseDelimited => BodyDecoder::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    /// Finds the next piece of body data at the front of `buf`. On `Data(n)` the caller takes
    /// exactly `n` bytes from the front of `buf` before calling again.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        match self {
            BodyDecoder::Done => Ok(Decoded::End),
            BodyDecoder::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*remaining).min(buf.len() as u64);
                *remaining -= n;
                if *remaining == 0 {
                    *self = BodyDecoder::Done;
                }
                Ok(Decoded::Data(n as usize))
            }
            BodyDecoder::Chunked(decoder) => {
                let decoded = decoder.decode(buf)?;
                if decoded == Decoded::End {
                    *self = BodyDecoder::Done;
                }
                Ok(decoded)
            }
            BodyDecoder::UntilClose if buf.is_empty() => Ok(Decoded::NeedMore),
            BodyDecoder::UntilClose => Ok(Decoded::Data(buf.len())),
        }
    }

    /// The peer closed the connection: the end of a body that runs until the close, and a
    /// truncation of any other.
    pub(crate) fn end_of_input(&mut self) -> Result<(), FramingError> {
        match self {
            BodyDecoder::UntilClose | BodyDecoder::Done => {
                *self = BodyDecoder::Done;
                Ok(())
            }
            _ => Err(FramingError::Truncated),
        }
    }
}

// === encoding ===

/// Appends the size line of a chunk of `len` data bytes (`len` > 0).
pub(crate) fn put_chunk_header(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len > 0, "a zero-size chunk would end the body");
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends body data framed as `out` says: as one chunk for a chunked body, as is otherwise.
pub(crate) fn put_body(out: &mut Vec<u8>, data: &[u8], framing: BodyLength) {
    if framing == BodyLength::Chunked {
        put_chunk(out, data);
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends one whole chunk.
pub(crate) fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    put_chunk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the empty trailer section: written exactly once per chunked body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(cl: &[&'a str], te: &[&'a str]) -> FramingHeaders<'a> {
        let mut h = FramingHeaders::default();
        for v in cl {
            h.observe(b"Content-Length", v.as_bytes());
        }
        for v in te {
            h.observe(b"transfer-encoding", v.as_bytes());
        }
        h
    }

    #[test]
    fn a_request_without_length_headers_has_no_body() {
        assert_eq!(
            request_length(&headers(&[], &[]), false),
            Ok(BodyLength::Empty)
        );
    }

    #[test]
    fn a_request_content_length_is_a_single_number() {
        assert_eq!(
            request_length(&headers(&["5"], &[]), false),
            Ok(BodyLength::Length(5))
        );
        assert_eq!(
            request_length(&headers(&[" 0 "], &[]), false),
            Ok(BodyLength::Length(0))
        );
        assert_eq!(
            request_length(&headers(&["18446744073709551615"], &[]), false),
            Err(FramingError::BadContentLength(
                "18446744073709551615".into()
            ))
        );
        assert_eq!(
            request_length(&headers(&["9999999999999999999"], &[]), false),
            Ok(BodyLength::Length(9_999_999_999_999_999_999))
        );
        for bad in [
            "5, 5",
            "5,6",
            "+5",
            "-1",
            "0x10",
            "",
            " ",
            "5 5",
            "1e3",
            "٣",
            "99999999999999999999",
        ] {
            assert!(
                matches!(
                    request_length(&headers(&[bad], &[]), false),
                    Err(FramingError::BadContentLength(_))
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_repeated_content_length_is_refused_even_when_equal() {
        assert_eq!(
            request_length(&headers(&["5", "5"], &[]), false),
            Err(FramingError::RepeatedContentLength)
        );
        assert_eq!(
            request_length(&headers(&["5", "6"], &[]), false),
            Err(FramingError::RepeatedContentLength)
        );
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        assert_eq!(
            request_length(&headers(&["5"], &["chunked"]), false),
            Err(FramingError::LengthAndEncoding)
        );
        assert_eq!(
            request_length(&headers(&["5"], &["gzip"]), false),
            Err(FramingError::LengthAndEncoding)
        );
    }

    #[test]
    fn only_a_single_chunked_coding_is_accepted() {
        for ok in ["chunked", "Chunked", " CHUNKED "] {
            assert_eq!(
                request_length(&headers(&[], &[ok]), false),
                Ok(BodyLength::Chunked),
                "{ok:?}"
            );
        }
        for bad in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "chunked;q=1",
            "",
            "xchunked",
        ] {
            assert!(
                matches!(
                    request_length(&headers(&[], &[bad]), false),
                    Err(FramingError::UnsupportedEncoding(_))
                ),
                "{bad:?} was accepted"
            );
        }
        assert!(matches!(
            request_length(&headers(&[], &["chunked", "chunked"]), false),
            Err(FramingError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn transfer_encoding_in_http10_is_refused() {
        assert_eq!(
            request_length(&headers(&[], &["chunked"]), true),
            Err(FramingError::EncodingInHttp10)
        );
    }

    #[test]
    fn responses_that_cannot_have_a_body() {
        let h = headers(&["10"], &[]);
        for status in [100, 101, 103, 199, 204, 304] {
            assert_eq!(response_length(status, false, &h), Ok(BodyLength::Empty));
        }
        assert_eq!(response_length(200, true, &h), Ok(BodyLength::Empty));
        assert_eq!(response_length(200, false, &h), Ok(BodyLength::Length(10)));
    }

    #[test]
    fn response_lengths() {
        assert_eq!(
            response_length(200, false, &headers(&[], &[])),
            Ok(BodyLength::CloseDelimited)
        );
        assert_eq!(
            response_length(200, false, &headers(&[], &["chunked"])),
            Ok(BodyLength::Chunked)
        );
        // Chunked wins over a length in a response (rule 3); the length is not forwarded.
        assert_eq!(
            response_length(200, false, &headers(&["3"], &["chunked"])),
            Ok(BodyLength::Chunked)
        );
        for coding in ["gzip", "gzip, chunked", "identity"] {
            assert!(
                matches!(
                    response_length(200, false, &headers(&["5"], &[coding])),
                    Err(FramingError::UnsupportedEncoding(_))
                ),
                "{coding}"
            );
        }
        assert!(response_length(200, false, &headers(&[], &["chunked", "chunked"])).is_err());
        assert_eq!(
            response_length(200, false, &headers(&["7, 7"], &[])),
            Ok(BodyLength::Length(7))
        );
        assert_eq!(
            response_length(200, false, &headers(&["7", "7"], &[])),
            Ok(BodyLength::Length(7))
        );
        assert!(response_length(200, false, &headers(&["7, 8"], &[])).is_err());
        assert!(response_length(200, false, &headers(&["7", "8"], &[])).is_err());
        assert!(response_length(200, false, &headers(&["x"], &[])).is_err());
    }

    /// Decodes `input` fed in pieces of `step` bytes; returns the data and what was left after
    /// the body.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), FramingError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(n) => data.extend_from_slice(&buf.split_to(n)),
                Decoded::End => {
                    buf.extend_from_slice(&input[fed..]);
                    return Ok((data, buf.to_vec()));
                }
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(FramingError::BadChunk("test input ended early"));
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_whatever_the_read_sizes() {
        let input = b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, 64, 1000] {
            let (data, rest) = decode_all(input, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "step {step}");
            assert_eq!(rest, b"GET /next", "step {step}");
        }
    }

    #[test]
    fn an_empty_chunked_body_and_uppercase_hex() {
        assert_eq!(decode_all(b"0\r\n\r\n", 1).unwrap().0, b"");
        let (data, _) =
            decode_all(b"1F\r\n0123456789012345678901234567890\r\n0\r\n\r\n", 5).unwrap();
        assert_eq!(data.len(), 31);
    }

    #[test]
    fn whitespace_before_extensions_and_the_line_end_is_allowed() {
        assert_eq!(
            decode_all(b"5 ;ext\r\nhello\r\n0 \r\n\r\n", 1).unwrap().0,
            b"hello"
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        let cases: &[&[u8]] = &[
            b"zz\r\nhello\r\n0\r\n\r\n",       // not hex
            b"\r\nhello\r\n0\r\n\r\n",         // empty size
            b"5\nhello\r\n0\r\n\r\n",          // bare LF after size
            b"5\r\nhelloX\r\n0\r\n\r\n",       // data longer than the size
            b"5\r\nhello\n0\r\n\r\n",          // bare LF after data
            b"5\r\nhello\r\r\n0\r\n\r\n",      // CR CR
            b"0\r\n\n",                        // bare LF at the end
            b"0\r\nX: 1\n\r\n",                // bare LF in trailers
            b"0\r\n\r\r",                      // bad final line
            b"-5\r\nhello\r\n0\r\n\r\n",       // sign
            b"0x5\r\nhello\r\n0\r\n\r\n",      // 0x prefix
            b"5 5\r\nhello\r\n0\r\n\r\n",      // two numbers
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n", // control byte in an extension
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",   // bare LF in an extension
            b"10000000000000000\r\n",          // 17 hex digits
        ];
        for (i, case) in cases.iter().enumerate() {
            for step in [1, 100] {
                let got = decode_all(case, step);
                assert!(
                    matches!(got, Err(FramingError::BadChunk(m)) if m != "test input ended early"),
                    "case {i} ({:?}) step {step}: {got:?}",
                    String::from_utf8_lossy(case)
                );
            }
        }
    }

    #[test]
    fn the_largest_chunk_size_is_accepted_and_the_limits_hold() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Data(2)));
        assert_eq!(decoder.remaining, u64::MAX - 2);

        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        long_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            decode_all(&long_ext, 512),
            Err(FramingError::ChunkLineTooLong(MAX_CHUNK_LINE))
        );

        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 8 + 1 {
            trailers.extend_from_slice(b"X: 1234\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_all(&trailers, 4096),
            Err(FramingError::TrailersTooLarge(MAX_TRAILERS))
        );
    }

    #[test]
    fn a_smuggled_request_after_the_last_chunk_stays_in_the_buffer() {
        // The bytes after the terminating chunk are never body: they are the next request, and
        // the connection handles them as one (or refuses them), never as part of this body.
        let (data, rest) =
            decode_all(b"3\r\nabc\r\n0\r\n\r\nPOST /admin HTTP/1.1\r\n\r\n", 4).unwrap();
        assert_eq!(data, b"abc");
        assert_eq!(rest, b"POST /admin HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_leaves_the_rest() {
        let mut decoder = BodyDecoder::new(BodyLength::Length(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(decoder.next(&mut buf), Ok(Decoded::Data(3)));
        buf.clear();
        assert_eq!(decoder.next(&mut buf), Ok(Decoded::NeedMore));
        buf.extend_from_slice(b"loGET");
        assert_eq!(decoder.next(&mut buf), Ok(Decoded::Data(2)));
        buf.advance(2);
        assert_eq!(decoder.next(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET");
        assert!(decoder.is_done());
        assert_eq!(decoder.end_of_input(), Ok(()));
    }

    #[test]
    fn only_a_body_until_close_may_end_with_the_connection() {
        let mut until_close = BodyDecoder::new(BodyLength::CloseDelimited);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(until_close.next(&mut buf), Ok(Decoded::Data(3)));
        assert_eq!(until_close.end_of_input(), Ok(()));
        assert!(until_close.is_done());
        let mut short = BodyDecoder::new(BodyLength::Length(9));
        assert_eq!(short.end_of_input(), Err(FramingError::Truncated));
        let mut chunked = BodyDecoder::new(BodyLength::Chunked);
        assert_eq!(chunked.end_of_input(), Err(FramingError::Truncated));
        assert!(BodyDecoder::new(BodyLength::Empty).is_done());
        assert!(BodyDecoder::new(BodyLength::Length(0)).is_done());
    }

    #[test]
    fn encoding_writes_hex_sizes_and_one_terminator() {
        let mut out = Vec::new();
        put_chunk(&mut out, b"hello");
        put_chunk(&mut out, &[b'x'; 26]);
        put_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let mut expected = b"5\r\nhello\r\n1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(out, expected);
        let (data, rest) = decode_all(&out, 3).unwrap();
        assert_eq!(data.len(), 31);
        assert!(rest.is_empty());
        let mut big = Vec::new();
        put_chunk_header(&mut big, usize::MAX);
        assert_eq!(big, b"ffffffffffffffff\r\n");
    }
}
