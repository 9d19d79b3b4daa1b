//! The scenarios and the processes behind them. Every scenario ends at the same upstream app;
//! they differ only in the hops in between:
//!
//! - `direct`         client → app (the floor)
//! - `outrigger-1hop` client → sidecar B's mesh listener → app
//! - `outrigger-2hop` client → sidecar A `/v1.0/invoke/b/method/` → (h2c) → sidecar B → app
//! - `nginx-2hop`     client → nginx A → nginx B → app
//! - `haproxy-2hop`   client → haproxy A → haproxy B → app

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::peers;
use crate::procs::{free_port, wait_http_ok, Proc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioName {
    Direct,
    #[value(name = "outrigger-1hop")]
    #[serde(rename = "outrigger-1hop")]
    Outrigger1Hop,
    #[value(name = "outrigger-2hop")]
    #[serde(rename = "outrigger-2hop")]
    Outrigger2Hop,
    #[value(name = "nginx-2hop")]
    #[serde(rename = "nginx-2hop")]
    Nginx2Hop,
    #[value(name = "haproxy-2hop")]
    #[serde(rename = "haproxy-2hop")]
    Haproxy2Hop,
}

impl ScenarioName {
    pub const ALL: [ScenarioName; 5] = [
        ScenarioName::Direct,
        ScenarioName::Outrigger1Hop,
        ScenarioName::Outrigger2Hop,
        ScenarioName::Nginx2Hop,
        ScenarioName::Haproxy2Hop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Direct => "direct",
            ScenarioName::Outrigger1Hop => "outrigger-1hop",
            ScenarioName::Outrigger2Hop => "outrigger-2hop",
            ScenarioName::Nginx2Hop => "nginx-2hop",
            ScenarioName::Haproxy2Hop => "haproxy-2hop",
        }
    }

    pub fn is_peer(self) -> bool {
        matches!(self, ScenarioName::Nginx2Hop | ScenarioName::Haproxy2Hop)
    }
}

/// One scenario, ready to be loaded.
pub struct Scenario {
    pub name: ScenarioName,
    pub url: String,
    /// The proxy processes on this scenario's path (for CPU and RSS accounting).
    pub proxy_pids: Vec<u32>,
}

/// Every process the selected scenarios need, started and answering.
pub struct Topology {
    pub scenarios: Vec<Scenario>,
    _procs: Vec<Proc>,
}

