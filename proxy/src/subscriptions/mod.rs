//! Subscriptions: which topics this app gets, and the workers that deliver them.
//!
//! The wanted set is the declarative `Subscription`s of the running configuration that apply
//! to this app, and the programmatic ones the app listed at `GET /dapr/subscribe`
//! ([`discover`]). [`Subscriptions::reconcile`] runs at start and after every configuration
//! swap and compares the wanted set with the running workers, keyed by (pubsub, topic):
//!
//! - same broker, same consumer settings: the worker keeps running and takes the new routes,
//!   dead-letter topic and retry policy for its next attempt — nothing is redelivered;
//! - a new broker (the component changed) or new consumer settings: the old worker stops
//!   pulling, finishes what it holds, closes, and only then the new one starts — nothing is
//!   delivered twice by this sidecar, nothing is dropped;
//! - no longer wanted: the worker stops the same way.
//!
//! At shutdown every worker stops pulling at once and finishes or releases its messages
//! within the drain timeout ([`Subscriptions::stop_all`]).

mod deliver;
pub(crate) mod discover;
pub(crate) mod peers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use outrigger_config::dapr::{Subscription, SubscriptionSpec};
use outrigger_config::subscription::Routes;
use outrigger_pubsub::Token;
use serde::Serialize;
use tokio::sync::watch;

use crate::components::{in_scope_names, PubSubEntry};
use crate::shared::Shared;

/// Where a subscription came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum Kind {
    Declarative,
    Programmatic,
}

/// A subscription as a worker serves it.
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) spec: SubscriptionSpec,
    pub(crate) routes: Routes,
    pub(crate) entry: Arc<PubSubEntry>,
    /// `metadata.rawPayload: "true"`: messages are not CloudEvents (deliveries wrap them).
    pub(crate) raw_payload: bool,
    pub(crate) bulk: Option<Bulk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bulk {
    pub(crate) max_messages: usize,
    pub(crate) max_await: Duration,
}

impl Settings {
    fn new(
        name: String,
        kind: Kind,
        spec: SubscriptionSpec,
        entry: Arc<PubSubEntry>,
    ) -> Result<Settings, String> {
        let routes = Routes::compile(&spec.routes).map_err(|(field, e)| format!("{field}: {e}"))?;
        let raw_payload = spec
            .metadata
            .get("rawPayload")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let bulk = spec
            .bulk_subscribe
            .as_ref()
            .filter(|b| b.enabled)
            .map(|b| Bulk {
                max_messages: b.max_messages_count.unwrap_or(100).max(1) as usize,
                max_await: Duration::from_millis(b.max_await_duration_ms.unwrap_or(1000)),
            });
        Ok(Settings {
            name,
            kind,
            spec,
            routes,
            entry,
            raw_payload,
            bulk,
        })
    }

    /// What the broker consumer is opened with; a change needs a new consumer.
    fn consumer_key(&self) -> (usize, Option<Duration>, String) {
        let settings = &self.entry.component.opened.settings;
        (
            self.max_in_flight(),
            self.entry.hold_limit,
            settings.consumer_group.clone(),
        )
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        let concurrency = self.entry.component.opened.settings.concurrency;
        match self.bulk {
            Some(bulk) => concurrency.max(bulk.max_messages),
            None => concurrency,
        }
    }
}

/// What `/v1.0/metadata` shows about a subscription.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Status {
    /// `starting`, `running`, `stopping`, or `failed: <why>`.
    pub(crate) state: String,
    pub(crate) in_flight: usize,
    /// Messages whose retries ran out with no dead-letter topic: left unacknowledged.
    pub(crate) parked: Vec<String>,
}

/// One worker's state, shared with its deliveries.
pub(crate) struct Live {
    pub(crate) settings: ArcSwap<Settings>,
    state: parking_lot::Mutex<String>,
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
    pub(crate) parked: parking_lot::Mutex<Vec<Token>>,
}

impl Live {
    pub(crate) fn set_state(&self, state: impl Into<String>) {
        *self.state.lock() = state.into();
    }
}

