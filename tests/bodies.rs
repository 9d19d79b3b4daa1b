//! Bodies stream through both sidecars: 100 MB each way with each sidecar's RSS under 64 MB.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use support::*;

const TOTAL: u64 = 100 * 1000 * 1000;
const RSS_LIMIT: u64 = 64 * 1024 * 1024;

/// Samples the RSS of each pid every 20 ms until stopped; returns the peaks.
fn sample_rss(pids: Vec<u32>) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<u64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let peaks: Vec<AtomicU64> = pids.iter().map(|_| AtomicU64::new(0)).collect();
        while !flag.load(Ordering::Relaxed) {
            for (pid, peak) in pids.iter().zip(&peaks) {
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|kb| kb.parse::<u64>().ok())
                    })
                    .unwrap_or(0)
                    * 1024;
                peak.fetch_max(rss, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peaks.iter().map(|p| p.load(Ordering::Relaxed)).collect()
    });
    (stop, handle)
}

fn zeros_stream(total: u64) -> reqwest::Body {
    let chunk = bytes::Bytes::from(vec![0u8; 256 * 1024]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(chunk.len() as u64) as usize;
                (Ok::<_, std::io::Error>(chunk.slice(..n)), left - n as u64)
            })
        }
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_upload_streams_through_both_sidecars_in_bounded_memory() {
    let mesh = start_pair();
    let (stop, sampler) = sample_rss(vec![mesh.a.proc.pid(), mesh.b.proc.pid()]);
    let response = client()
        .post(mesh.a.url("/v1.0/invoke/b/method/upload"))
        .body(zeros_stream(TOTAL))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("{{\"bytes\":{TOTAL}}}"));
    for (name, peak) in ["a", "b"].iter().zip(&peaks) {
        assert!(*peak > 0, "no RSS sample for sidecar {name}");
        assert!(
            *peak < RSS_LIMIT,
            "sidecar {name} peaked at {} MB",
            peak / (1024 * 1024)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_download_streams_through_both_sidecars_in_bounded_memory() {
    let mesh = start_pair();
    let (stop, sampler) = sample_rss(vec![mesh.a.proc.pid(), mesh.b.proc.pid()]);
    let response = client()
        .get(
            mesh.a
                .url(&format!("/v1.0/invoke/b/method/download?bytes={TOTAL}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = 0u64;
    let mut all_x = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        all_x &= chunk.iter().all(|b| *b == b'x');
        received += chunk.len() as u64;
    }
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler.join().unwrap();
    assert_eq!(received, TOTAL);
    assert!(all_x, "the body was altered on the way");
    for (name, peak) in ["a", "b"].iter().zip(&peaks) {
        assert!(*peak > 0, "no RSS sample for sidecar {name}");
        assert!(
            *peak < RSS_LIMIT,
            "sidecar {name} peaked at {} MB",
            peak / (1024 * 1024)
        );
    }
}
