//! The sidecars connected right now: registered by the first request on their stream, removed
//! when it closes; with what each has acknowledged and its last refusal, for the admin page.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub node_id: String,
    pub app_id: String,
    pub namespace: Option<String>,
    pub mesh_address: String,
    /// Last acknowledged version per type URL.
    pub acked: BTreeMap<String, String>,
    /// The last NACK (type URL and message), cleared by the next ACK of that type.
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nack {
    pub type_url: String,
    pub message: String,
}

impl Registered {
    pub fn cluster_name(&self) -> String {
        match &self.namespace {
            Some(ns) if !ns.is_empty() => format!("{}.{ns}", self.app_id),
            _ => self.app_id.clone(),
        }
    }
}

#[derive(Default)]
pub struct Registry {
    sidecars: BTreeMap<u64, Registered>,
}

impl Registry {
    pub fn insert(&mut self, stream: u64, sidecar: Registered) {
        self.sidecars.insert(stream, sidecar);
    }

    pub fn remove(&mut self, stream: u64) -> Option<Registered> {
        self.sidecars.remove(&stream)
    }

    pub fn get_mut(&mut self, stream: u64) -> Option<&mut Registered> {
        self.sidecars.get_mut(&stream)
    }

    pub fn len(&self) -> usize {
        self.sidecars.len()
    }

    pub fn all(&self) -> Vec<Registered> {
        self.sidecars.values().cloned().collect()
    }
}
