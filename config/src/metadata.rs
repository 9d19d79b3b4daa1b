//! A component's `spec.metadata` as the stores and brokers read it: values by name with
//! `envRef`s resolved, typed accessors, and errors that name the component and the field.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::dapr::Component;

/// A component's `spec.metadata` with `envRef`s resolved.
pub struct ComponentMetadata {
    component: String,
    values: BTreeMap<String, String>,
}

impl ComponentMetadata {
    /// Reads `component`'s metadata: inline values as given, `envRef`s from the environment;
    /// a `secretKeyRef` is refused (no secret store is served yet).
    pub fn resolve(component: &Component) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        for (i, item) in component.spec.metadata.iter().enumerate() {
            let value = match (&item.value, &item.env_ref, &item.secret_key_ref) {
                (Some(value), _, _) => value.clone(),
                (None, Some(var), _) => std::env::var(var).map_err(|_| {
                    format!(
                        "component {:?}: spec.metadata[{i}] ({}): envRef {var:?} is not set in the sidecar's environment",
                        component.name(),
                        item.name
                    )
                })?,
                (None, None, Some(secret)) => {
                    return Err(format!(
                        "component {:?}: spec.metadata[{i}] ({}): secretKeyRef {:?} needs a secret store, which Outrigger does not serve yet; use value or envRef",
                        component.name(),
                        item.name,
                        secret.name
                    ))
                }
                (None, None, None) => String::new(),
            };
            values.insert(item.name.clone(), value);
        }
        Ok(ComponentMetadata {
            component: component.name().to_string(),
            values,
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str, example: &str) -> Result<&str, String> {
        match self.get(name) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim()),
            _ => Err(self.invalid(name, &format!("is required, e.g. {example}"))),
        }
    }

    pub fn invalid(&self, name: &str, what: &str) -> String {
        format!(
            "component {:?}: spec.metadata {name}: {what}",
            self.component
        )
    }

    pub fn bool(&self, name: &str) -> Result<bool, String> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(self.invalid(name, &format!("{v:?} is not true or false"))),
        }
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| self.invalid(name, &format!("{v:?} is not a whole number"))),
        }
    }

    /// A duration as Dapr writes them: `5s`, `500ms`, `1m`, or bare seconds.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, String> {
        self.duration_with_bare(name, default, Duration::from_secs)
    }

    /// A duration, where a bare number is in the unit `bare` gives (Dapr's Redis pub/sub reads
    /// bare numbers as milliseconds).
    pub fn duration_with_bare(
        &self,
        name: &str,
        default: Duration,
        bare: fn(u64) -> Duration,
    ) -> Result<Duration, String> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) => {
                if let Ok(number) = v.parse::<u64>() {
                    return Ok(bare(number));
                }
                crate::duration::parse(v).map_err(|e| self.invalid(name, &e))
            }
        }
    }

    /// The names of every metadata field given, to refuse unknown ones.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}
