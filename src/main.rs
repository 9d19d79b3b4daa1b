//! The `outrigger` command line. Parsing and dispatch only; the work lives in the libraries.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use outrigger_config::Snapshot;
use outrigger_proxy::{AppProtocol, MovablePorts, MtlsOptions, Protocol, SidecarOptions};

#[derive(Parser)]
#[command(
    name = "outrigger",
    version,
    about = "A Dapr-compatible building-block runtime and mesh data plane in one sidecar",
    long_about = "Outrigger runs beside each app: the app calls it on localhost with Dapr's HTTP API \
                  (service invocation by app id), and it carries the call to the target app's \
                  sidecar.\n\nQuick start:\n  outrigger run --app-id b --app-port 8081 -- python3 -m http.server 8081\n  \
                  outrigger run --app-id a --dapr-http-port 3500\n  curl http://127.0.0.1:3500/v1.0/invoke/b/method/"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a sidecar and, after `--`, the app it serves (like `dapr run`).
    ///
    /// The app gets DAPR_HTTP_PORT, DAPR_GRPC_PORT, APP_ID, APP_PORT (and DAPR_API_TOKEN when
    /// set) in its environment. SIGINT/SIGTERM are relayed to it, and outrigger exits with its
    /// exit code. Ports left unset use the defaults when free, otherwise any free port.
    Run(RunArgs),
    /// Run the sidecar alone, on exactly the ports given (defaults 3500, 15008, 15000).
    Sidecar(SidecarArgs),
    /// Run the control plane: watch a config directory and push it to every sidecar that
    /// connects with --control-plane.
    Control(outrigger_control::ControlArgs),
    /// Generate HTTP load: open-loop at a fixed rate (latency corrected for coordinated
    /// omission) or closed-loop at full speed; HTTP/1.1 or HTTP/2.
    Load(outrigger_load::cli::LoadArgs),
    /// Run benchmark scenarios (direct, Outrigger 1-hop and 2-hop, nginx and haproxy 2-hop)
    /// side by side and write a markdown report with plots.
    Bench(outrigger_bench::cli::BenchArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Dapr HTTP API port [default: 3500 if free, else any free port]
    #[arg(long)]
    dapr_http_port: Option<u16>,
    /// Port given to the app in DAPR_GRPC_PORT [default: 50001 if free, else any free port]
    #[arg(long)]
    dapr_grpc_port: Option<u16>,
    /// Mesh listener port [default: 15008 if free, else any free port]
    #[arg(long)]
    mesh_port: Option<u16>,
    /// Admin listener port [default: 15000 if free, else any free port]
    #[arg(long)]
    admin_port: Option<u16>,
    /// The app to start, after `--`: `outrigger run --app-id a -- python3 app.py`
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
struct SidecarArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Dapr HTTP API port (0 picks a free one)
    #[arg(long, default_value_t = 3500)]
    dapr_http_port: u16,
    /// Port advertised to the app as DAPR_GRPC_PORT
    #[arg(long, default_value_t = 50001)]
    dapr_grpc_port: u16,
    /// Mesh listener port, where other sidecars deliver calls (0 picks a free one)
    #[arg(long, default_value_t = 15008)]
    mesh_port: u16,
    /// Admin listener port: /ready, /healthz, /metrics, /config_dump (0 picks a free one)
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
}

