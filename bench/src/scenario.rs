//! The scenarios and the processes behind them. Every scenario ends at the same upstream app;
//! they differ only in the hops in between:
//!
//! - `direct`         client → app (the floor)
//! - `outrigger-1hop` client → sidecar B's mesh listener → app
//! - `outrigger-2hop` client → sidecar A `/v1.0/invoke/b/method/` → sidecar B → app, each sidecar
//!   on one worker thread (like the peers' single worker)
//! - `outrigger-2hop-mt` the same chain with each sidecar on the default worker threads
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
    #[value(name = "outrigger-2hop-mt")]
    #[serde(rename = "outrigger-2hop-mt")]
    Outrigger2HopMt,
    /// The 2-hop chain with mTLS on the sidecar-to-sidecar hop (the default outside benches).
    #[value(name = "outrigger-2hop-mtls")]
    #[serde(rename = "outrigger-2hop-mtls")]
    Outrigger2HopMtls,
    #[value(name = "nginx-2hop")]
    #[serde(rename = "nginx-2hop")]
    Nginx2Hop,
    #[value(name = "haproxy-2hop")]
    #[serde(rename = "haproxy-2hop")]
    Haproxy2Hop,
    /// nginx → nginx with mutual TLS 1.3 between them, the peer of `outrigger-2hop-mtls`.
    #[value(name = "nginx-2hop-tls")]
    #[serde(rename = "nginx-2hop-tls")]
    Nginx2HopTls,
    #[value(name = "haproxy-2hop-tls")]
    #[serde(rename = "haproxy-2hop-tls")]
    Haproxy2HopTls,
}

