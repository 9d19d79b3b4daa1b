//! The peer proxies, configured the way their experts would for a two-hop sidecar chain:
//! one worker each, keep-alive to the upstream with connection reuse, no access log, and
//! single-process (no master) so /proc accounting sees all of its work in one pid.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub(crate) const NGINX: &str = "/usr/sbin/nginx";
pub(crate) const HAPROXY: &str = "/usr/sbin/haproxy";

/// Installs nginx and haproxy from Debian when they are missing (needs root or sudo).
pub(crate) fn ensure_installed() -> anyhow::Result<()> {
    let missing: Vec<&str> = [("nginx", NGINX), ("haproxy", HAPROXY)]
        .iter()
        .filter(|(_, path)| !Path::new(path).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "outrigger bench: installing {} from Debian",
        missing.join(" ")
    );
    let root = nix::unistd::geteuid().is_root();
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let mut command = if root {
            Command::new(args[0])
        } else {
            Command::new("sudo")
        };
        if !root {
            command.arg(args[0]);
        }
        let status = command
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!("`{}` failed with {status}", args.join(" "));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq"];
    install.extend(&missing);
    run(&install).with_context(|| {
        format!(
            "installing {}; install them yourself or run without the peer scenarios",
            missing.join(" ")
        )
    })?;
    // Debian starts the packaged services; they are not ours and would compete for the CPU.
    for service in &missing {
        let _ = Command::new("service").arg(service).arg("stop").status();
    }
    Ok(())
}

/// TLS between the two hops of a peer chain, as their experts would set it up for a fair
/// comparison with the mTLS mesh hop: TLS 1.3 only, P-256 keys, client certificates verified
/// on both sides, keep-alive upstream connections (nginx also reuses sessions).
#[derive(Clone, Copy)]
pub(crate) enum HopTls<'a> {
    None,
    /// This hop listens with TLS (the chain's second proxy).
    Server(&'a TlsFiles),
    /// This hop connects to its upstream with TLS (the chain's first proxy).
    Client(&'a TlsFiles),
}

/// A CA and a server and a client certificate it signed, as PEM files.
pub(crate) struct TlsFiles {
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
    /// Certificate and key in one file, as haproxy takes them.
    pub(crate) server_combined: PathBuf,
    pub(crate) client_combined: PathBuf,
}

impl TlsFiles {
    /// Generates the CA and both certificates (for `localhost` / 127.0.0.1) into `dir`.
    pub(crate) fn generate(dir: &Path) -> anyhow::Result<TlsFiles> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |name: &str| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf("bench-server")?;
        let (client_cert, client_key) = leaf("bench-client")?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        Ok(TlsFiles {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_combined: write("server-combined.pem", &format!("{server_cert}{server_key}"))?,
            client_combined: write("client-combined.pem", &format!("{client_cert}{client_key}"))?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
        })
    }
}

/// Writes an nginx config listening on `listen` and proxying to `upstream`; returns the path.
pub(crate) fn nginx_config(
    dir: &Path,
    name: &str,
    listen: u16,
    upstream: u16,
    tls: HopTls<'_>,
) -> anyhow::Result<PathBuf> {
    let (listen_tls, scheme, upstream_tls) = match tls {
        HopTls::None => (String::new(), "http", String::new()),
        HopTls::Server(files) => (
            format!(
                " ssl;\n        ssl_protocols TLSv1.3;\n        ssl_ecdh_curve prime256v1;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_client_certificate {};\n        ssl_verify_client on;\n        ssl_session_cache shared:tls:1m;\n        keepalive_timeout 300s",
                files.server_cert.display(),
                files.server_key.display(),
                files.ca.display()
            ),
            "http",
            String::new(),
        ),
        HopTls::Client(files) => (
            String::new(),
            "https",
            format!(
                "\n            proxy_ssl_protocols TLSv1.3;\n            proxy_ssl_certificate {};\n            proxy_ssl_certificate_key {};\n            proxy_ssl_trusted_certificate {};\n            proxy_ssl_verify on;\n            proxy_ssl_name localhost;\n            proxy_ssl_session_reuse on;",
                files.client_cert.display(),
                files.client_key.display(),
                files.ca.display()
            ),
        ),
    };
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let p = prefix.display();
    let config = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
error_log {p}/error.log warn;
pid {p}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 1000000;
    upstream next {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{listen} reuseport{listen_tls};
        location / {{
            proxy_pass {scheme}://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{upstream_tls}
        }}
    }}
}}
"#
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Writes a haproxy config listening on `listen` and proxying to `upstream`; returns the path.
pub(crate) fn haproxy_config(
    dir: &Path,
    name: &str,
    listen: u16,
    upstream: u16,
    tls: HopTls<'_>,
) -> anyhow::Result<PathBuf> {
    let (bind_tls, server_tls) = match tls {
        HopTls::None => (String::new(), String::new()),
        HopTls::Server(files) => (
            format!(
                " ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3",
                files.server_combined.display(),
                files.ca.display()
            ),
            String::new(),
        ),
        HopTls::Client(files) => (
            String::new(),
            format!(
                " ssl crt {} ca-file {} verify required verifyhost localhost ssl-min-ver TLSv1.3",
                files.client_combined.display(),
                files.ca.display()
            ),
        ),
    };
    let config = format!(
        r#"global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{listen}{bind_tls}
    default_backend next
backend next
    server upstream 127.0.0.1:{upstream}{server_tls}
"#
    );
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config)?;
    Ok(path)
}
