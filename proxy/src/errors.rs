//! Dapr-shaped error responses: `{"errorCode":"ERR_…","message":"…"}` with
//! `Content-Type: application/json`, as the Dapr SDKs parse them.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorSource, ErrorType};

pub(crate) const ERR_DIRECT_INVOKE: &str = "ERR_DIRECT_INVOKE";
pub(crate) const ERR_MALFORMED_REQUEST: &str = "ERR_MALFORMED_REQUEST";
pub(crate) const ERR_UNAUTHORIZED: &str = "ERR_UNAUTHORIZED";
pub(crate) const ERR_HEADERS_TOO_LARGE: &str = "ERR_HEADERS_TOO_LARGE";

/// An error the sidecar answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Close the connection after answering (the request framing cannot be trusted).
    pub(crate) close: bool,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            close: false,
        }
    }

    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Dapr's wording for a failed invocation.
    pub(crate) fn invoke(app_id: &str, err: impl std::fmt::Display) -> Self {
        ApiError::new(
            500,
            ERR_DIRECT_INVOKE,
            format!("failed to invoke, id: {app_id}, err: {err}"),
        )
    }

    pub(crate) fn body(&self) -> Bytes {
        let body = serde_json::json!({ "errorCode": self.code, "message": self.message });
        Bytes::from(body.to_string())
    }

    /// Writes the error as the whole response.
    pub(crate) async fn send(&self, session: &mut Session) -> pingora::Result<()> {
        let body = self.body();
        let mut header = ResponseHeader::build(self.status, Some(3))?;
        header.insert_header("content-type", "application/json")?;
        header.insert_header("content-length", body.len().to_string())?;
        if self.close {
            header.insert_header("connection", "close")?;
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await
    }
}

/// Sends `204 No Content` (Dapr's empty success).
pub(crate) async fn send_no_content(session: &mut Session) -> pingora::Result<()> {
    let header = ResponseHeader::build(204, Some(1))?;
    session.write_response_header(Box::new(header), true).await
}

/// Sends a JSON body with status 200.
pub(crate) async fn send_json(session: &mut Session, body: Bytes) -> pingora::Result<()> {
    send_body(session, &[("content-type", "application/json")], body).await
}

/// Sends `body` with status 200 and the given headers (plus its length).
pub(crate) async fn send_body(
    session: &mut Session,
    headers: &[(&'static str, &str)],
    body: Bytes,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(200, Some(headers.len() + 1))?;
    for (name, value) in headers {
        header.insert_header(*name, *value)?;
    }
    header.insert_header("content-length", body.len().to_string())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// The answer to a request pingora could not proxy, shared by every listener: nothing once the
/// response has started (the connection is cut), 400 and close for a malformed request,
/// nothing for a client that went away, and `upstream` for everything else.
pub(crate) async fn fail_to_proxy(
    session: &mut Session,
    e: &Error,
    upstream: impl FnOnce() -> ApiError,
) -> FailToProxy {
    let error = if session.response_written().is_some() {
        None
    } else if is_client_fault(e) {
        match e.etype() {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => None,
            _ => Some(
                ApiError::new(
                    400,
                    ERR_MALFORMED_REQUEST,
                    format!("malformed request: {e}"),
                )
                .closing(),
            ),
        }
    } else {
        Some(upstream())
    };
    let code = match error {
        Some(error) => {
            if let Err(write) = error.send(session).await {
                tracing::debug!(error = %write, "could not send the error response");
            }
            error.status
        }
        None => 0,
    };
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

/// A short account of a proxy error for a user: the error kind and its root cause.
pub(crate) fn describe(e: &Error) -> String {
    match (&e.cause, &e.context) {
        (Some(cause), _) => format!("{} ({cause})", e.etype().as_str()),
        (None, Some(context)) => format!("{} ({context})", e.etype().as_str()),
        (None, None) => e.etype().as_str().to_string(),
    }
}

/// Whether pingora should keep quiet about `e`: a client that hangs up or sends garbage is the
/// client's problem, and under load (a benchmark stopping) it would flood the log; the
/// response and the metrics still account for it.
pub(crate) fn is_client_fault(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
}
