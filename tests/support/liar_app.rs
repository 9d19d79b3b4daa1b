//! An app that misbehaves on purpose, by path: answers cut short, malformed framing, odd
//! statuses, floods of interim answers, silence. It counts the requests it read, by path, so a
//! test can tell whether the sidecar sent one twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::raw_app::complete_request;

pub struct LiarApp {
    pub port: u16,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LiarApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the app does after reading a request for `path`.
enum Script {
    /// Write these bytes and keep the connection.
    Answer(Vec<u8>),
    /// Write these bytes and close.
    AnswerThenClose(Vec<u8>),
    /// Write nothing, ever.
    Silent,
}

fn script(path: &str) -> Script {
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    match path {
        "/cut-short" => {
            Script::AnswerThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec())
        }
        "/bad-chunk" => Script::AnswerThenClose(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX".to_vec(),
        ),
        "/status-zero" => {
            Script::Answer(b"HTTP/1.1 000 Zero\r\ncontent-length: 0\r\n\r\n".to_vec())
        }
        "/gzip-chunked" => Script::Answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        "/interim-flood" => {
            let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100);
            bytes.extend_from_slice(&ok("finally"));
            Script::Answer(bytes)
        }
        "/silent" => Script::Silent,
        "/read-then-close" => Script::AnswerThenClose(Vec::new()),
        other => Script::Answer(ok(&format!("ok {other}"))),
    }
}

impl LiarApp {
    pub async fn start() -> LiarApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 8192];
                    loop {
                        while let Some(len) = complete_request(&pending) {
                            let head = String::from_utf8_lossy(&pending[..len]).to_string();
                            pending.drain(..len);
                            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                            *counted.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                            match script(&path) {
                                Script::Answer(bytes) => {
                                    if stream.write_all(&bytes).await.is_err() {
                                        return;
                                    }
                                }
                                Script::AnswerThenClose(bytes) => {
                                    let _ = stream.write_all(&bytes).await;
                                    return;
                                }
                                Script::Silent => {
                                    tokio::time::sleep(Duration::from_secs(600)).await;
                                    return;
                                }
                            }
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        LiarApp { port, counts, task }
    }

    /// How many requests for `path` the app read.
    pub fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}
