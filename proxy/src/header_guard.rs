//! Checks on a request's framing and size that must happen before anything is forwarded.
//!
//! pingora already answers unparseable requests, invalid `Content-Length`s and malformed
//! chunks with 400. Two things it lets through are refused here: a request carrying both
//! `Content-Length` and `Transfer-Encoding` (pingora drops the length and carries on; a
//! request like that is the classic smuggling vector, so we refuse it as Envoy does), and a
//! header block over the configured limit (431).

use pingora::proxy::Session;

use crate::errors::{ApiError, ERR_HEADERS_TOO_LARGE, ERR_MALFORMED_REQUEST};

pub(crate) fn check(session: &Session, max_header_bytes: usize) -> Result<(), ApiError> {
    let Some(h1) = session.as_http1() else {
        // HTTP/2 bounds its header list in the protocol (SETTINGS_MAX_HEADER_LIST_SIZE) and
        // has no Transfer-Encoding.
        return Ok(());
    };
    let raw = h1.get_headers_raw_bytes();
    if raw.len() > max_header_bytes {
        return Err(ApiError::new(
            431,
            ERR_HEADERS_TOO_LARGE,
            format!(
                "request header block is {} bytes; the limit is {max_header_bytes}",
                raw.len()
            ),
        )
        .closing());
    }
    let mut content_length = false;
    let mut transfer_encoding = false;
    for line in raw.split(|b| *b == b'\n').skip(1) {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        content_length |= name.eq_ignore_ascii_case(b"content-length");
        transfer_encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    if content_length && transfer_encoding {
        return Err(ApiError::new(
            400,
            ERR_MALFORMED_REQUEST,
            "request has both Content-Length and Transfer-Encoding; send one of them",
        )
        .closing());
    }
    Ok(())
}
