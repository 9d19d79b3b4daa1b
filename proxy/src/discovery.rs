//! Zero-setup discovery on one host: a directory of small JSON files, one per running sidecar.
//!
//! Every sidecar writes `<app-id>-<pid>-<mesh-port>.json` (its app id, namespace and mesh
//! address) into the registry directory when its listeners are up, and removes it on
//! shutdown. Lookups read a cached view that a background task refreshes every second and
//! that a miss refreshes at once, so a freshly started app is found on the first call.
//! Entries whose process is gone (kill -9) are ignored and cleaned up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::active::AppTarget;
use crate::metrics::{Direction, Metrics};
use crate::upstream::{EndpointSet, Endpoints};

/// What one sidecar publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub app_id: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// `host:port` of the sidecar's mesh listener.
    pub mesh_address: String,
    pub dapr_http_port: u16,
    pub pid: u32,
    pub started_unix_ms: u64,
}

/// The registry directory used when none is given: per user, so two users on one host do not
/// see each other's apps.
pub fn default_registry_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("outrigger").join("registry");
    }
    let uid = nix::unistd::getuid();
    std::env::temp_dir()
        .join(format!("outrigger-{uid}"))
        .join("registry")
}

/// `<app-id>` or `<app-id>.<namespace>`, as callers write namespaced ids; a plain string so
/// that the common lookup (no namespace) borrows the app id instead of allocating a key.
type AppKey = String;

fn app_key(app_id: &str, namespace: Option<&str>) -> AppKey {
    match namespace {
        Some(ns) => format!("{app_id}.{ns}"),
        None => app_id.to_string(),
    }
}

pub(crate) struct LocalRegistry {
    dir: PathBuf,
    endpoints: Arc<Endpoints>,
    metrics: Arc<Metrics>,
    view: ArcSwap<HashMap<AppKey, Arc<AppTarget>>>,
    own_entry: std::sync::Mutex<Option<PathBuf>>,
    last_refresh: Mutex<Instant>,
}

/// A miss refreshes the view at most this often, so a flood of calls to an unknown app id
/// does not turn into a flood of directory reads.
const MISS_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

impl LocalRegistry {
    pub(crate) fn new(dir: PathBuf, endpoints: Arc<Endpoints>, metrics: Arc<Metrics>) -> Self {
        LocalRegistry {
            dir,
            endpoints,
            metrics,
            view: ArcSwap::from_pointee(HashMap::new()),
            own_entry: std::sync::Mutex::new(None),
            last_refresh: Mutex::new(Instant::now() - MISS_REFRESH_INTERVAL),
        }
    }