#[derive(Args)]
struct CommonArgs {
    /// The app id other apps call this one by
    #[arg(long, env = "APP_ID")]
    app_id: String,
    /// The port the app listens on (127.0.0.1); omit for an app that only makes calls
    #[arg(long)]
    app_port: Option<u16>,
    /// How to talk to the app
    #[arg(long, value_enum, default_value_t = AppProtocolArg::Http)]
    app_protocol: AppProtocolArg,
    /// A directory of Dapr (Component, Resiliency, Subscription, Configuration) and mesh
    /// (Cluster, Route) YAML resources. Without it the sidecar serves an in-memory state
    /// store named `statestore`, as `dapr init` sets up.
    #[arg(long, value_name = "DIR")]
    resources_path: Option<PathBuf>,
    /// The app's namespace; namespaced calls use `<app-id>.<namespace>`
    #[arg(long, env = "NAMESPACE")]
    namespace: Option<String>,
    /// Address the Dapr HTTP API and admin listeners bind to
    #[arg(long, default_value = "127.0.0.1")]
    listen_address: IpAddr,
    /// Address the mesh listener binds to
    #[arg(long, default_value = "0.0.0.0")]
    mesh_listen_address: IpAddr,
    /// Host other sidecars use to reach this one's mesh listener
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: String,
    /// The control plane to take configuration from, e.g. http://127.0.0.1:15010
    #[arg(long, value_name = "URL", value_parser = parse_control_plane)]
    control_plane: Option<String>,
    /// Local registry directory for zero-setup discovery of other sidecars on this host
    /// [default: $XDG_RUNTIME_DIR/outrigger/registry or /tmp/outrigger-<uid>/registry]
    #[arg(long, env = "OUTRIGGER_REGISTRY_DIR", value_name = "DIR")]
    registry_dir: Option<PathBuf>,
    /// Turn off local-registry discovery (only mesh YAML clusters are reachable)
    #[arg(long)]
    no_discovery: bool,
    /// Mutual TLS between sidecars: `on` (every mesh connection proves both sides' SPIFFE
    /// identities; plaintext is refused) or `off` (plaintext, and callers' identities are
    /// taken on trust — for debugging only)
    #[arg(long, value_enum, default_value_t = MtlsArg::On)]
    mtls: MtlsArg,
    /// The SPIFFE trust domain of this sidecar's identity
    #[arg(long, default_value = outrigger_proxy::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Directory of the local certificate authority that signs this host's workload
    /// certificates, created on first use [default: `<registry dir>/ca`]
    #[arg(long, env = "OUTRIGGER_CA_DIR", value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// Lifetime of this sidecar's workload certificate; it is renewed at about half of it
    #[arg(long, default_value = "24h", value_parser = parse_cert_ttl)]
    cert_ttl: Duration,
    /// On SIGTERM, how long to wait for requests in flight
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Requests with a larger header block get 431
    #[arg(long, default_value_t = 60)]
    max_request_headers_kb: usize,
    /// Largest request body the sidecar reads itself (state, metadata), as daprd's
    /// `--max-body-size`: bytes, or with a unit (`4Mi`, `512Ki`, `16M`); larger get 413
    #[arg(long, default_value = "4Mi", value_parser = parse_size)]
    max_body_size: usize,
    /// Worker threads (1 runs a single-threaded runtime)
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// How this sidecar talks to other sidecars' mesh listeners, which accept both: pooled
    /// HTTP/1.1 keep-alive connections (less CPU per request) or HTTP/2 multiplexed over one
    /// connection per peer
    #[arg(long, value_enum, default_value_t = MeshProtocolArg::Http1)]
    mesh_protocol: MeshProtocolArg,
    /// A request head must arrive whole within this time of its first byte (and a new
    /// connection must start one within it); a late one is answered 408 and closed
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    header_timeout: Duration,
    /// A keep-alive connection with no request in flight for this long is closed
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    idle_timeout: Duration,
    /// Connections each listener holds at most; at the cap it stops accepting (new
    /// connections wait in the kernel's backlog) until one closes
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Concurrent streams an HTTP/2 client may open on one connection
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    h2_max_concurrent_streams: u32,
    /// Connecting to another sidecar or to the app gives up after this long
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    connect_timeout: Duration,
    /// Required in header dapr-api-token on every Dapr API call except the health checks
    #[arg(long, env = "DAPR_API_TOKEN", hide_env_values = true)]
    dapr_api_token: Option<String>,
    /// Sent to the app in header dapr-api-token
    #[arg(long, env = "APP_API_TOKEN", hide_env_values = true)]
    app_api_token: Option<String>,
    /// Log filter, e.g. `info` or `debug,outrigger_proxy=trace` (RUST_LOG also works)
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum AppProtocolArg {
    Http,
    H2c,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MtlsArg {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum MeshProtocolArg {
    Http1,
    H2,
}

/// `http://host:port`: refused at start-up rather than retried forever.
fn parse_control_plane(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{e}; expected a URL like http://127.0.0.1:15010"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(text.trim_end_matches('/').to_string()),
        _ => Err(format!(
            "{text:?} is not an http:// URL with a host; expected e.g. http://127.0.0.1:15010"
        )),
    }
}

/// A workload certificate's lifetime: X.509 validity is in whole seconds, so anything under
/// two would expire as it is issued; a year is the local root's own lifetime.
fn parse_cert_ttl(text: &str) -> Result<Duration, String> {
    let ttl = outrigger_config::duration::parse(text)?;
    if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(365 * 24 * 3600) {
        return Err(format!(
            "{text:?} is outside 2s..365d (certificate validity is counted in whole seconds, and the local root lives a year)"
        ));
    }
    Ok(ttl)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    outrigger_config::duration::parse(text)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be longer than zero")),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, ports, command) = match cli.command {
        Command::Load(args) => return outrigger_load::cli::run(args),
        Command::Control(args) => {
            init_logging("info");
            return outrigger_control::run(args);
        }
        Command::Bench(args) => return outrigger_bench::cli::run(args),
        Command::Run(args) => {
            let host = args.common.listen_address;
            let ports = Ports {
                dapr_http: args.dapr_http_port.unwrap_or(3500),
                dapr_grpc: free_or_default(host, args.dapr_grpc_port, 50001),
                mesh: args.mesh_port.unwrap_or(15008),
                admin: args.admin_port.unwrap_or(15000),
                // Only the ports the user left unset may move.
                movable: MovablePorts {
                    dapr_http: args.dapr_http_port.is_none(),
                    mesh: args.mesh_port.is_none(),
                    admin: args.admin_port.is_none(),
                },
            };
            (args.common, ports, args.command)
        }
        Command::Sidecar(args) => {
            let ports = Ports {
                dapr_http: args.dapr_http_port,
                dapr_grpc: args.dapr_grpc_port,
                mesh: args.mesh_port,
                admin: args.admin_port,
                movable: MovablePorts::default(),
            };
            (args.common, ports, Vec::new())
        }
    };
    init_logging(&common.log_level);
    let snapshot = match &common.resources_path {
        Some(dir) => match outrigger_config::load_dir(dir) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                eprintln!("outrigger: cannot load resources: {e}");
                return ExitCode::from(2);
            }
        },
        None => Snapshot::embedded_defaults(),
    };
    match outrigger_proxy::launch(sidecar_options(common, ports), snapshot, command) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("outrigger: {e}");
            ExitCode::from(1)
        }
    }
}

