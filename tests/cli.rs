//! The `outrigger` binary as a user runs it: `run` with an app, signals, exit codes, start-up
//! errors from bad resources, and graceful shutdown.

mod support;

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

#[test]
fn run_exits_with_the_apps_exit_code_and_gives_it_the_dapr_environment() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("env.txt");
    let status = Command::new(outrigger_bin())
        .args(["run", "--app-id", "job", "--app-port", "9", "--no-discovery"])
        .args(["--dapr-http-port", "0", "--mesh-port", "0", "--admin-port", "0"])
        .env("DAPR_API_TOKEN", "tok")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "echo \"$DAPR_HTTP_PORT $DAPR_GRPC_PORT $APP_ID $APP_PORT $DAPR_API_TOKEN\" > {}; exit 7",
            seen.display()
        ))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let env = std::fs::read_to_string(&seen).unwrap();
    let fields: Vec<&str> = env.split_whitespace().collect();
    assert_eq!(fields.len(), 5, "{env:?}");
    let http_port: u16 = fields[0].parse().unwrap();
    assert_ne!(http_port, 0, "DAPR_HTTP_PORT must be the real port, not 0");
    assert_eq!(&fields[2..], ["job", "9", "tok"]);
}

#[test]
fn run_relays_sigterm_to_the_app_and_reports_how_it_ended() {
    let registry = tempfile::tempdir().unwrap();
    let mut command = Command::new(outrigger_bin());
    command
        .args([
            "run",
            "--app-id",
            "sleeper",
            "--dapr-http-port",
            "0",
            "--mesh-port",
            "0",
            "--admin-port",
            "0",
        ])
        .arg("--registry-dir")
        .arg(registry.path())
        .args(["--", "sleep", "60"]);
    let (mut proc, _) = spawn_until("run sleeper", command, |l| l.contains("sidecar listening"));
    proc.signal(Signal::SIGTERM);
    let status = proc.wait_exit(Duration::from_secs(30));
    // sleep dies of the relayed SIGTERM; like a shell, outrigger reports 128 + 15.
    assert_eq!(status.code(), Some(143), "{}", proc.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_on_one_host_find_each_other_with_no_configuration() {
    let registry = tempfile::tempdir().unwrap();
    let app = start_echo_app("b");
    // As a user would type them: app id, app port and the app command; nothing else but the
    // test's own registry directory (so parallel tests do not see each other).
    let mut b = Command::new(outrigger_bin());
    b.args(["run", "--app-id", "b", "--app-port", &app.port.to_string()])
        .env("OUTRIGGER_REGISTRY_DIR", registry.path())
        .args(["--", "sleep", "60"]);
    let (_b, _) = spawn_until("run b", b, |l| l.contains("sidecar listening"));
    let mut a = Command::new(outrigger_bin());
    a.args(["run", "--app-id", "a"])
        .env("OUTRIGGER_REGISTRY_DIR", registry.path())
        .args(["--", "sleep", "60"]);
    let (_a, line) = spawn_until("run a", a, |l| l.contains("sidecar listening"));
    let dapr_http = field(&line, "dapr_http");
    let response = client()
        .post(format!("http://{dapr_http}/v1.0/invoke/b/method/hello"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-echo-app"], "b");
    let entries = std::fs::read_dir(registry.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(entries, 2, "one registry entry per sidecar");
    // And the call went over mTLS with no setup: the local CA next to the registry.
    assert!(registry.path().join("ca/ca.pem").exists());
}

#[test]
fn a_malformed_component_fails_start_up_naming_file_line_and_field() {
    let resources = tempfile::tempdir().unwrap();
    let file = resources.path().join("statestore.yaml");
    std::fs::write(
        &file,
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  metadata:\n    redisHost: localhost:6379\n",
    )
    .unwrap();
    let output = Command::new(outrigger_bin())
        .args(["sidecar", "--app-id", "a", "--no-discovery"])
        .arg("--resources-path")
        .arg(resources.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "outrigger: cannot load resources: {}:8:5: spec.metadata: invalid type: map, expected a sequence",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn an_unknown_component_type_fails_start_up_listing_the_supported_types() {
    let resources = tempfile::tempdir().unwrap();
    let file = resources.path().join("pubsub.yaml");
    std::fs::write(
        &file,
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.pigeon\n  version: v1\n",
    )
    .unwrap();
    let output = Command::new(outrigger_bin())
        .args(["sidecar", "--app-id", "a", "--no-discovery"])
        .arg("--resources-path")
        .arg(resources.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}:6:3: spec.type: unknown component type \"pubsub.pigeon\"; supported types are: state.in-memory, state.redis", file.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("pubsub.kafka"), "{stderr}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(outrigger_bin())
        .args([
            "sidecar",
            "--app-id",
            "a",
            "--no-discovery",
            "--dapr-http-port",
            &port,
        ])
        .args(["--mesh-port", "0", "--admin-port", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} for the Dapr HTTP API"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--dapr-http-port"), "{stderr}");
}

#[test]
fn help_names_the_subcommands_and_the_flags_users_need() {
    let output = Command::new(outrigger_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("run") && help.contains("sidecar"), "{help}");
    let output = Command::new(outrigger_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--app-id",
        "--app-port",
        "--resources-path",
        "--dapr-http-port",
        "--app-protocol",
        "--registry-dir",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_slow_request_finish_refuses_new_connections_and_exits_0() {
    let mut mesh = start_pair();
    let slow = tokio::spawn({
        let url = mesh.a.url("/v1.0/invoke/b/method/slow?ms=2000");
        async move {
            let response = client().get(url).send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    });
    // Wait until the slow request is in flight in sidecar a.
    let mut in_flight = false;
    for _ in 0..100 {
        let metrics = client()
            .get(mesh.a.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // The metrics scrape itself is not counted (admin is separate), so 1 is the slow call.
        if metrics.contains("outrigger_requests_in_flight 1") {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_flight, "the slow request never showed up in flight");

    mesh.a.proc.signal(Signal::SIGTERM);
    // New connections are refused once the listener has closed, while the slow call runs on.
    let mut refused = false;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(mesh.a.dapr_http).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "new connections were still accepted after SIGTERM");
    assert!(
        !slow.is_finished(),
        "the slow request ended before the listener closed"
    );

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"path\":\"/slow?ms=2000\""), "{body}");
    let exit = mesh.a.proc.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "{}", mesh.a.proc.output());
    assert!(mesh.a.proc.output().contains("drained"));
}

#[test]
fn a_control_plane_address_that_is_not_an_http_url_is_refused_at_start() {
    for bad in ["127.0.0.1:15010", "grpc://cp:15010", "http://"] {
        let output = Command::new(outrigger_bin())
            .args([
                "sidecar",
                "--app-id",
                "a",
                "--no-discovery",
                "--control-plane",
                bad,
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--control-plane"), "{bad}: {stderr}");
        assert!(stderr.contains("http://127.0.0.1:15010"), "{bad}: {stderr}");
    }
}

#[test]
fn the_control_plane_refuses_a_config_dir_it_cannot_read() {
    let output = Command::new(outrigger_bin())
        .args([
            "control",
            "--config-dir",
            "/nonexistent/outrigger-config",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot load /nonexistent/outrigger-config"),
        "{stderr}"
    );
}
