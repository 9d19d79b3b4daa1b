//! Shared pieces of the end-to-end tests: real `outrigger` processes, real echo apps, and the
//! small clients that talk to them. Every process gets ephemeral ports and every test its own
//! registry directory, so tests run in parallel without seeing each other.
#![allow(dead_code)] // each test binary uses a different subset

pub mod backends;
pub mod liar_app;
pub mod pubsub;
pub mod raw_app;
pub mod subscriber;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn outrigger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outrigger"))
}

pub fn echo_app_bin() -> PathBuf {
    // `cargo test` builds the examples next to the test binaries' target dir.
    let bin = outrigger_bin();
    let dir = bin.parent().expect("binary has a directory");
    let path = dir.join("examples").join("echo_app");
    assert!(
        path.exists(),
        "{} is missing; run the tests with `cargo test` (it builds examples)",
        path.display()
    );
    path
}

/// A child process whose output is captured line by line (shown when a test fails).
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("signal");
    }

    /// Waits for the process to exit (bounded, so a hung process fails the test instead of
    /// hanging it).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit; output:\n{}", self.name, self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Peak-so-far resident set size in bytes, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- output of {} ---\n{}", self.name, self.output());
        }
    }
}

/// Spawns `command`, capturing stdout and stderr; returns once a line satisfying `ready`
/// appears (with that line), or panics with the output if the process exits first.
pub fn spawn_until(
    name: &str,
    mut command: Command,
    ready: impl Fn(&str) -> bool,
) -> (Proc, String) {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<Option<String>>();
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let lines = lines.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(Some(line));
            }
            let _ = tx.send(None);
        });
    }
    drop(tx);
    let mut closed = 0;
    let proc = Proc {
        child,
        name: name.to_string(),
        lines,
    };
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(line)) if ready(&line) => return (proc, line),
            Ok(Some(_)) => {}
            Ok(None) => {
                closed += 1;
                if closed == 2 {
                    panic!(
                        "{name} exited before it was ready; output:\n{}",
                        proc.output()
                    );
                }
            }
            Err(_) => panic!("{name} not ready after 60s; output:\n{}", proc.output()),
        }
    }
}

/// A running echo app (examples/echo_app.rs).
pub struct EchoApp {
    pub proc: Proc,
    pub port: u16,
}

impl EchoApp {
    /// How many requests the app has served (asked directly, not through a sidecar).
    pub async fn requests(&self) -> u64 {
        let count = get_json(format!("http://127.0.0.1:{}/echo-app/requests", self.port)).await;
        count["requests"].as_u64().expect("a request count")
    }
}

pub fn start_echo_app(name: &str) -> EchoApp {
    start_echo_app_with_delay(name, None)
}

/// An echo app that answers every request `delay` late (a slow instance).
pub fn start_echo_app_with_delay(name: &str, delay: Option<std::time::Duration>) -> EchoApp {
    let mut command = Command::new(echo_app_bin());
    command.arg("0").arg(name);
    if let Some(delay) = delay {
        command.env("ECHO_DELAY_MS", delay.as_millis().to_string());
    }
    let (proc, line) = spawn_until(&format!("echo app {name}"), command, |l| {
        l.starts_with("listening on ")
    });
    let addr: SocketAddr = line
        .trim_start_matches("listening on ")
        .parse()
        .expect("echo app address");
    EchoApp {
        proc,
        port: addr.port(),
    }
}

/// A running `outrigger sidecar` and the addresses it listens on.
pub struct SidecarProc {
    pub proc: Proc,
    pub dapr_http: SocketAddr,
    pub mesh: SocketAddr,
    pub admin: SocketAddr,
}

impl SidecarProc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.dapr_http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

/// Parses `key=value` out of the sidecar's "sidecar listening" log line.
pub fn field(line: &str, key: &str) -> SocketAddr {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad {key} in {line:?}: {e}"))
}

/// A sidecar builder with ephemeral ports and the test's registry.
pub struct SidecarBuilder {
    pub command: Command,
    name: String,
}

impl SidecarBuilder {
    pub fn new(app_id: &str, registry: &Path) -> Self {
        let mut command = Command::new(outrigger_bin());
        command
            .arg("sidecar")
            .args(["--app-id", app_id])
            .args([
                "--dapr-http-port",
                "0",
                "--mesh-port",
                "0",
                "--admin-port",
                "0",
            ])
            .arg("--registry-dir")
            .arg(registry)
            .env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .env_remove("RUST_LOG");
        SidecarBuilder {
            command,
            name: format!("sidecar {app_id}"),
        }
    }

    pub fn app_port(mut self, port: u16) -> Self {
        self.command.args(["--app-port", &port.to_string()]);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.command.arg(arg);
        self
    }

