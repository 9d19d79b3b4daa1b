//! Exists for bench/benches/hot_path.rs; not an API.
//!
//! The micro-benchmarks measure the proxy's real hot-path code, which is crate-private. This
//! facade hands each piece out behind a plain function so that nothing else becomes public;
//! it copies no logic, so a benchmark always times what a request runs.

use std::sync::Arc;

use bytes::BytesMut;

use crate::blocks::invoke::{identity_headers, InvokeTarget, LOCAL_HEADERS};
use crate::http1::framing::{BodyDecoder, BodyLength, Decoded};
use crate::http1::head::{write_request_head, HeaderEdits, Parsed, RequestHead};
use crate::listeners::dapr_http::target::{classify, ApiRoute};
use crate::shared::Shared;
use crate::upstream::{EndpointSet, Endpoints as EndpointRegistry};

/// Classifies a request on the Dapr HTTP API as the listener does; true for an invocation.
pub fn classify_invoke(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    app_id_header: Option<&str>,
    authorization: Option<&str>,
) -> bool {
    matches!(
        classify(method, path, query, app_id_header, authorization),
        ApiRoute::Invoke(_)
    )
}

/// An endpoint set with its round-robin balancer, held the way a cluster holds one.
pub struct Endpoints(Arc<EndpointSet>);

impl Endpoints {
    /// Equal-weight endpoints at `addresses` (`host:port`).
    pub fn round_robin(addresses: &[&str]) -> Self {
        let registry = EndpointRegistry::default();
        let targets = addresses.iter().map(|a| ((*a).to_string(), 1)).collect();
        Endpoints(Arc::new(EndpointSet::round_robin(&registry, targets)))
    }

    /// The index of the endpoint a request's first attempt goes to; `None` if there are none.
    pub fn pick(&self) -> Option<usize> {
        self.0.pick(&[]).map(|(index, _)| index)
    }
}

/// A request head parsed the way a connection parses one, reused across parses.
#[derive(Default)]
pub struct Head(RequestHead);

impl Head {
    /// Parses `raw` (a whole head); the head's length.
    pub fn parse(&mut self, raw: &[u8]) -> usize {
        match self.0.parse(raw, 64 * 1024) {
            Ok(Parsed::Complete(len)) => len,
            other => panic!("not a whole valid head: {:?}", other.err()),
        }
    }

    /// Writes the head for the mesh hop into `out`, as an invocation by URL does: the method
    /// path as the target, the app's token and routing header dropped, caller and callee named.
    pub fn rewrite_for_invoke(
        &self,
        out: &mut Vec<u8>,
        method_path: &str,
        caller: &str,
        callee: &str,
    ) {
        let target = InvokeTarget {
            app_id: callee.to_string(),
            namespace: None,
            path_and_query: method_path.to_string(),
            via_basic_auth: false,
        };
        let (identity, count) = identity_headers(caller, &target, None);
        let edits = HeaderEdits {
            target: Some(method_path),
            remove: LOCAL_HEADERS,
            add: &identity[..count],
            ..HeaderEdits::default()
        };
        out.clear();
        write_request_head(out, &self.0, &edits, self.0.body);
    }
}

/// Decodes a whole chunked body held in `input`; the number of data bytes.
pub fn decode_chunked(input: &[u8]) -> usize {
    let mut buf = BytesMut::from(input);
    let mut decoder = BodyDecoder::new(BodyLength::Chunked);
    let mut data = 0;
    loop {
        match decoder.next(&mut buf).expect("valid chunked body") {
            Decoded::Data(n) => {
                data += n;
                let _ = buf.split_to(n);
            }
            Decoded::End => return data,
            Decoded::NeedMore => panic!("the chunked body is incomplete"),
        }
    }
}

/// Resolves `app_id` to its endpoints through the active snapshot, as an invocation does;
/// the number of endpoints, or `None` when nothing serves the app id.
pub async fn endpoints_for(shared: &Shared, app_id: &str) -> Option<usize> {
    let headers = http::HeaderMap::new();
    let request = crate::routing::RequestView {
        method: &http::Method::GET,
        path: "/api/v1/items",
        headers: &headers,
    };
    shared
        .resolve(app_id, None, &request)
        .await
        .map(|resolved| resolved.endpoints.len())
}
