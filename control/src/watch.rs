//! Watching the config directory: a change to its files is loaded once, 100 ms after the last
//! event of a burst. Events that change nothing — the control plane's own reads show up as
//! access events, and an editor may save identical bytes — reload nothing: a load whose
//! version (a hash of every file's name and text) equals the one in force is dropped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::server::ControlPlane;

/// Quiet time after the last event before the directory is read.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Starts watching `dir`; the returned watcher must be kept alive.
pub(crate) fn watch_config(
    dir: &Path,
    plane: Arc<ControlPlane>,
) -> Result<RecommendedWatcher, String> {
    let changed = Arc::new(tokio::sync::Notify::new());
    let signal = changed.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Opening and reading a file (ours included) is not a change.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(_) => signal.notify_one(),
            Err(e) => tracing::warn!(error = %e, "watching the config directory"),
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            // Wait for the burst (write, rename, chmod…) to end.
            while tokio::time::timeout(DEBOUNCE, changed.notified())
                .await
                .is_ok()
            {}
            let (plane, dir) = (plane.clone(), dir.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&dir, &plane)).await;
        }
    });
    Ok(watcher)
}

fn reload(dir: &Path, plane: &ControlPlane) {
    match outrigger_config::load_dir_with_sources(dir) {
        Ok((snapshot, _)) if snapshot.version == plane.version() => {
            tracing::debug!(version = %snapshot.version, "config directory touched; nothing changed");
        }
        Ok((snapshot, sources)) => {
            if let Err(e) = snapshot.validate() {
                let secrets = outrigger_config::redact::Secrets::of(&snapshot);
                tracing::warn!(error = %secrets.scrub(&e.to_string()), "pushing a configuration sidecars are expected to refuse");
            }
            tracing::info!(version = %snapshot.version, "configuration changed");
            plane.set_snapshot(snapshot, sources);
        }
        Err(e) => tracing::error!(
            error = %plane.scrub(&e.to_string()),
            "configuration not reloaded; the previous one stays in force"
        ),
    }
}
