//! Real backends for the state tests: a `redis-server` of the test's own on a free port, and
//! a PostgreSQL database of the test's own on the machine's server (dropped afterwards).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{spawn_until, Proc};

/// A `redis-server` the test started, with its data directory.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts Redis on a free loopback port; `appendonly` turns on the append-only file with
    /// an fsync after every write.
    pub fn start(appendonly: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            appendonly,
            proc: None,
        };
        server.launch();
        server
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"]);
        let (proc, _) = spawn_until(&format!("redis-server :{}", self.port), command, |l| {
            l.contains("Ready to accept connections")
        });
        self.proc = Some(proc);
    }

    /// SIGKILL: no shutdown save, only what was fsynced survives.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.child.kill().expect("kill redis");
            proc.child.wait().expect("wait redis");
        }
    }

    /// Starts again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs a command with redis-cli against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL database of the test's own, created on the machine's server and dropped when
/// the test ends. `OUTRIGGER_TEST_PG` overrides the server's connection string.
pub struct PgDatabase {
    pub name: String,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let name = format!(
            "outrigger_test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        psql(&server(), &format!("CREATE DATABASE {name}"));
        PgDatabase { name }
    }

    /// The connection string a component uses for this database.
    pub fn connection_string(&self) -> String {
        format!("{} dbname={}", server_base(), self.name)
    }

    /// Runs SQL in this database and returns psql's unaligned, tuples-only output.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.connection_string(), sql)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(server())
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// The server's connection string without a database name.
fn server_base() -> String {
    std::env::var("OUTRIGGER_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".to_string())
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where databases are created and dropped from.
fn server() -> String {
    format!("{} dbname=postgres", server_base())
}

fn psql(connection: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(connection)
        .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Kafka-protocol broker of the test's own: tansu (from the Rust package registry) on a
/// free loopback port with in-memory storage. tansu 0.6.0 has no topic auto-creation, so
/// tests create their topics first ([`Tansu::create_topic`]).
pub struct Tansu {
    pub port: u16,
    proc: Option<Proc>,
}

impl Tansu {
    pub fn start() -> Tansu {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu_bin());
        command
            .arg("broker")
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env_remove("RUST_LOG");
        let (proc, _) = spawn_until(&format!("tansu :{port}"), command, |l| {
            l.contains("ready in")
        });
        Tansu {
            port,
            proc: Some(proc),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }
}

/// `tansu` on the PATH, else where `cargo install` puts it. scripts/test.sh installs it.
fn tansu_bin() -> PathBuf {
    let installed = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
        .filter(|p| p.exists());
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("tansu"))
            .find(|p| p.exists())
    });
    on_path.or(installed).unwrap_or_else(|| {
        panic!("tansu is not installed; run scripts/test.sh, or: cargo install tansu --version 0.6.0 --locked --features dynostore")
    })
}
