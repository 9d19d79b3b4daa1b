//! The Dapr components of a snapshot, opened for this app: its state stores (pub/sub and
//! secret stores join as their building blocks arrive). Rebuilt on every configuration swap;
//! a component whose definition did not change keeps its running store, connections and all,
//! so swapping one component never disturbs requests to the others.

use std::collections::HashMap;
use std::sync::Arc;

use outrigger_config::dapr::Component;
use outrigger_config::{Snapshot, SnapshotError};
use outrigger_state::OpenedStore;

/// One state store component as requests use it.
#[derive(Debug)]
pub(crate) struct StateComponent {
    /// The definition it was opened from, to tell whether a new snapshot changed it.
    definition: Component,
    pub(crate) opened: OpenedStore,
}

impl StateComponent {
    pub(crate) fn name(&self) -> &str {
        self.definition.name()
    }
}

/// The state stores a snapshot gives `app_id`, by component name: components scoped to other
/// apps are left out, as daprd does.
pub(crate) fn open_state_stores(
    snapshot: &Snapshot,
    app_id: &str,
    previous: Option<&HashMap<String, Arc<StateComponent>>>,
) -> Result<HashMap<String, Arc<StateComponent>>, SnapshotError> {
    let mut stores = HashMap::new();
    for component in snapshot.components_of("state") {
        if !in_scope(component, app_id) {
            continue;
        }
        let name = component.name();
        let kept = previous
            .and_then(|p| p.get(name))
            .filter(|existing| existing.definition == *component);
        let store = match kept {
            Some(existing) => existing.clone(),
            None => {
                let opened = outrigger_state::open(component, app_id).map_err(|detail| {
                    SnapshotError::InvalidComponent {
                        component: name.to_string(),
                        detail,
                    }
                })?;
                Arc::new(StateComponent {
                    definition: component.clone(),
                    opened,
                })
            }
        };
        stores.insert(name.to_string(), store);
    }
    Ok(stores)
}

/// Whether a component serves `app_id`: no `scopes` means every app.
pub(crate) fn in_scope(component: &Component, app_id: &str) -> bool {
    component.scopes.is_empty() || component.scopes.iter().any(|s| s == app_id)
}
