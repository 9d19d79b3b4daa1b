//! A subscriber app inside the test process: it answers `GET /dapr/subscribe` with the
//! subscriptions a test gives it, records every delivery (path, content type, body, when), and
//! answers each by a script the test can change at any time (status, body, delay) — to drive
//! every verdict, slow answers and failures. It also tracks how many deliveries it holds at
//! once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How the app answers one delivery.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    pub fn success() -> Answer {
        Answer::status(200, r#"{"status":"SUCCESS"}"#)
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

/// Decides the answer from the delivery's path, its body and how many times a delivery with
/// the same event id came before this one.
pub type Script = Arc<dyn Fn(&str, &Value, usize) -> Answer + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub content_type: String,
    pub body: Value,
    pub at: Instant,
}

impl Delivery {
    pub fn id(&self) -> &str {
        self.body["id"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    deliveries: Mutex<Vec<Delivery>>,
    seen: Mutex<HashMap<String, usize>>,
    subscribe: Mutex<Option<String>>,
    script: Mutex<Option<Script>>,
    current: AtomicUsize,
    most: AtomicUsize,
}

pub struct SubscriberApp {
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SubscriberApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SubscriberApp {
    /// Starts the app; `subscribe` is its `GET /dapr/subscribe` answer (`None`: 404).
    pub async fn start(subscribe: Option<Value>) -> SubscriberApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        *state.subscribe.lock().unwrap() = subscribe.map(|s| s.to_string());
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SubscriberApp { port, state, task }
    }

    /// Sets the `GET /dapr/subscribe` answer raw (for malformed answers).
    pub fn set_subscribe_raw(&self, text: &str) {
        *self.state.subscribe.lock().unwrap() = Some(text.to_string());
    }

    pub fn script(&self, script: impl Fn(&str, &Value, usize) -> Answer + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Some(Arc::new(script));
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    /// The most deliveries the app held at once.
    pub fn most_at_once(&self) -> usize {
        self.state.most.load(Ordering::SeqCst)
    }

    /// Waits until `check` holds for the deliveries, or panics after `limit` with them shown.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + limit;
        loop {
            let deliveries = self.deliveries();
            if check(&deliveries) {
                return deliveries;
            }
            if Instant::now() > deadline {
                let shown: Vec<String> = deliveries
                    .iter()
                    .rev()
                    .take(20)
                    .map(|d| format!("{} {}", d.path, d.body))
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}; {} deliveries, the last ones:\n{}",
                    deliveries.len(),
                    shown.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for `n` deliveries in all.
    pub async fn wait_count(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        self.wait_for(limit, &format!("{n} deliveries"), |d| d.len() >= n)
            .await
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    if request.method() == hyper::Method::GET && path == "/dapr/subscribe" {
        let subscribe = state.subscribe.lock().unwrap().clone();
        return match subscribe {
            Some(text) => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(text)))
                .unwrap(),
            None => Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        };
    }
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let now = state.current.fetch_add(1, Ordering::SeqCst) + 1;
    state.most.fetch_max(now, Ordering::SeqCst);
    let id = body["id"].as_str().unwrap_or("").to_string();
    let before = {
        let mut seen = state.seen.lock().unwrap();
        let count = seen.entry(id).or_default();
        *count += 1;
        *count - 1
    };
    state.deliveries.lock().unwrap().push(Delivery {
        path: path.clone(),
        content_type,
        body: body.clone(),
        at: Instant::now(),
    });
    let script = state.script.lock().unwrap().clone();
    let answer = match script {
        Some(script) => script(&path, &body, before),
        None => Answer::success(),
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    state.current.fetch_sub(1, Ordering::SeqCst);
    Response::builder()
        .status(answer.status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap()
}