struct Running {
    live: Arc<Live>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A subscription that could not start (unknown pubsub, topic not allowed, invalid rule).
#[derive(Debug, Clone)]
struct Refused {
    name: String,
    kind: Kind,
    spec: SubscriptionSpec,
    reason: String,
}

/// A running subscription as listed: its kind, spec and live state.
type Shown = (Kind, SubscriptionSpec, Arc<Live>);

#[derive(Default)]
pub(crate) struct Subscriptions {
    running: tokio::sync::Mutex<HashMap<(String, String), Running>>,
    /// What `/v1.0/metadata` lists: the running ones and the refused ones.
    view: parking_lot::Mutex<Vec<Shown>>,
    refused: parking_lot::Mutex<Vec<Refused>>,
    /// The app's answer to `GET /dapr/subscribe`, once it gave one.
    pub(crate) programmatic: parking_lot::Mutex<Vec<Subscription>>,
    stopped: std::sync::atomic::AtomicBool,
}

/// One line of `/v1.0/metadata`'s `subscriptions`.
pub(crate) struct Listed {
    pub(crate) kind: Kind,
    pub(crate) spec: SubscriptionSpec,
    pub(crate) status: Status,
}

impl Subscriptions {
    /// Every subscription wanted, with its status.
    pub(crate) fn list(&self) -> Vec<Listed> {
        let mut out: Vec<Listed> = self
            .view
            .lock()
            .iter()
            .map(|(kind, spec, live)| Listed {
                kind: *kind,
                spec: spec.clone(),
                status: Status {
                    state: live.state.lock().clone(),
                    in_flight: live.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    parked: live.parked.lock().iter().map(|t| t.to_string()).collect(),
                },
            })
            .collect();
        out.extend(self.refused.lock().iter().map(|r| Listed {
            kind: r.kind,
            spec: r.spec.clone(),
            status: Status {
                state: format!("failed: {}", r.reason),
                in_flight: 0,
                parked: Vec::new(),
            },
        }));
        out
    }

