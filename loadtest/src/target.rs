//! Where the load goes and what it sends: the URL checked and resolved to one socket address,
//! and a request built once that every exchange clones (headers and body are shared, not
//! rebuilt, so the hot path allocates only the header map copy hyper consumes).

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use http_body_util::Full;

use crate::run::LoadError;
use crate::spec::{LoadSpec, Protocol};

/// The request body type every connection sends.
pub(crate) type Body = Full<Bytes>;

/// A checked, resolved target and its prebuilt request.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    request: Request<Body>,
}

impl Target {
    /// Checks the URL and headers of `spec`, resolves the host and builds the request.
    pub(crate) async fn resolve(spec: &LoadSpec) -> Result<Self, LoadError> {
        let uri: Uri = spec
            .url
            .parse()
            .map_err(|e| bad_url(spec, format!("{e}")))?;
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => {}
            Some(scheme) if *scheme == Scheme::HTTPS => {
                return Err(LoadError::HttpsUnsupported {
                    url: spec.url.clone(),
                })
            }
            Some(other) => return Err(bad_url(spec, format!("unsupported scheme {other:?}"))),
            None => return Err(bad_url(spec, "missing the http:// scheme".into())),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad_url(spec, "missing host".into()))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(bad_url(spec, "user info is not supported".into()));
        }
        // `Uri::host` keeps the brackets of an IPv6 literal; the resolver wants them off.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| LoadError::Resolve {
                host: host.to_string(),
                source,
            })?
            .next()
            .ok_or_else(|| LoadError::Resolve {
                host: host.to_string(),
                source: std::io::Error::other("no addresses"),
            })?;

        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // HTTP/1.1 sends origin-form (`GET /path`) plus a Host header; HTTP/2 needs the
        // absolute URI so hyper can fill in `:scheme` and `:authority`.
        let (request_uri, version) = match spec.protocol {
            Protocol::Http1 => (Uri::from(path), Version::HTTP_11),
            Protocol::Http2 => {
                let absolute = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority.clone())
                    .path_and_query(path)
                    .build()
                    .map_err(|e| bad_url(spec, format!("{e}")))?;
                (absolute, Version::HTTP_2)
            }
        };

        let mut request = Request::new(Full::new(spec.body.clone()));
        *request.method_mut() = spec.method.clone();
        *request.uri_mut() = request_uri;
        *request.version_mut() = version;
        let headers = request.headers_mut();
        for (name, value) in &spec.headers {
            let bad = |reason: String| LoadError::BadHeader {
                header: format!("{name}: {value}"),
                reason,
            };
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| bad(format!("bad name: {e}")))?;
            let value =
                HeaderValue::from_str(value.trim()).map_err(|e| bad(format!("bad value: {e}")))?;
            headers.append(name, value);
        }
        if spec.protocol == Protocol::Http1 && !headers.contains_key(HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| bad_url(spec, format!("host is not a header value: {e}")))?;
            headers.insert(HOST, host);
        }
        Ok(Target { addr, request })
    }

    /// A fresh copy of the prebuilt request: the body and header values are reference-counted
    /// `Bytes`, so this copies pointers, not payloads.
    pub(crate) fn request(&self) -> Request<Body> {
        self.request.clone()
    }
}

fn bad_url(spec: &LoadSpec, reason: String) -> LoadError {
    LoadError::BadUrl {
        url: spec.url.clone(),
        reason,
    }
}