    /// Plaintext on the mesh hop (`--mtls off`), for tests that speak raw HTTP to the mesh
    /// port to test the HTTP engine behind it.
    pub fn plaintext(self) -> Self {
        self.arg("--mtls").arg("off")
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn start(self) -> SidecarProc {
        let (proc, line) = spawn_until(&self.name, self.command, |l| {
            l.contains("sidecar listening")
        });
        SidecarProc {
            dapr_http: field(&line, "dapr_http"),
            mesh: field(&line, "mesh"),
            admin: field(&line, "admin"),
            proc,
        }
    }
}

/// The usual pair: app `b` (an echo app) behind its sidecar, and app `a`'s sidecar to call from.
pub struct Mesh {
    pub registry: tempfile::TempDir,
    pub app_b: EchoApp,
    pub b: SidecarProc,
    pub a: SidecarProc,
}

pub fn start_pair() -> Mesh {
    pair_with(|b| b)
}

/// The usual pair with plaintext mesh hops, for tests that write raw HTTP to b's mesh port.
pub fn start_plaintext_pair() -> Mesh {
    pair_with(SidecarBuilder::plaintext)
}

fn pair_with(flags: impl Fn(SidecarBuilder) -> SidecarBuilder) -> Mesh {
    let registry = tempfile::tempdir().expect("tempdir");
    let app_b = start_echo_app("b");
    let b = flags(SidecarBuilder::new("b", registry.path()).app_port(app_b.port)).start();
    let a = flags(SidecarBuilder::new("a", registry.path())).start();
    Mesh {
        registry,
        app_b,
        b,
        a,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// `GET url` and its JSON body (panics on any failure: for tests).
pub async fn get_json(url: impl AsRef<str>) -> serde_json::Value {
    let url = url.as_ref();
    let response = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Sends raw bytes on a new connection and reads until the server closes it (or 10 s pass).
/// Returns the bytes read and whether the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything; a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true, // reset counts as closed
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).to_string(), closed)
}

/// A running `outrigger control` and its two addresses.
pub struct ControlProc {
    pub proc: Proc,
    pub listen: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

/// Starts `outrigger control` on `config_dir` with ephemeral ports.
pub fn start_control(config_dir: &Path) -> ControlProc {
    let mut command = Command::new(outrigger_bin());
    command
        .args(["control", "--config-dir"])
        .arg(config_dir)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("RUST_LOG");
    let (proc, line) = spawn_until("control plane", command, |l| {
        l.contains("control plane listening")
    });
    ControlProc {
        listen: field(&line, "listen"),
        admin: field(&line, "admin"),
        proc,
    }
}

/// Two versions of app `b` — echo apps `b-v1` and `b-v2`, each behind its own `b` sidecar with
/// discovery off — and the mesh YAML naming them as clusters `b-v1` and `b-v2`.
pub struct TwoVersions {
    pub registry: tempfile::TempDir,
    pub apps: (EchoApp, EchoApp),
    pub sidecars: (SidecarProc, SidecarProc),
}

impl TwoVersions {
    pub fn start() -> TwoVersions {
        let registry = tempfile::tempdir().expect("tempdir");
        let (v1, v2) = (start_echo_app("b-v1"), start_echo_app("b-v2"));
        let start = |app: &EchoApp| {
            SidecarBuilder::new("b", registry.path())
                .app_port(app.port)
                .arg("--no-discovery")
                .start()
        };
        let sidecars = (start(&v1), start(&v2));
        TwoVersions {
            registry,
            apps: (v1, v2),
            sidecars,
        }
    }

    /// `Cluster` resources `b-v1` and `b-v2` pointing at the two sidecars' mesh ports.
    pub fn clusters_yaml(&self) -> String {
        let (v1, v2) = (self.sidecars.0.mesh.port(), self.sidecars.1.mesh.port());
        format!(
            "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: b-v1}}\nspec: {{endpoints: [{{address: 127.0.0.1:{v1}}}]}}\n---\napiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: b-v2}}\nspec: {{endpoints: [{{address: 127.0.0.1:{v2}}}]}}\n"
        )
    }
}

/// Starts a sidecar on a resources directory it must refuse: asserts exit code 2 and returns
/// what it wrote to stderr.
pub fn refused_start(resources: &Path) -> String {
    let registry = tempfile::tempdir().expect("tempdir");
    let output = Command::new(outrigger_bin())
        .args(["sidecar", "--app-id", "a", "--no-discovery"])
        .args([
            "--dapr-http-port",
            "0",
            "--mesh-port",
            "0",
            "--admin-port",
            "0",
        ])
        .arg("--registry-dir")
        .arg(registry.path())
        .arg("--resources-path")
        .arg(resources)
        .output()
        .expect("run outrigger");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    stderr
}

/// The sidecar's Prometheus text (`/metrics` on its admin port).
pub async fn metrics_text(sidecar: &SidecarProc) -> String {
    client()
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sends `calls` concurrent invocations of `url` (an echo app's `slow?ms=…` method keeps them
/// overlapping) and counts which echo app (`x-echo-app`) served each; every call must succeed.
pub async fn concurrent_spread(
    url: &str,
    calls: usize,
) -> std::collections::BTreeMap<String, usize> {
    let http = client();
    let calls: Vec<_> = (0..calls)
        .map(|_| {
            let (http, url) = (http.clone(), url.to_string());
            tokio::spawn(async move {
                let response = http.get(url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.headers()["x-echo-app"]
                    .to_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    let mut seen = std::collections::BTreeMap::new();
    for call in calls {
        *seen.entry(call.await.unwrap()).or_insert(0) += 1;
    }
    seen
}