const READY_WITHIN: Duration = Duration::from_secs(30);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Topology {
    pub fn start(
        selected: &[ScenarioName],
        exe: &Path,
        dir: &Path,
        server_cpu: Option<usize>,
        body_bytes: usize,
    ) -> anyhow::Result<Topology> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = |name: &str| -> PathBuf { logs.join(format!("{name}.log")) };
        let mut procs = Vec::new();
        let mut scenarios = Vec::new();

        let app_port = free_port()?;
        let mut app = Proc::spawn(
            "upstream app",
            exe,
            &[
                "bench".into(),
                "--serve-upstream".into(),
                app_port.to_string(),
                "--body-bytes".into(),
                body_bytes.to_string(),
            ],
            server_cpu,
            &log("upstream"),
        )?;
        wait_http_ok(&mut app, local(app_port), "/", READY_WITHIN)?;
        procs.push(app);
        if selected.contains(&ScenarioName::Direct) {
            scenarios.push(Scenario {
                name: ScenarioName::Direct,
                url: format!("http://127.0.0.1:{app_port}/bench"),
                proxy_pids: vec![],
            });
        }

        if selected.contains(&ScenarioName::Outrigger1Hop)
            || selected.contains(&ScenarioName::Outrigger2Hop)
        {
            let b_mesh = free_port()?;
            let mut b = Proc::spawn(
                "outrigger b",
                exe,
                &sidecar_args("b", Some(app_port), b_mesh, None),
                server_cpu,
                &log("outrigger-b"),
            )?;
            wait_http_ok(&mut b, local(b_mesh), "/", READY_WITHIN)?;
            let b_pid = b.pid();
            procs.push(b);
            if selected.contains(&ScenarioName::Outrigger1Hop) {
                scenarios.push(Scenario {
                    name: ScenarioName::Outrigger1Hop,
                    url: format!("http://127.0.0.1:{b_mesh}/bench"),
                    proxy_pids: vec![b_pid],
                });
            }
            if selected.contains(&ScenarioName::Outrigger2Hop) {
                let resources = dir.join("outrigger-a-resources");
                std::fs::create_dir_all(&resources)?;
                std::fs::write(
                    resources.join("mesh.yaml"),
                    format!(
                        "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: b\nspec:\n  endpoints:\n  - address: 127.0.0.1:{b_mesh}\n"
                    ),
                )?;
                let a_http = free_port()?;
                let mut a = Proc::spawn(
                    "outrigger a",
                    exe,
                    &sidecar_args("a", None, free_port()?, Some((a_http, &resources))),
                    server_cpu,
                    &log("outrigger-a"),
                )?;
                wait_http_ok(
                    &mut a,
                    local(a_http),
                    "/v1.0/invoke/b/method/bench",
                    READY_WITHIN,
                )?;
                scenarios.push(Scenario {
                    name: ScenarioName::Outrigger2Hop,
                    url: format!("http://127.0.0.1:{a_http}/v1.0/invoke/b/method/bench"),
                    proxy_pids: vec![a.pid(), b_pid],
                });
                procs.push(a);
            }
        }

        for (name, is_nginx) in [
            (ScenarioName::Nginx2Hop, true),
            (ScenarioName::Haproxy2Hop, false),
        ] {
            if !selected.contains(&name) {
                continue;
            }
            let (b_port, a_port) = (free_port()?, free_port()?);
            let mut pids = Vec::new();
            for (hop, listen, upstream) in [("b", b_port, app_port), ("a", a_port, b_port)] {
                let label = format!("{}-{hop}", name.as_str());
                let mut proc = if is_nginx {
                    let config = peers::nginx_config(dir, &label, listen, upstream)?;
                    let args = vec![
                        "-c".to_string(),
                        config.display().to_string(),
                        "-p".into(),
                        dir.join(&label).display().to_string(),
                    ];
                    Proc::spawn(
                        &label,
                        Path::new(peers::NGINX),
                        &args,
                        server_cpu,
                        &log(&label),
                    )?
                } else {
                    let config = peers::haproxy_config(dir, &label, listen, upstream)?;
                    let args = vec!["-f".to_string(), config.display().to_string(), "-db".into()];
                    Proc::spawn(
                        &label,
                        Path::new(peers::HAPROXY),
                        &args,
                        server_cpu,
                        &log(&label),
                    )?
                };
                wait_http_ok(&mut proc, local(listen), "/", READY_WITHIN)?;
                pids.push(proc.pid());
                procs.push(proc);
            }
            scenarios.push(Scenario {
                name,
                url: format!("http://127.0.0.1:{a_port}/bench"),
                proxy_pids: pids,
            });
        }

        scenarios.sort_by_key(|s| s.name);
        Ok(Topology {
            scenarios,
            _procs: procs,
        })
    }
}

/// `outrigger sidecar` flags for a benchmark hop: one worker thread (like the peers' single
/// worker), quiet logs, no discovery (static cluster instead).
fn sidecar_args(
    app_id: &str,
    app_port: Option<u16>,
    mesh_port: u16,
    caller: Option<(u16, &Path)>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "sidecar".into(),
        "--app-id".into(),
        app_id.into(),
        "--mesh-listen-address".into(),
        "127.0.0.1".into(),
        "--mesh-port".into(),
        mesh_port.to_string(),
        "--admin-port".into(),
        "0".into(),
        "--no-discovery".into(),
        "--threads".into(),
        "1".into(),
        "--log-level".into(),
        "warn".into(),
    ];
    if let Some(port) = app_port {
        args.extend(["--app-port".into(), port.to_string()]);
    }
    match caller {
        Some((http_port, resources)) => {
            args.extend(["--dapr-http-port".into(), http_port.to_string()]);
            args.extend(["--resources-path".into(), resources.display().to_string()]);
        }
        None => args.extend(["--dapr-http-port".into(), "0".into()]),
    }
    args
}