    /// Publishes this sidecar. Written to a temporary name and renamed, so readers never see
    /// half a file.
    pub(crate) fn register(&self, entry: &RegistryEntry) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let port = entry.mesh_address.rsplit(':').next().unwrap_or("0");
        let name = format!("{}-{}-{}.json", entry.app_id, entry.pid, port);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let body = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)?;
        *self.own_entry.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
        self.refresh_blocking();
        Ok(path)
    }

    /// Removes this sidecar's entry (on shutdown, before draining, so peers stop picking it).
    pub(crate) fn deregister(&self) {
        let own = self
            .own_entry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(path) = own {
            let _ = std::fs::remove_file(path);
        }
    }

    pub(crate) fn lookup(&self, app_id: &str, namespace: Option<&str>) -> Option<Arc<AppTarget>> {
        let view = self.view.load();
        match namespace {
            Some(ns) => view.get(&app_key(app_id, Some(ns))).cloned(),
            None => view.get(app_id).cloned(),
        }
    }

    /// Every app in the registry but `app_id` (in any namespace), one target each: where the
    /// in-memory pub/sub hands a message to the other apps on this host.
    /// Every other app on the host: its id, its namespace and its sidecars.
    pub(crate) fn apps_except(
        &self,
        app_id: &str,
        namespace: Option<&str>,
    ) -> Vec<(String, Option<String>, Arc<AppTarget>)> {
        let own = app_key(app_id, namespace);
        self.view
            .load()
            .iter()
            .filter(|(key, _)| **key != own && key.as_str() != app_id)
            .map(|(key, target)| {
                // Keys are `<app-id>` or `<app-id>.<namespace>`; app ids have no dots.
                let (app, ns) = match key.split_once('.') {
                    Some((app, ns)) => (app.to_string(), Some(ns.to_string())),
                    None => (key.clone(), None),
                };
                (app, ns, target.clone())
            })
            .collect()
    }

    /// Looks up, refreshing the view first if the app id is unknown.
    pub(crate) async fn lookup_or_refresh(
        self: &Arc<Self>,
        app_id: &str,
        namespace: Option<&str>,
    ) -> Option<Arc<AppTarget>> {
        if let Some(found) = self.lookup(app_id, namespace) {
            return Some(found);
        }
        {
            let mut last = self.last_refresh.lock().await;
            if last.elapsed() >= MISS_REFRESH_INTERVAL {
                *last = Instant::now();
                let registry = self.clone();
                let _ = tokio::task::spawn_blocking(move || registry.refresh_blocking()).await;
            }
        }
        self.lookup(app_id, namespace)
    }

    /// Re-reads the directory. Keeps an app's existing target when its members are
    /// unchanged, so balancer state survives refreshes.
    pub(crate) fn refresh_blocking(&self) {
        let entries = read_entries(&self.dir);
        let mut grouped: HashMap<AppKey, (String, Vec<(String, u32)>)> = HashMap::new();
        for entry in entries {
            grouped
                .entry(app_key(&entry.app_id, entry.namespace.as_deref()))
                .or_insert_with(|| (entry.app_id.clone(), Vec::new()))
                .1
                .push((entry.mesh_address, 1));
        }
        let old = self.view.load();
        let mut view = HashMap::with_capacity(grouped.len());
        for (key, (app_id, mut targets)) in grouped {
            targets.sort();
            targets.dedup();
            let target = match old.get(&key) {
                Some(existing) if existing.endpoints.same_members(&targets) => existing.clone(),
                _ => Arc::new(AppTarget {
                    endpoints: Arc::new(EndpointSet::new(
                        &self.endpoints,
                        targets,
                        outrigger_config::LoadBalancer::default(),
                        None,
                    )),
                    metrics: match old.get(&key) {
                        Some(existing) => existing.metrics.clone(),
                        None => self.metrics.app(Direction::Outbound, &app_id),
                    },
                }),
            };
            view.insert(key, target);
        }
        self.view.store(Arc::new(view));
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_entries(dir: &Path) -> Vec<RegistryEntry> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for file in listing.flatten() {
        let path = file.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let entry: RegistryEntry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "skipping unreadable registry entry");
                continue;
            }
        };
        if process_alive(entry.pid) {
            entries.push(entry);
        } else {
            tracing::debug!(file = %path.display(), pid = entry.pid, "removing registry entry of a dead process");
            let _ = std::fs::remove_file(&path);
        }
    }
    entries
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_in(dir: &Path) -> LocalRegistry {
        LocalRegistry::new(
            dir.to_path_buf(),
            Arc::new(Endpoints::default()),
            Arc::new(Metrics::new()),
        )
    }

    fn entry(app: &str, port: u16, pid: u32) -> RegistryEntry {
        RegistryEntry {
            app_id: app.into(),
            namespace: None,
            mesh_address: format!("127.0.0.1:{port}"),
            dapr_http_port: 3500,
            pid,
            started_unix_ms: now_unix_ms(),
        }
    }

    #[test]
    fn registered_entries_are_found_by_app_id_and_removed_on_deregister() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry_in(dir.path());
        registry
            .register(&entry("b", 15009, std::process::id()))
            .unwrap();
        let target = registry.lookup("b", None).unwrap();
        assert_eq!(
            target.endpoints.members[0].endpoint.address,
            "127.0.0.1:15009"
        );
        assert!(registry.lookup("c", None).is_none());
        registry.deregister();
        registry.refresh_blocking();
        assert!(registry.lookup("b", None).is_none());
    }

    #[test]
    fn entries_of_dead_processes_are_ignored_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        // A child that has exited and been reaped: its pid is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let path = dir.path().join("b-dead.json");
        std::fs::write(&path, serde_json::to_vec(&entry("b", 1, dead_pid)).unwrap()).unwrap();
        let registry = registry_in(dir.path());
        registry.refresh_blocking();
        assert!(registry.lookup("b", None).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn unchanged_membership_keeps_the_same_endpoint_set() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry_in(dir.path());
        registry
            .register(&entry("b", 15009, std::process::id()))
            .unwrap();
        let before = registry.lookup("b", None).unwrap();
        registry.refresh_blocking();
        assert!(Arc::ptr_eq(&before, &registry.lookup("b", None).unwrap()));
    }
}