    /// Brings the workers in line with the running configuration and the app's programmatic
    /// subscriptions.
    pub(crate) async fn reconcile(&self, shared: &Arc<Shared>) {
        let mut running = self.running.lock().await;
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let active = Arc::clone(&shared.config.load());
        let app_id = &shared.options.app_id;
        let mut wanted: Vec<(String, Kind, SubscriptionSpec)> = active
            .snapshot
            .subscriptions
            .iter()
            .filter(|s| in_scope_names(&s.scopes, app_id))
            .map(|s| (s.metadata.name.clone(), Kind::Declarative, s.spec.clone()))
            .collect();
        wanted.extend(
            self.programmatic
                .lock()
                .iter()
                .map(|s| (s.metadata.name.clone(), Kind::Programmatic, s.spec.clone())),
        );

        let mut next: HashMap<(String, String), Settings> = HashMap::new();
        let mut refused = Vec::new();
        for (name, kind, spec) in wanted {
            let key = (spec.pubsubname.clone(), spec.topic.clone());
            let refuse = |reason: String| Refused {
                name: name.clone(),
                kind,
                spec: spec.clone(),
                reason,
            };
            if next.contains_key(&key) {
                refused.push(refuse(format!(
                    "topic {} of pubsub {} already has a subscription; one per topic",
                    key.1, key.0
                )));
                continue;
            }
            let Some(entry) = active.pubsubs.get(&spec.pubsubname) else {
                refused.push(refuse(format!(
                    "pubsub {} is not a pub/sub component of this app",
                    spec.pubsubname
                )));
                continue;
            };
            if !entry.component.opened.settings.may_subscribe(&spec.topic) {
                refused.push(refuse(format!(
                    "topic {} is not allowed for app id {app_id} (allowedTopics / subscriptionScopes)",
                    spec.topic
                )));
                continue;
            }
            // Dead letters are publishes by this app: the topic must be one it may publish to.
            if let Some(dead_letter) = spec.dead_letter_topic.as_deref() {
                if !entry.component.opened.settings.may_publish(dead_letter) {
                    refused.push(refuse(format!(
                        "deadLetterTopic {dead_letter} is not allowed for app id {app_id} to publish to (allowedTopics / publishingScopes)"
                    )));
                    continue;
                }
            }
            if shared.app.is_none() {
                refused.push(refuse(
                    "this sidecar has no --app-port to deliver to".to_string(),
                ));
                continue;
            }
            match Settings::new(name.clone(), kind, spec.clone(), entry.clone()) {
                Ok(settings) => {
                    next.insert(key, settings);
                }
                Err(reason) => refused.push(refuse(reason)),
            }
        }
        for r in &refused {
            tracing::warn!(subscription = %r.name, pubsub = %r.spec.pubsubname, topic = %r.spec.topic, reason = %r.reason, "subscription not started");
        }

        // Stop what is no longer wanted, or needs a new consumer; keep the rest.
        let keys: Vec<_> = running.keys().cloned().collect();
        for key in keys {
            let keep = next.get(&key).is_some_and(|wanted| {
                let current = running[&key].live.settings.load();
                Arc::ptr_eq(&current.entry.component, &wanted.entry.component)
                    && current.consumer_key() == wanted.consumer_key()
                    && current.bulk == wanted.bulk
            });
            if !keep {
                if let Some(old) = running.remove(&key) {
                    old.live.set_state("stopping");
                    let _ = old.stop.send(true);
                    let _ = old.task.await;
                    tracing::info!(pubsub = %key.0, topic = %key.1, "subscription stopped");
                }
            }
        }
        for (key, settings) in next {
            match running.get(&key) {
                Some(existing) => existing.live.settings.store(Arc::new(settings)),
                None => {
                    let live = Arc::new(Live {
                        settings: ArcSwap::from_pointee(settings),
                        state: parking_lot::Mutex::new("starting".into()),
                        in_flight: Default::default(),
                        parked: Default::default(),
                    });
                    let (stop, stop_rx) = watch::channel(false);
                    let task = tokio::spawn(deliver::run(shared.clone(), live.clone(), stop_rx));
                    tracing::info!(pubsub = %key.0, topic = %key.1, "subscription started");
                    running.insert(key, Running { live, stop, task });
                }
            }
        }
        let mut view: Vec<_> = running
            .values()
            .map(|r| {
                let settings = r.live.settings.load();
                (settings.kind, settings.spec.clone(), r.live.clone())
            })
            .collect();
        view.sort_by(|a, b| (&a.1.pubsubname, &a.1.topic).cmp(&(&b.1.pubsubname, &b.1.topic)));
        *self.view.lock() = view;
        *self.refused.lock() = refused;
    }

    /// Stops every worker: no more pulling; deliveries under way finish (or are released
    /// unacknowledged) within `timeout`.
    pub(crate) async fn stop_all(&self, timeout: Duration) {
        let mut running = self.running.lock().await;
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        for r in running.values() {
            r.live.set_state("stopping");
            let _ = r.stop.send(true);
        }
        let tasks: Vec<_> = running.drain().map(|(_, r)| r.task).collect();
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(timeout + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::warn!("subscriptions did not stop within the drain timeout");
        }
    }
}

/// Runs the subscriptions for the sidecar's life: the declarative ones at once, the app's
/// programmatic ones once it answers `GET /dapr/subscribe`, and again after every swap.
pub(crate) async fn supervise(shared: Arc<Shared>) {
    let mut swaps = shared.config.subscribe();
    shared.subscriptions.reconcile(&shared).await;
    if shared.app.is_some() {
        let discovering = {
            let shared = shared.clone();
            async move {
                if let Some(found) = discover::discover(&shared).await {
                    *shared.subscriptions.programmatic.lock() = found;
                    shared.subscriptions.reconcile(&shared).await;
                }
            }
        };
        tokio::spawn(discovering);
    }
    while swaps.changed().await.is_ok() {
        shared.subscriptions.reconcile(&shared).await;
    }
}
