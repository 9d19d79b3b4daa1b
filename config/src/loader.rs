//! Reads a `--resources-path` directory of YAML into a validated [`Snapshot`].
//!
//! Every `*.yaml`/`*.yml` file may hold several documents (`---`). Each document is
//! dispatched on `kind` (and `apiVersion`) to its typed resource; a problem is reported as a
//! [`LoadError`] naming the file, the line and the field, and saying what was expected.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::dapr::{Component, Configuration, Resiliency, Subscription};
use crate::error::LoadError;
use crate::mesh::{self, ClusterResource, RouteResource};
use crate::route::{Route, RouteRule};
use crate::snapshot::{Cluster, Endpoint, Snapshot, SnapshotError};

const DAPR_V1ALPHA1: &str = "dapr.io/v1alpha1";
const DAPR_V2ALPHA1: &str = "dapr.io/v2alpha1";

/// The kinds a resources directory may contain, with the API versions accepted for each.
const KINDS: &[(&str, &[&str])] = &[
    ("Component", &[DAPR_V1ALPHA1]),
    ("Resiliency", &[DAPR_V1ALPHA1]),
    ("Subscription", &[DAPR_V2ALPHA1, DAPR_V1ALPHA1]),
    ("Configuration", &[DAPR_V1ALPHA1]),
    ("Cluster", &[mesh::API_VERSION]),
    ("Route", &[mesh::API_VERSION]),
];

/// Loads every YAML file directly inside `dir` (sorted by name) into one snapshot.
pub fn load_dir(dir: &Path) -> Result<Snapshot, LoadError> {
    let (snapshot, origins) = load_dir_parts(dir)?;
    check(snapshot, origins)
}

/// Like [`load_dir`], but without the cross-reference checks of [`Snapshot::validate`]: every
/// file must still parse and every field have the right type. The control plane loads this way
/// and leaves the cross-reference verdict to the sidecars, which NACK with the reason.
pub fn load_dir_unchecked(dir: &Path) -> Result<Snapshot, LoadError> {
    load_dir_parts(dir).map(|(snapshot, _)| snapshot)
}

/// Like [`load_dir_unchecked`], with the file each resource came from (for messages about a
/// resource found only after loading, such as one too large to push).
pub fn load_dir_with_sources(dir: &Path) -> Result<(Snapshot, Sources), LoadError> {
    load_dir_parts(dir).map(|(snapshot, origins)| {
        let files = origins
            .into_iter()
            .map(|(key, origin)| (key, origin.file))
            .collect();
        (snapshot, Sources(files))
    })
}

