//! The building blocks, independent of the wire they are called over: typed requests in,
//! typed results or a [`BlockError`] out. The Dapr HTTP listener decodes and encodes around
//! them; the gRPC API will do the same with protobuf.

pub(crate) mod invoke;
pub(crate) mod metadata;
pub(crate) mod pubsub;
pub(crate) mod state;

pub(crate) const ERR_DIRECT_INVOKE: &str = "ERR_DIRECT_INVOKE";
pub(crate) const ERR_MALFORMED_REQUEST: &str = "ERR_MALFORMED_REQUEST";
pub(crate) const ERR_UNAUTHORIZED: &str = "ERR_UNAUTHORIZED";
pub(crate) const ERR_HEADERS_TOO_LARGE: &str = "ERR_HEADERS_TOO_LARGE";

/// A building block's refusal or failure: the HTTP status and Dapr error code daprd answers
/// with, and the message a user acts on. The gRPC status follows from the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl BlockError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        BlockError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        BlockError::new(400, ERR_MALFORMED_REQUEST, message)
    }

    /// Dapr's wording for a failed invocation.
    pub(crate) fn invoke(app_id: &str, err: impl std::fmt::Display) -> Self {
        BlockError::new(
            500,
            ERR_DIRECT_INVOKE,
            format!("failed to invoke, id: {app_id}, err: {err}"),
        )
    }

    /// The gRPC status code daprd's gRPC API answers with for the same failure.
    #[allow(dead_code)] // read by the gRPC API listener (issue 15); tested below
    pub(crate) fn grpc_code(&self) -> tonic::Code {
        match self.status {
            400 | 405 | 413 => tonic::Code::InvalidArgument,
            401 => tonic::Code::Unauthenticated,
            403 => tonic::Code::PermissionDenied,
            404 => tonic::Code::NotFound,
            409 => tonic::Code::Aborted,
            429 => tonic::Code::ResourceExhausted,
            504 => tonic::Code::DeadlineExceeded,
            503 => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        }
    }
}

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_http_status() {
        let code = |status| BlockError::new(status, "X", "m").grpc_code();
        assert_eq!(code(400), tonic::Code::InvalidArgument);
        assert_eq!(code(409), tonic::Code::Aborted);
        assert_eq!(code(404), tonic::Code::NotFound);
        assert_eq!(code(504), tonic::Code::DeadlineExceeded);
        assert_eq!(code(500), tonic::Code::Internal);
    }
}
