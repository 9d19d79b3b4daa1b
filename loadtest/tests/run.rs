//! The generator against a tiny in-process target (HTTP/1.1 and h2c on one port). These tests
//! assert counts, statuses and error kinds, never latency values: the machine is noisy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outrigger_load::{run, LoadError, LoadReport, LoadSpec, Mode, Protocol};
use tokio::net::TcpListener;

/// How the test target answers every request.
#[derive(Clone, Copy)]
enum Answer {
    /// This status, with a small body.
    Status(u16),
    /// 200 to HTTP/2 requests, 505 to anything else.
    OnlyHttp2,
    /// 200 with `connection: close`, so every HTTP/1.1 connection carries one exchange.
    CloseAfterEach,
    /// Nothing, for a minute.
    Stall,
    /// 200 after this many milliseconds.
    Slow(u64),
}

struct Target {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

impl Target {
    async fn start(answer: Answer) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        respond(request, answer)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Target { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}/echo?x=1", self.addr)
    }
}

async fn respond(
    request: Request<Incoming>,
    answer: Answer,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = Full::new(Bytes::from_static(b"hello from the target\n"));
    let mut response = Response::new(body);
    match answer {
        Answer::Status(status) => *response.status_mut() = StatusCode::from_u16(status).unwrap(),
        Answer::OnlyHttp2 if request.version() != Version::HTTP_2 => {
            *response.status_mut() = StatusCode::HTTP_VERSION_NOT_SUPPORTED
        }
        Answer::OnlyHttp2 => {}
        Answer::CloseAfterEach => {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, "close".parse().unwrap());
        }
        Answer::Stall => tokio::time::sleep(Duration::from_secs(60)).await,
        Answer::Slow(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
    Ok(response)
}

fn spec(url: String, connections: usize, duration: Duration) -> LoadSpec {
    LoadSpec {
        connections,
        duration,
        ..LoadSpec::get(url)
    }
}

#[tokio::test]
async fn an_open_loop_run_against_a_slower_target_ends_on_time_and_counts_what_it_missed() {
    // One connection, 200 requests/second asked, 50 ms per answer: at most ~20 a second go
    // out. The run must end at its duration (not drain a backlog of ~180 sends), and report
    // the sends it never made.
    let target = Target::start(Answer::Slow(50)).await;
    let started = std::time::Instant::now();
    let report = run(&LoadSpec {
        mode: Mode::OpenLoop { rate: 200.0 },
        timeout: Duration::from_secs(2),
        ..spec(target.url(), 1, Duration::from_secs(1))
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a 1 s run took {took:?}: it kept sending its backlog"
    );
    assert!(report.requests <= 25, "requests: {}", report.requests);
    assert!(
        (170..=200).contains(&(report.requests + report.missed)),
        "sent {} + missed {} should make the ~200 scheduled",
        report.requests,
        report.missed
    );
    assert!(
        report.summary().contains("were never sent"),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn closed_loop_counts_every_200_answer_as_ok() {
    let target = Target::start(Answer::Status(200)).await;
    let report = run(&spec(target.url(), 2, Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(report.requests > 0);
    assert_eq!(report.ok, report.requests);
    assert_eq!(
        report.status_counts,
        BTreeMap::from([(200, report.requests)])
    );
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert_eq!(report.mode, "closed-loop");
    assert_eq!(report.protocol, "http1");
    assert_eq!(report.target_rate, None);
    assert_eq!(report.connections, 2);
    assert_eq!(report.latency_curve.len(), 11);
}

#[tokio::test]
async fn server_answering_500_makes_every_request_a_status_5xx_error() {
    let target = Target::start(Answer::Status(500)).await;
    let report = run(&spec(target.url(), 2, Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(report.requests > 0);
    assert_eq!(report.ok, 0);
    assert_eq!(report.throughput, 0.0);
    assert_eq!(
        report.errors,
        BTreeMap::from([("status_5xx".to_string(), report.requests)])
    );
    assert_eq!(
        report.status_counts,
        BTreeMap::from([(500, report.requests)])
    );
}

#[tokio::test]
async fn server_answering_404_makes_every_request_a_status_4xx_error() {
    let target = Target::start(Answer::Status(404)).await;
    let report = run(&spec(target.url(), 1, Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(report.requests > 0);
    assert_eq!(
        report.errors,
        BTreeMap::from([("status_4xx".to_string(), report.requests)])
    );
}

#[tokio::test]
async fn open_loop_at_200_per_second_for_one_second_sends_about_200_requests() {
    let target = Target::start(Answer::Status(200)).await;
    let report = run(&LoadSpec {
        mode: Mode::OpenLoop { rate: 200.0 },
        ..spec(target.url(), 2, Duration::from_secs(1))
    })
    .await
    .unwrap();
    assert!(
        (180..=220).contains(&report.requests),
        "requests: {}",
        report.requests
    );
    assert_eq!(report.ok, report.requests);
    assert_eq!(report.mode, "open-loop");
    assert_eq!(report.target_rate, Some(200.0));
}

#[tokio::test]
async fn http2_open_loop_at_200_per_second_sends_about_200_requests_as_http2() {
    let target = Target::start(Answer::OnlyHttp2).await;
    let report = run(&LoadSpec {
        protocol: Protocol::Http2,
        mode: Mode::OpenLoop { rate: 200.0 },
        ..spec(target.url(), 2, Duration::from_secs(1))
    })
    .await
    .unwrap();
    assert!(
        (180..=220).contains(&report.requests),
        "requests: {}",
        report.requests
    );
    assert_eq!(
        report.status_counts,
        BTreeMap::from([(200, report.requests)])
    );
    assert_eq!(report.protocol, "http2");
}

#[tokio::test]
async fn http2_closed_loop_sends_http2_requests() {
    let target = Target::start(Answer::OnlyHttp2).await;
    let report = run(&LoadSpec {
        protocol: Protocol::Http2,
        ..spec(target.url(), 2, Duration::from_millis(300))
    })
    .await
    .unwrap();
    assert!(report.requests > 0);
    assert_eq!(
        report.status_counts,
        BTreeMap::from([(200, report.requests)])
    );
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
}

#[tokio::test]
async fn http1_requests_reach_a_target_that_refuses_http2() {
    let target = Target::start(Answer::OnlyHttp2).await;
    let report = run(&spec(target.url(), 1, Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(report.requests > 0);
    assert_eq!(
        report.status_counts,
        BTreeMap::from([(505, report.requests)])
    );
}

#[tokio::test]
async fn server_closing_after_each_answer_is_redialled_without_errors() {
    let target = Target::start(Answer::CloseAfterEach).await;
    let report = run(&spec(target.url(), 1, Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(report.requests > 1);
    assert_eq!(report.ok, report.requests);
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
}

#[tokio::test]
async fn unanswered_requests_count_as_timeouts() {
    let target = Target::start(Answer::Stall).await;
    let report = run(&LoadSpec {
        timeout: Duration::from_millis(100),
        ..spec(target.url(), 1, Duration::from_millis(450))
    })
    .await
    .unwrap();
    assert_eq!(report.requests, 0);
    assert!(report.errors["timeout"] >= 1, "errors: {:?}", report.errors);
}

#[tokio::test]
async fn requests_in_the_warmup_are_sent_but_not_recorded() {
    let target = Target::start(Answer::Status(200)).await;
    let report = run(&LoadSpec {
        warmup: Duration::from_millis(300),
        ..spec(target.url(), 1, Duration::from_millis(300))
    })
    .await
    .unwrap();
    assert!(report.requests > 0);
    assert!(target.received.load(Ordering::Relaxed) > report.requests);
    assert!((report.duration_secs - 0.3).abs() < 1e-6);
}

#[tokio::test]
async fn closed_port_fails_the_run_with_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = run(&spec(
        format!("http://{addr}/"),
        2,
        Duration::from_millis(200),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(error, LoadError::Connect { connections: 2, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn https_url_is_refused() {
    let error = run(&LoadSpec::get("https://127.0.0.1:1/"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LoadError::HttpsUnsupported { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn url_without_scheme_is_refused() {
    let error = run(&LoadSpec::get("127.0.0.1:1/")).await.unwrap_err();
    assert!(matches!(error, LoadError::BadUrl { .. }), "{error}");
}

#[tokio::test]
async fn zero_connections_are_refused() {
    let error = run(&spec(
        "http://127.0.0.1:1/".into(),
        0,
        Duration::from_secs(1),
    ))
    .await
    .unwrap_err();
    assert!(matches!(error, LoadError::ZeroConnections), "{error}");
}

#[tokio::test]
async fn non_positive_rate_is_refused() {
    let error = run(&LoadSpec {
        mode: Mode::OpenLoop { rate: 0.0 },
        ..LoadSpec::get("http://127.0.0.1:1/")
    })
    .await
    .unwrap_err();
    assert!(matches!(error, LoadError::BadRate { .. }), "{error}");
}

#[tokio::test]
async fn malformed_header_is_refused() {
    let error = run(&LoadSpec {
        headers: vec![("bad name".into(), "v".into())],
        ..LoadSpec::get("http://127.0.0.1:1/")
    })
    .await
    .unwrap_err();
    assert!(matches!(error, LoadError::BadHeader { .. }), "{error}");
}

#[tokio::test]
async fn report_round_trips_through_json() {
    let target = Target::start(Answer::Status(200)).await;
    let report = run(&spec(target.url(), 1, Duration::from_millis(200)))
        .await
        .unwrap();
    let json = serde_json::to_string(&report).unwrap();
    let back: LoadReport = serde_json::from_str(&json).unwrap();
    // serde_json may move a float by its last bit; everything else comes back exactly.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
    assert_eq!(
        (
            &back.mode,
            back.target_rate,
            &back.protocol,
            back.connections
        ),
        (
            &report.mode,
            report.target_rate,
            &report.protocol,
            report.connections
        )
    );
    assert_eq!((back.requests, back.ok), (report.requests, report.ok));
    assert_eq!(back.status_counts, report.status_counts);
    assert_eq!(back.errors, report.errors);
    assert!(close(back.duration_secs, report.duration_secs));
    assert!(close(back.throughput, report.throughput));
    assert!(close(back.latency.mean_us, report.latency.mean_us));
    assert_eq!(back.latency.p99_us, report.latency.p99_us);
    assert_eq!(back.latency_curve, report.latency_curve);
}

#[tokio::test]
async fn summary_names_mode_counts_and_throughput() {
    let target = Target::start(Answer::Status(503)).await;
    let report = run(&spec(target.url(), 1, Duration::from_millis(200)))
        .await
        .unwrap();
    let summary = report.summary();
    assert!(
        summary.starts_with("closed-loop http1, 1 connections"),
        "{summary}"
    );
    assert!(summary.contains(&format!("{} requests in", report.requests)));
    assert!(summary.contains("status_5xx"));
    assert!(summary.contains("Requests/sec: 0.00"));
}
