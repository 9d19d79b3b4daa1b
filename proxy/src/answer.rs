//! A response the sidecar makes itself (health, metadata, state, errors), written the same way
//! on HTTP/1.1 and HTTP/2.

use bytes::Bytes;

use crate::blocks::BlockError;

#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Headers besides the body's length, lowercase names.
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
    /// Close the connection after answering (HTTP/1.1: the request's framing can't be trusted).
    pub(crate) close: bool,
}

impl Answer {
    /// `204 No Content`, Dapr's empty success.
    pub(crate) fn no_content() -> Answer {
        Answer {
            status: 204,
            headers: Vec::new(),
            body: Bytes::new(),
            close: false,
        }
    }

    /// `status` with a JSON body.
    pub(crate) fn json(status: u16, body: impl Into<Bytes>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: body.into(),
            close: false,
        }
    }

    /// `status` with a plain-text body.
    pub(crate) fn text(status: u16, content_type: &str, body: impl Into<Bytes>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", content_type.to_string())],
            body: body.into(),
            close: false,
        }
    }

    pub(crate) fn closing(mut self) -> Answer {
        self.close = true;
        self
    }
}

impl From<BlockError> for Answer {
    /// Dapr's error shape: `{"errorCode":"ERR_…","message":"…"}`, as the SDKs parse it.
    fn from(error: BlockError) -> Answer {
        let body = serde_json::json!({ "errorCode": error.code, "message": error.message });
        Answer::json(error.status, body.to_string())
    }
}
