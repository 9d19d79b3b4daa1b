//! `outrigger bench --convergence 10,100,1000`: how fast a config change reaches every
//! sidecar. Starts `outrigger control` on a config directory, connects N lightweight stream
//! clients (each a real mesh.v1 stream that subscribes to routes and ACKs), rewrites the route
//! file, and measures, per client, the time from the file's rename to the client receiving the
//! new version (it ACKs at once), plus the control plane's CPU and RSS.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use outrigger_proto::mesh::v1 as mesh;
use outrigger_proto::mesh::v1::aggregated_discovery_client::AggregatedDiscoveryClient;
use outrigger_proto::mesh::v1::{DiscoveryRequest, Node};
use tokio::sync::{mpsc, watch};

use crate::procs::{cpu_seconds, rss_bytes, Proc};
use crate::runner::median;

pub struct Convergence {
    pub sidecars: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub cpu_seconds: f64,
    pub rss_mb: f64,
}

fn route(cluster: &str) -> String {
    format!(
        "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: {cluster}}}\nspec: {{endpoints: [{{address: 127.0.0.1:9}}]}}\n---\napiVersion: outrigger.dev/v1alpha1\nkind: Route\nmetadata: {{name: b}}\nspec:\n  app: b\n  backends: [{{cluster: {cluster}}}]\n"
    )
}

fn write_atomically(dir: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("mesh.yaml"))?;
    Ok(())
}

pub async fn measure(exe: &Path, work: &Path, sidecars: usize) -> anyhow::Result<Convergence> {
    let dir = work.join(format!("convergence-{sidecars}"));
    std::fs::create_dir_all(&dir)?;
    write_atomically(&dir, &route("v1"))?;
    let log = work.join(format!("control-{sidecars}.log"));
    let args: Vec<String> = vec![
        "control".into(),
        "--config-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
    ];
    let mut control = Proc::spawn("control plane", exe, &args, None, &log)?;
    let listen = wait_for_listen(&mut control, &log).await?;

    // Every client reports the instant it receives a Route response with the version that
    // `want` currently names.
    let (want_tx, want_rx) = watch::channel(String::new());
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<usize>();
    for i in 0..sidecars {
        let (want, got, ready) = (want_rx.clone(), got_tx.clone(), ready_tx.clone());
        let endpoint = format!("http://{listen}");
        // A client that fails simply never reports; `measure` notices and says how many did.
        // (Streams also break when the previous round's control plane is stopped.)
        tokio::spawn(async move {
            let _ = client(i, endpoint, want, got, ready).await;
        });
    }
    drop(got_tx);
    let mut ready = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready < sidecars {
        match tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await {
            Ok(Some(_)) => ready += 1,
            _ => bail!("only {ready} of {sidecars} clients received the initial routes"),
        }
    }

    let cpu_before = cpu_seconds(control.pid());
    // The expected version is the content hash the control plane will compute; we do not know
    // it in advance, so "new" means: any version other than the initial one.
    want_tx.send("changed".into())?;
    let written = Instant::now();
    write_atomically(&dir, &route("v2"))?;
    let mut latencies = Vec::with_capacity(sidecars);
    while latencies.len() < sidecars {
        match tokio::time::timeout(Duration::from_secs(30), got_rx.recv()).await {
            Ok(Some((_, at))) => latencies.push(at.duration_since(written).as_secs_f64() * 1000.0),
            _ => bail!(
                "only {} of {sidecars} clients received the change",
                latencies.len()
            ),
        }
    }
    let cpu = cpu_seconds(control.pid()) - cpu_before;
    let rss = rss_bytes(control.pid()) as f64 / (1024.0 * 1024.0);
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[((latencies.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
    Ok(Convergence {
        sidecars,
        p50_ms: median(latencies.clone()),
        p99_ms: p99,
        max_ms: *latencies.last().unwrap_or(&0.0),
        cpu_seconds: cpu,
        rss_mb: rss,
    })
}

async fn wait_for_listen(control: &mut Proc, log: &Path) -> anyhow::Result<String> {
    for _ in 0..300 {
        control.check_alive()?;
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("control plane listening")) {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .context("no listen= in the control plane's log line")?;
            return Ok(addr.to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the control plane did not start; see {}", log.display())
}

async fn client(
    i: usize,
    endpoint: String,
    want: watch::Receiver<String>,
    got: mpsc::UnboundedSender<(usize, Instant)>,
    ready: mpsc::UnboundedSender<usize>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryClient::connect(endpoint).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: format!("sim-{i}"),
            app_id: format!("sim-{i}"),
            address: "127.0.0.1".into(),
            mesh_port: 1,
            ..Default::default()
        }),
        type_url: mesh::TYPE_ROUTE.into(),
        ..Default::default()
    })
    .await?;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut initial: Option<String> = None;
    while let Some(response) = inbound.message().await? {
        let at = Instant::now();
        tx.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await?;
        match &initial {
            None => {
                initial = Some(response.version_info.clone());
                let _ = ready.send(i);
            }
            Some(first) if *first != response.version_info && !want.borrow().is_empty() => {
                let _ = got.send((i, at));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

pub fn markdown(results: &[Convergence], command: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Control-plane convergence\n\n- command: `{command}`\n"
    );
    let _ = writeln!(md, "| sidecars | p50 ms | p99 ms | max ms | control-plane CPU s for the change | control-plane RSS MB |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} |",
            r.sidecars, r.p50_ms, r.p99_ms, r.max_ms, r.cpu_seconds, r.rss_mb
        );
    }
    let _ = writeln!(md, "\nTime from the route file's rename to each client receiving the new version (it ACKs at once); includes the 100 ms debounce of the directory watch.");
    md
}
