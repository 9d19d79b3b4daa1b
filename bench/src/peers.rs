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

/// Writes an nginx config listening on `listen` and proxying to `upstream`; returns the path.
pub(crate) fn nginx_config(
    dir: &Path,
    name: &str,
    listen: u16,
    upstream: u16,
) -> anyhow::Result<PathBuf> {
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
        listen 127.0.0.1:{listen} reuseport;
        location / {{
            proxy_pass http://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
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
) -> anyhow::Result<PathBuf> {
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
    bind 127.0.0.1:{listen}
    default_backend next
backend next
    server upstream 127.0.0.1:{upstream}
"#
    );
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config)?;
    Ok(path)
}