impl ScenarioName {
    pub const ALL: [ScenarioName; 9] = [
        ScenarioName::Direct,
        ScenarioName::Outrigger1Hop,
        ScenarioName::Outrigger2Hop,
        ScenarioName::Outrigger2HopMt,
        ScenarioName::Outrigger2HopMtls,
        ScenarioName::Nginx2Hop,
        ScenarioName::Haproxy2Hop,
        ScenarioName::Nginx2HopTls,
        ScenarioName::Haproxy2HopTls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Direct => "direct",
            ScenarioName::Outrigger1Hop => "outrigger-1hop",
            ScenarioName::Outrigger2Hop => "outrigger-2hop",
            ScenarioName::Outrigger2HopMt => "outrigger-2hop-mt",
            ScenarioName::Outrigger2HopMtls => "outrigger-2hop-mtls",
            ScenarioName::Nginx2Hop => "nginx-2hop",
            ScenarioName::Haproxy2Hop => "haproxy-2hop",
            ScenarioName::Nginx2HopTls => "nginx-2hop-tls",
            ScenarioName::Haproxy2HopTls => "haproxy-2hop-tls",
        }
    }

    pub fn is_peer(self) -> bool {
        matches!(
            self,
            ScenarioName::Nginx2Hop
                | ScenarioName::Haproxy2Hop
                | ScenarioName::Nginx2HopTls
                | ScenarioName::Haproxy2HopTls
        )
    }

    /// Proxies between the client and the app.
    pub fn hops(self) -> u32 {
        match self {
            ScenarioName::Direct => 0,
            ScenarioName::Outrigger1Hop => 1,
            _ => 2,
        }
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
            let chain = OutriggerChain::start(exe, dir, app_port, 1, "", server_cpu, false)?;
            if selected.contains(&ScenarioName::Outrigger1Hop) {
                scenarios.push(Scenario {
                    name: ScenarioName::Outrigger1Hop,
                    url: format!("http://127.0.0.1:{}/bench", chain.b_mesh),
                    proxy_pids: vec![chain.b.pid()],
                });
            }
            if selected.contains(&ScenarioName::Outrigger2Hop) {
                scenarios.push(chain.two_hops(ScenarioName::Outrigger2Hop));
            }
            procs.extend([chain.b, chain.a]);
        }
        if selected.contains(&ScenarioName::Outrigger2HopMt) {
            let chain = OutriggerChain::start(exe, dir, app_port, 0, "-mt", server_cpu, false)?;
            scenarios.push(chain.two_hops(ScenarioName::Outrigger2HopMt));
            procs.extend([chain.b, chain.a]);
        }
        if selected.contains(&ScenarioName::Outrigger2HopMtls) {
            let chain = OutriggerChain::start(exe, dir, app_port, 1, "-mtls", server_cpu, true)?;
            scenarios.push(chain.two_hops(ScenarioName::Outrigger2HopMtls));
            procs.extend([chain.b, chain.a]);
        }

        let tls_files = if selected
            .iter()
            .any(|s| matches!(s, ScenarioName::Nginx2HopTls | ScenarioName::Haproxy2HopTls))
        {
            Some(peers::TlsFiles::generate(&dir.join("peer-tls"))?)
        } else {
            None
        };
        for (name, is_nginx, tls) in [
            (ScenarioName::Nginx2Hop, true, false),
            (ScenarioName::Haproxy2Hop, false, false),
            (ScenarioName::Nginx2HopTls, true, true),
            (ScenarioName::Haproxy2HopTls, false, true),
        ] {
            if !selected.contains(&name) {
                continue;
            }
            let (b_port, a_port) = (free_port()?, free_port()?);
            let mut pids = Vec::new();
            for (hop, listen, upstream) in [("b", b_port, app_port), ("a", a_port, b_port)] {
                let label = format!("{}-{hop}", name.as_str());
                let hop_tls = match (tls_files.as_ref().filter(|_| tls), hop) {
                    (None, _) => peers::HopTls::None,
                    (Some(files), "b") => peers::HopTls::Server(files),
                    (Some(files), _) => peers::HopTls::Client(files),
                };
                let mut proc = if is_nginx {
                    let config = peers::nginx_config(dir, &label, listen, upstream, hop_tls)?;
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
                    let config = peers::haproxy_config(dir, &label, listen, upstream, hop_tls)?;
                    let args = vec!["-f".to_string(), config.display().to_string(), "-db".into()];
                    Proc::spawn(
                        &label,
                        Path::new(peers::HAPROXY),
                        &args,
                        server_cpu,
                        &log(&label),
                    )?
                };
                // A TLS listener answers no plaintext probe: the first hop's check covers it.
                if !matches!(hop_tls, peers::HopTls::Server(_)) {
                    wait_http_ok(&mut proc, local(listen), "/", READY_WITHIN)?;
                }
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

/// Sidecar B in front of the app and sidecar A calling it by app id through a static cluster.
struct OutriggerChain {
    b: Proc,
    b_mesh: u16,
    a: Proc,
    a_http: u16,
}

impl OutriggerChain {
    /// `threads` worker threads per sidecar (0: the sidecar's default); `suffix` tells the
    /// chains' files apart; `mtls`: the a → b hop over mTLS, from a CA of the chain's own.
    fn start(
        exe: &Path,
        dir: &Path,
        app_port: u16,
        threads: usize,
        suffix: &str,
        server_cpu: Option<usize>,
        mtls: bool,
    ) -> anyhow::Result<OutriggerChain> {
        let log = |name: &str| dir.join("logs").join(format!("{name}{suffix}.log"));
        let ca = mtls.then(|| dir.join(format!("ca{suffix}")));
        let b_mesh = free_port()?;
        let mut b = Proc::spawn(
            &format!("outrigger b{suffix}"),
            exe,
            &sidecar_args("b", Some(app_port), b_mesh, None, threads, ca.as_deref()),
            server_cpu,
            &log("outrigger-b"),
        )?;
        if !mtls {
            // Under mTLS b's mesh port answers no plaintext: a's first call proves it ready.
            wait_http_ok(&mut b, local(b_mesh), "/", READY_WITHIN)?;
        }
        let resources = dir.join(format!("outrigger-a{suffix}-resources"));
        std::fs::create_dir_all(&resources)?;
        std::fs::write(
            resources.join("mesh.yaml"),
            format!(
                "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: b\nspec:\n  endpoints:\n  - address: 127.0.0.1:{b_mesh}\n"
            ),
        )?;
        let a_http = free_port()?;
        let mut a = Proc::spawn(
            &format!("outrigger a{suffix}"),
            exe,
            &sidecar_args(
                "a",
                None,
                free_port()?,
                Some((a_http, &resources)),
                threads,
                ca.as_deref(),
            ),
            server_cpu,
            &log("outrigger-a"),
        )?;
        wait_http_ok(
            &mut a,
            local(a_http),
            "/v1.0/invoke/b/method/bench",
            READY_WITHIN,
        )?;
        Ok(OutriggerChain {
            b,
            b_mesh,
            a,
            a_http,
        })
    }

    fn two_hops(&self, name: ScenarioName) -> Scenario {
        Scenario {
            name,
            url: format!(
                "http://127.0.0.1:{}/v1.0/invoke/b/method/bench",
                self.a_http
            ),
            proxy_pids: vec![self.a.pid(), self.b.pid()],
        }
    }
}

/// `outrigger sidecar` flags for a benchmark hop: `threads` worker threads (1 like the peers'
/// single worker; 0 keeps the default), quiet logs, no discovery (static cluster instead).
fn sidecar_args(
    app_id: &str,
    app_port: Option<u16>,
    mesh_port: u16,
    caller: Option<(u16, &Path)>,
    threads: usize,
    ca_dir: Option<&Path>,
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
        "--log-level".into(),
        "warn".into(),
    ];
    match ca_dir {
        Some(dir) => args.extend(["--ca-dir".into(), dir.display().to_string()]),
        // The peers' chains are plaintext; so is this one (the 1-hop client calls the mesh
        // port directly).
        None => args.extend(["--mtls".into(), "off".into()]),
    }
    if threads > 0 {
        args.extend(["--threads".into(), threads.to_string()]);
    }
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