struct Ports {
    dapr_http: u16,
    dapr_grpc: u16,
    mesh: u16,
    admin: u16,
    movable: MovablePorts,
}

fn sidecar_options(common: CommonArgs, ports: Ports) -> SidecarOptions {
    let mut options = SidecarOptions::new(common.app_id);
    options.namespace = common.namespace;
    options.app_port = common.app_port;
    options.app_protocol = match common.app_protocol {
        AppProtocolArg::Http => AppProtocol::Http,
        AppProtocolArg::H2c => AppProtocol::H2c,
    };
    options.dapr_http_addr = SocketAddr::new(common.listen_address, ports.dapr_http);
    options.dapr_grpc_port = ports.dapr_grpc;
    options.mesh_addr = SocketAddr::new(common.mesh_listen_address, ports.mesh);
    options.admin_addr = SocketAddr::new(common.listen_address, ports.admin);
    options.movable_ports = ports.movable;
    options.advertise_host = common.advertise_address;
    options.api_token = common.dapr_api_token.filter(|t| !t.is_empty());
    options.app_api_token = common.app_api_token.filter(|t| !t.is_empty());
    options.control_plane = common.control_plane;
    let registry_dir = common
        .registry_dir
        .unwrap_or_else(outrigger_proxy::default_registry_dir);
    options.mtls = (common.mtls == MtlsArg::On).then(|| MtlsOptions {
        trust_domain: common.trust_domain,
        ca_dir: common.ca_dir.unwrap_or_else(|| registry_dir.join("ca")),
        cert_ttl: common.cert_ttl,
    });
    options.registry_dir = (!common.no_discovery).then_some(registry_dir);
    options.drain_timeout = common.drain_timeout;
    options.max_request_header_bytes = common.max_request_headers_kb * 1024;
    options.max_body_bytes = common.max_body_size;
    options.threads = common.threads;
    options.mesh_protocol = match common.mesh_protocol {
        MeshProtocolArg::Http1 => Protocol::Http1,
        MeshProtocolArg::H2 => Protocol::H2c,
    };
    options.header_timeout = common.header_timeout;
    options.idle_timeout = common.idle_timeout;
    options.max_connections = common.max_connections as usize;
    options.h2_max_concurrent_streams = common.h2_max_concurrent_streams;
    options.connect_timeout = common.connect_timeout;
    options
}

/// The port handed to the app as DAPR_GRPC_PORT (the gRPC API is not served yet): the explicit
/// one, else the default when it is free, else any free port.
fn free_or_default(host: IpAddr, explicit: Option<u16>, default: u16) -> u16 {
    if let Some(port) = explicit {
        return port;
    }
    let host = if host.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host
    };
    if TcpListener::bind((host, default)).is_ok() {
        return default;
    }
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// A size as daprd's flags take it: `4Mi`, `512Ki`, `1Gi`, `16M`, `100k`, or plain bytes.
fn parse_size(text: &str) -> Result<usize, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: usize = match unit {
        "" | "B" => 1,
        "k" | "K" | "KB" => 1000,
        "Ki" | "KiB" => 1024,
        "M" | "MB" => 1000 * 1000,
        "Mi" | "MiB" => 1024 * 1024,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Gi" | "GiB" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}; use Ki, Mi, Gi, K, M, G or bytes"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size above zero, e.g. 4Mi"))
}
