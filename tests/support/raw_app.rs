//! An app that records every byte it receives, per connection, and answers each request with
//! `200 ok`: to check exactly what a sidecar writes on the wire (framing, terminators, what
//! follows a body). Its parser is deliberately naive — it knows the tests' requests — so that
//! it cannot be lenient in the ways a real server would be.
//!
//! The sidecar's own `GET /dapr/subscribe` at start-up (asking for subscriptions) is answered
//! 404 and left out of the record: the tests look at what the sidecar forwards.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct RecordingApp {
    pub port: u16,
    /// Bytes received, one entry per accepted connection.
    pub connections: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingApp {
    pub async fn start() -> RecordingApp {
        RecordingApp::start_with(false).await
    }

    /// `close_after_each`: the app closes every connection right after its answer, without
    /// saying so (no `Connection: close`), as an app with a short keep-alive timeout does.
    pub async fn start_with(close_after_each: bool) -> RecordingApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let connections: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let recorded = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let index = {
                    let mut all = recorded.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        recorded.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(len) = complete_request(&pending) {
                            let subscribe = pending.starts_with(b"GET /dapr/subscribe ");
                            pending.drain(..len);
                            if subscribe {
                                recorded.lock().unwrap()[index].drain(..len);
                                let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                                if stream.write_all(answer).await.is_err() || close_after_each {
                                    return;
                                }
                                continue;
                            }
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() || close_after_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        RecordingApp {
            port,
            connections,
            task,
        }
    }

    /// Everything received so far, on every connection (but a connection that only carried
    /// the sidecar's subscription request).
    pub fn received(&self) -> Vec<Vec<u8>> {
        let all = self.connections.lock().unwrap();
        all.iter().filter(|c| !c.is_empty()).cloned().collect()
    }
}

/// The length of the first whole request in `buf`: a head, then a chunked body up to its
/// first `0\r\n\r\n`, or `Content-Length` bytes, or nothing.
pub fn complete_request(buf: &[u8]) -> Option<usize> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let body = &buf[head_end..];
        let end = if body.starts_with(b"0\r\n\r\n") {
            0
        } else {
            find(body, b"\r\n0\r\n\r\n")? + 2
        };
        return Some(head_end + end + 5);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How many times `needle` occurs in `haystack`.
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}
