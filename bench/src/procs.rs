//! Child processes of a benchmark: spawning (pinned to the server core), readiness, and what
//! /proc says about them (CPU time, resident memory).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A process the harness started; killed when dropped.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
}

impl Proc {
    /// Starts `program args…`, pinned to `cpu` when given (via `taskset`, so every thread the
    /// program creates inherits the pinning). Output goes to `log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        cpu: Option<usize>,
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (a bad config, a taken port).
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `GET path` on `addr` answers 200 (with `headers`), or fails after `limit`.
pub(crate) fn wait_http_ok(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        proc.check_alive()?;
        match get_status(addr, path) {
            Ok(200) => return Ok(()),
            Ok(status) => last = format!("status {status}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not answer 200 on http://{addr}{path} within {limit:?} (last: {last})",
        proc.name
    )
}

fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP response")
}

/// User + system CPU time of a process so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12th and 13th after ')'.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Current resident set size in bytes.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Pins the calling thread (and every thread it creates afterwards) to `cpu`.
pub(crate) fn pin_current_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

pub(crate) fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The median of `values` (0 when there are none).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`, or fails after 30 s.
pub(crate) fn wait_listening(proc: &mut Proc, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        proc.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not listen on {addr} within 30 s", proc.name)
}

/// A `redis-server` of the benchmark's own on a free port, without persistence, its files in
/// `dir`; returns it once it listens, with its port.
pub(crate) fn start_redis(
    dir: &Path,
    log: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let args: Vec<String> = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        dir.display().to_string(),
    ];
    let mut proc = Proc::spawn("redis-server", Path::new("redis-server"), &args, cpu, log)
        .context("starting redis-server (apt-get install redis-server)")?;
    wait_listening(&mut proc, port)?;
    Ok((proc, port))
}

/// What a benchmark sidecar is started with besides its free ports.
pub(crate) struct SidecarSpec<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) app_port: Option<u16>,
    pub(crate) resources: Option<&'a Path>,
    pub(crate) log: &'a Path,
    pub(crate) cpu: Option<usize>,
    /// More flags (`--threads 1`, `--log-level error`).
    pub(crate) extra: &'a [&'a str],
}

/// A running `outrigger sidecar` (discovery off, listeners on loopback) and its addresses.
pub(crate) struct Sidecar {
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) mesh: SocketAddr,
    pub(crate) _proc: Proc,
}

/// Starts a sidecar and waits until its Dapr HTTP API answers.
pub(crate) fn start_sidecar(exe: &Path, spec: &SidecarSpec<'_>) -> anyhow::Result<Sidecar> {
    let (http, admin, mesh) = (free_port()?, free_port()?, free_port()?);
    // Plaintext mesh hops, as the figures these benchmarks compare against were taken with.
    let mut args: Vec<String> = ["sidecar", "--app-id", spec.app_id, "--no-discovery"]
        .into_iter()
        .chain(["--mesh-listen-address", "127.0.0.1", "--mtls", "off"])
        .chain(spec.extra.iter().copied())
        .map(String::from)
        .collect();
    args.extend([
        "--dapr-http-port".into(),
        http.to_string(),
        "--admin-port".into(),
        admin.to_string(),
        "--mesh-port".into(),
        mesh.to_string(),
    ]);
    if let Some(port) = spec.app_port {
        args.extend(["--app-port".into(), port.to_string()]);
    }
    if let Some(resources) = spec.resources {
        args.extend(["--resources-path".into(), resources.display().to_string()]);
    }
    let mut proc = Proc::spawn(
        &format!("outrigger sidecar {}", spec.app_id),
        exe,
        &args,
        spec.cpu,
        spec.log,
    )?;
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    wait_http_ok(
        &mut proc,
        local(http),
        "/v1.0/metadata",
        Duration::from_secs(30),
    )?;
    Ok(Sidecar {
        http: local(http),
        admin: local(admin),
        mesh: local(mesh),
        _proc: proc,
    })
}
