//! Running a sidecar as a process: the tokio runtime, the signals, and for `outrigger run …
//! -- CMD`, the app beside it with the environment the Dapr SDKs read.
//!
//! Signals: SIGTERM or SIGINT with no app drains the sidecar and exits 0. With an app, the
//! signal is relayed to the app; when the app exits (for whatever reason) the sidecar drains
//! and the process exits with the app's exit code, as `dapr run` does.

use std::collections::BTreeMap;
use std::process::ExitStatus;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use outrigger_config::Snapshot;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::options::SidecarOptions;
use crate::serve::{run, BoundListeners};
use crate::shared::{ProxyError, Shared};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("cannot start the app {program:?}: {source}")]
    App {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the sidecar (and the app, when `app_command` is non-empty) until it should stop;
/// returns the process exit code.
pub fn launch(
    options: SidecarOptions,
    snapshot: Snapshot,
    app_command: Vec<String>,
) -> Result<i32, LaunchError> {
    raise_open_file_limit();
    // One thread: a current-thread runtime, which skips the work-stealing scheduler's
    // cross-thread bookkeeping (the benchmark runs sidecars this way, like one-worker peers).
    let mut builder = if options.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(options.threads);
        builder
    };
    let runtime = builder
        .thread_name("outrigger")
        .enable_all()
        .build()
        .map_err(LaunchError::Runtime)?;
    let code = runtime.block_on(serve(options, snapshot, app_command));
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

async fn serve(
    options: SidecarOptions,
    snapshot: Snapshot,
    app_command: Vec<String>,
) -> Result<i32, LaunchError> {
    let listeners = BoundListeners::bind(&options)?;
    let env = app_environment(&options, &listeners);
    let shared = Shared::new(options, snapshot)?;
    // Handlers first: "sidecar listening" is logged by the server task, and a SIGTERM sent on
    // seeing it must find them installed rather than kill the process outright.
    let mut terminate = signal(SignalKind::terminate()).map_err(LaunchError::Runtime)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(LaunchError::Runtime)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(shared.clone(), listeners, async {
        let _ = stop_rx.await;
    }));

    let code = if app_command.is_empty() {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
        0
    } else {
        let mut app = AppProcess::spawn(&app_command, &env)?;
        loop {
            tokio::select! {
                status = app.wait() => {
                    let code = status.map(exit_code).unwrap_or(1);
                    tracing::info!(code, "app exited");
                    break code;
                }
                _ = terminate.recv() => app.signal(Signal::SIGTERM),
                _ = interrupt.recv() => app.signal(Signal::SIGINT),
            }
        }
    };
    let _ = stop_tx.send(());
    match server.await {
        Ok(result) => result?,
        Err(join) => tracing::error!(error = %join, "sidecar task failed"),
    }
    Ok(code)
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime does): every
/// listener may hold `--max-connections` connections, each forwarded one an upstream
/// connection too, and Debian's default soft limit of 1024 would run out first.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// The variables `dapr run` gives an app, so the official SDKs find the sidecar.
fn app_environment(
    options: &SidecarOptions,
    listeners: &BoundListeners,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "DAPR_HTTP_PORT".to_string(),
        listeners.dapr_http_addr().port().to_string(),
    );
    env.insert(
        "DAPR_GRPC_PORT".to_string(),
        options.dapr_grpc_port.to_string(),
    );
    env.insert("APP_ID".to_string(), options.app_id.clone());
    if let Some(port) = options.app_port {
        env.insert("APP_PORT".to_string(), port.to_string());
    }
    if let Some(token) = &options.api_token {
        env.insert("DAPR_API_TOKEN".to_string(), token.clone());
    }
    env
}

struct AppProcess {
    child: Child,
}

impl AppProcess {
    fn spawn(
        command: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<AppProcess, LaunchError> {
        let (program, args) = command
            .split_first()
            .expect("caller checked the command is not empty");
        let child = Command::new(program)
            .args(args)
            .envs(env)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::App {
                program: program.clone(),
                source,
            })?;
        Ok(AppProcess { child })
    }

    fn signal(&self, signal: Signal) {
        tracing::info!(?signal, "relaying signal to the app");
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}

/// The exit code a shell reports for `status`: the code, or 128 + the signal number.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