/// Which file each resource came from, by kind (`Component`, `Route`, …) and name.
#[derive(Debug, Clone, Default)]
pub struct Sources(BTreeMap<(&'static str, String), PathBuf>);

impl Sources {
    pub fn file_of(&self, kind: &str, name: &str) -> Option<&Path> {
        self.0
            .iter()
            .find(|((k, n), _)| *k == kind && n == name)
            .map(|(_, file)| file.as_path())
    }
}

fn load_dir_parts(dir: &Path) -> Result<(Snapshot, Origins), LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LoadError::new(dir, format!("cannot read the resources directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| LoadError::new(&file, format!("cannot read file: {e}")))?;
        sources.push((file, text));
    }
    parse_sources(&sources)
}

/// Loads one YAML text as if it were the only file in a resources directory (`name` is what
/// errors call it).
pub fn load_str(name: &str, text: &str) -> Result<Snapshot, LoadError> {
    let (snapshot, origins) = parse_sources(&[(PathBuf::from(name), text.to_string())])?;
    check(snapshot, origins)
}

type Origins = BTreeMap<(&'static str, String), Origin>;

/// Where a resource came from, to point errors found after parsing back at the YAML.
#[derive(Clone)]
struct Origin {
    file: PathBuf,
    line: usize,
    /// The file's text, to find a field's line in.
    text: Arc<str>,
}

#[derive(Default)]
struct Builder {
    snapshot: Snapshot,
    origins: BTreeMap<(&'static str, String), Origin>,
}

fn parse_sources(sources: &[(PathBuf, String)]) -> Result<(Snapshot, Origins), LoadError> {
    let mut builder = Builder::default();
    let mut hasher = DefaultHasher::new();
    for (file, text) in sources {
        file.hash(&mut hasher);
        text.hash(&mut hasher);
        load_file(&mut builder, file, text)?;
    }
    builder.snapshot.version = format!("{:016x}", hasher.finish());
    Ok((builder.snapshot, builder.origins))
}

fn check(snapshot: Snapshot, origins: Origins) -> Result<Snapshot, LoadError> {
    snapshot.validate().map_err(|e| {
        let key = match &e {
            SnapshotError::InvalidRoute { route, .. } => ("Route", route.clone()),
            SnapshotError::EmptyCluster { cluster }
            | SnapshotError::InvalidCluster { cluster, .. } => ("Cluster", cluster.clone()),
            SnapshotError::UnknownPolicy { resiliency, .. }
            | SnapshotError::InvalidResiliency { resiliency, .. } => {
                ("Resiliency", resiliency.clone())
            }
            SnapshotError::InvalidComponent { component, .. } => ("Component", component.clone()),
            SnapshotError::InvalidSubscription { subscription, .. } => {
                ("Subscription", subscription.clone())
            }
        };
        match origins.get(&key) {
            Some(origin) => {
                let line = match &e {
                    SnapshotError::InvalidSubscription { field, .. } => {
                        line_of_field(&origin.text, origin.line, field).unwrap_or(origin.line)
                    }
                    _ => origin.line,
                };
                LoadError::new(&origin.file, e.to_string()).at(line, 1)
            }
            None => LoadError::new("<snapshot>", e.to_string()),
        }
    })?;
    Ok(snapshot)
}

/// The header every resource starts with.
#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

fn load_file(builder: &mut Builder, file: &Path, text: &str) -> Result<(), LoadError> {
    let shared_text: Arc<str> = Arc::from(text);
    let starts = document_start_lines(text);
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let start_line = starts.get(index).copied().unwrap_or(1);
        let value = serde_norway::Value::deserialize(document)
            .map_err(|e| LoadError::from_yaml(file, None, &e))?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let meta = TypeMeta::deserialize(&value).map_err(|_| {
            LoadError::new(
                file,
                "expected a mapping with apiVersion, kind, metadata and spec",
            )
            .at(start_line, 1)
        })?;
        let kind = meta.kind.ok_or_else(|| {
            LoadError::new(
                file,
                format!("kind: missing; expected one of {}", kind_names()),
            )
            .at(start_line, 1)
        })?;
        let Some((kind, versions)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            let line = line_of_key(text, start_line, "kind").unwrap_or(start_line);
            return Err(LoadError::new(
                file,
                format!(
                    "kind: unknown kind {kind:?}; expected one of {}",
                    kind_names()
                ),
            )
            .at(line, 1));
        };
        let api_version = meta.api_version.unwrap_or_default();
        if !versions.contains(&api_version.as_str()) {
            let line = line_of_key(text, start_line, "apiVersion").unwrap_or(start_line);
            return Err(LoadError::new(
                file,
                format!(
                    "apiVersion: {api_version:?} is not an API version of {kind}; expected {}",
                    versions.join(" or ")
                ),
            )
            .at(line, 1));
        }
        let origin = Origin {
            file: file.to_path_buf(),
            line: start_line,
            text: shared_text.clone(),
        };
        match *kind {
            "Component" => {
                let component: Component = parse_document(file, text, index, value)?;
                builder.insert_component(component, origin)?;
            }
            "Resiliency" => {
                let resiliency: Resiliency = parse_document(file, text, index, value)?;
                let name = resiliency.metadata.name.clone();
                builder.claim("Resiliency", &name, origin)?;
                builder
                    .snapshot
                    .policies
                    .resiliency
                    .insert(name, resiliency);
            }
            "Subscription" => {
                let mut subscription: Subscription = parse_document(file, text, index, value)?;
                if let Some(route) = subscription.spec.route.take() {
                    subscription.spec.routes.default.get_or_insert(route);
                }
                builder.claim("Subscription", &subscription.metadata.name, origin)?;
                builder.snapshot.subscriptions.push(subscription);
            }
            "Configuration" => {
                let configuration: Configuration = parse_document(file, text, index, value)?;
                if let Some(previous) = &builder.snapshot.configuration {
                    return Err(LoadError::new(
                        file,
                        format!(
                            "metadata.name: a second Configuration ({:?}); only one may be loaded, {:?} is already",
                            configuration.metadata.name, previous.metadata.name
                        ),
                    )
                    .at(start_line, 1));
                }
                builder.snapshot.configuration = Some(configuration);
            }
            "Cluster" => {
                let resource: ClusterResource = parse_document(file, text, index, value)?;
                let name = resource.metadata.name.clone();
                builder.claim("Cluster", &name, origin)?;
                let cluster = Cluster {
                    name: name.clone(),
                    load_balancer: resource.spec.load_balancer,
                    hash_on: resource.spec.hash_on,
                    endpoints: resource
                        .spec
                        .endpoints
                        .into_iter()
                        .map(|e| Endpoint {
                            address: e.address,
                            weight: e.weight,
                        })
                        .collect(),
                };
                builder.snapshot.clusters.insert(name, cluster);
            }
            "Route" => {
                let resource: RouteResource = parse_document(file, text, index, value)?;
                let name = resource.metadata.name.clone();
                builder.claim("Route", &name, origin.clone())?;
                let app = resource.spec.app.clone();
                if let Some(other) = builder.snapshot.routes.get(&app) {
                    return Err(LoadError::new(
                        file,
                        format!("spec.app: route {name:?} targets app {app:?}, which route {:?} already routes", other.name),
                    )
                    .at(origin.line, 1));
                }
                let mut rules = resource.spec.rules;
                if !resource.spec.backends.is_empty() {
                    rules.push(RouteRule {
                        matches: Default::default(),
                        backends: resource.spec.backends,
                        timeout: None,
                        request_headers: Default::default(),
                    });
                }
                let route = Route {
                    name,
                    app: app.clone(),
                    rules,
                };
                builder.snapshot.routes.insert(app, route);
            }
            _ => unreachable!("every kind in KINDS is handled"),
        }
    }
    Ok(())
}

impl Builder {
    /// Records where a named resource was defined; a second definition is an error naming both.
    fn claim(&mut self, kind: &'static str, name: &str, origin: Origin) -> Result<(), LoadError> {
        if name.is_empty() {
            return Err(LoadError::new(
                &origin.file,
                "metadata.name: missing; every resource needs a name",
            )
            .at(origin.line, 1));
        }
        if let Some(first) = self.origins.get(&(kind, name.to_string())) {
            return Err(LoadError::new(
                &origin.file,
                format!(
                    "metadata.name: {kind} {name:?} is defined twice; first at {}:{}",
                    first.file.display(),
                    first.line
                ),
            )
            .at(origin.line, 1));
        }
        self.origins.insert((kind, name.to_string()), origin);
        Ok(())
    }

    fn insert_component(&mut self, component: Component, origin: Origin) -> Result<(), LoadError> {
        self.claim("Component", component.name(), origin.clone())?;
        for (i, item) in component.spec.metadata.iter().enumerate() {
            let sources = [
                item.value.is_some(),
                item.secret_key_ref.is_some(),
                item.env_ref.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err(LoadError::new(
                    &origin.file,
                    format!(
                        "spec.metadata[{i}] ({:?}): give one of value, secretKeyRef or envRef, not several",
                        item.name
                    ),
                )
                .at(origin.line, 1));
            }
        }
        self.snapshot
            .components
            .insert(component.name().to_string(), component);
        Ok(())
    }
}

/// Deserialises the `index`th document of `text` as `T`, keeping the YAML position of errors.
fn parse_document<T: DeserializeOwned>(
    file: &Path,
    text: &str,
    index: usize,
    value: serde_norway::Value,
) -> Result<T, LoadError> {
    // Fast path: the document was already parsed once (to read its kind). Only when it does not
    // fit the type is it parsed again from the text, which is what carries line numbers —
    // re-parsing every document from the start of the file made big files quadratic.
    if let Ok(parsed) = serde_norway::from_value(value) {
        return Ok(parsed);
    }
    let document = serde_norway::Deserializer::from_str(text)
        .nth(index)
        .ok_or_else(|| {
            LoadError::new(
                file,
                format!("document {} vanished while parsing", index + 1),
            )
        })?;
    serde_path_to_error::deserialize(document).map_err(|e| {
        let field = e.path().to_string();
        LoadError::from_yaml(file, Some(field), e.inner())
    })
}

fn kind_names() -> String {
    KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// 1-based first line of each YAML document in `text`.
fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            if i == 0 {
                starts[0] = 2;
            } else {
                starts.push(i + 2);
            }
        }
    }
    starts
}

/// The 1-based line of the first top-level `key:` at or after `from_line`.
fn line_of_key(text: &str, from_line: usize, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from_line.saturating_sub(1))
        .take_while(|(i, line)| *i + 1 == from_line || !line.starts_with("---"))
        .find(|(_, line)| {
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|(i, _)| i + 1)
}

/// The line of a field given by its path (`spec.routes.rules[1].match`) in the document that
/// starts at `from_line`: the n-th occurrence of its last key, n from its last index.
fn line_of_field(text: &str, from_line: usize, field: &str) -> Option<usize> {
    let last = field.rsplit('.').next()?;
    let key = last.split('[').next()?;
    let nth = field
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.split(']').next()?.parse::<usize>().ok())
        .unwrap_or(0);
    text.lines()
        .enumerate()
        .skip(from_line.saturating_sub(1))
        .take_while(|(i, line)| *i + 1 == from_line || !line.starts_with("---"))
        .filter(|(_, line)| {
            let line = line.trim_start();
            let line = line.strip_prefix("- ").unwrap_or(line).trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .nth(nth)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests;
