//! Micro-benchmarks of what every invocation runs inside the sidecar: classifying the Dapr
//! API path, finding the target's endpoints in the active snapshot, picking one, and
//! rewriting the headers for the mesh hop; plus loading and swapping a configuration.
//!
//! They call the proxy's own code through `outrigger_proxy::bench_support`, so a change to
//! the request path shows up here. Run: `cargo bench -p outrigger-bench --bench hot_path`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use outrigger_config::Snapshot;
use outrigger_proxy::bench_support::{self, Endpoints, Head};
use outrigger_proxy::{Shared, SidecarOptions};

/// Clusters (three endpoints each) and routes in the mesh snapshot the lookups run against.
const MESH_SIZE: usize = 50;

/// `count` clusters `svc-{i}` and `count` routes for app `app-{i}`, each sending 90% of its
/// traffic to `svc-{i}` and 10% to the next cluster along (a canary split).
fn mesh_yaml(count: usize) -> String {
    let mut yaml = String::new();
    for i in 0..count {
        write!(
            yaml,
            "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: svc-{i}\nspec:\n  endpoints:\n  - address: 10.0.{i}.1:15008\n  - address: 10.0.{i}.2:15008\n  - address: 10.0.{i}.3:15008\n    weight: 2\n---\n",
        )
        .unwrap();
    }
    for i in 0..count {
        let canary = (i + 1) % count;
        write!(
            yaml,
            "apiVersion: outrigger.dev/v1alpha1\nkind: Route\nmetadata:\n  name: app-{i}\nspec:\n  app: app-{i}\n  backends:\n  - cluster: svc-{i}\n    weight: 90\n  - cluster: svc-{canary}\n    weight: 10\n---\n",
        )
        .unwrap();
    }
    yaml
}

/// What a `--resources-path` of a real app holds: a state store, a pub/sub broker, a secret
/// store, a Resiliency, a Subscription and ten clusters with their routes.
fn resources_yaml() -> String {
    let dapr = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  version: v1
  metadata:
  - name: redisHost
    value: redis.default.svc:6379
  - name: redisPassword
    secretKeyRef:
      name: redis
      key: password
  - name: actorStateStore
    value: \"true\"
scopes: [orders, checkout]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - name: redisHost
    value: redis.default.svc:6379
  - name: consumerID
    value: orders
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: secrets
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: ./secrets.json
  - name: nestedSeparator
    value: \":\"
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: orders-resiliency
spec:
  policies:
    timeouts:
      general: 5s
      slow: 30s
    retries:
      retryForever:
        policy: exponential
        maxInterval: 15s
        maxRetries: -1
      threeTimes:
        policy: constant
        duration: 500ms
        maxRetries: 3
    circuitBreakers:
      simpleCB:
        maxRequests: 1
        timeout: 30s
        trip: consecutiveFailures >= 5
  targets:
    apps:
      app-0:
        timeout: general
        retry: threeTimes
        circuitBreaker: simpleCB
      app-1:
        timeout: slow
        retry: retryForever
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: orders
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules:
    - match: event.type == \"big\"
      path: /orders/big
    default: /orders
  deadLetterTopic: poison
scopes: [orders]
---
";
    format!("{dapr}{}", mesh_yaml(10))
}

fn mesh_snapshot() -> Snapshot {
    outrigger_config::load_str("mesh.yaml", &mesh_yaml(MESH_SIZE)).expect("generated mesh loads")
}

fn sidecar(snapshot: Snapshot) -> Arc<Shared> {
    Shared::new(SidecarOptions::new("checkout"), snapshot).expect("snapshot is valid")
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let post = http::Method::POST;
    group.bench_function("classify/url_form", |b| {
        b.iter(|| {
            bench_support::classify_invoke(
                black_box(&post),
                black_box("/v1.0/invoke/orders/method/api/v1/items"),
                black_box(Some("x=1")),
                black_box(None),
                black_box(None),
            )
        })
    });
    group.bench_function("classify/header_form", |b| {
        b.iter(|| {
            bench_support::classify_invoke(
                black_box(&post),
                black_box("/api/v1/items"),
                black_box(Some("x=1")),
                black_box(Some("orders")),
                black_box(None),
            )
        })
    });

    // No registry is configured, so a lookup never reaches discovery and never awaits; the
    // runtime is only there to drive the async fn (criterion's own async support would need
    // its `async_tokio` feature).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime starts");
    let sidecar = sidecar(mesh_snapshot());
    let mut lookup = |name: &str, app_id: &'static str| {
        assert_eq!(
            runtime.block_on(bench_support::endpoints_for(&sidecar, app_id)),
            Some(3),
            "{app_id} resolves"
        );
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(bench_support::endpoints_for(&sidecar, black_box(app_id))))
        });
    };
    lookup("endpoints_for/weighted_route", "app-25");
    lookup("endpoints_for/cluster_by_name", "svc-25");
    // The runtime's share of the two figures above.
    group.bench_function("block_on_ready", |b| {
        b.iter(|| runtime.block_on(std::future::ready(black_box(3usize))))
    });
    group.finish();
}

fn lb_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_pick");
    for count in [3, 100] {
        let addresses: Vec<String> = (0..count).map(|i| format!("10.1.0.{i}:15008")).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let endpoints = Endpoints::round_robin(&addresses);
        group.bench_with_input(
            BenchmarkId::new("round_robin", count),
            &endpoints,
            |b, endpoints| b.iter(|| endpoints.pick()),
        );
    }
    group.finish();
}

fn snapshot_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_load");
    let resources = resources_yaml();
    group.bench_function("load_str/resources", |b| {
        b.iter(|| outrigger_config::load_str("resources.yaml", black_box(&resources)).unwrap())
    });

    // Installing the snapshot already active: the steady state of a config push, where every
    // cluster keeps its endpoint set (and balancer state).
    let mesh = mesh_snapshot();
    let sidecar = sidecar(mesh.clone());
    group.bench_function("install/mesh_50_clusters", |b| {
        b.iter_batched(
            || mesh.clone(),
            |snapshot| sidecar.install(snapshot).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("active_snapshot", |b| b.iter(|| sidecar.snapshot()));

    // 100 documents: loading is tens of milliseconds, so fewer samples keep the run short.
    let mesh_text = mesh_yaml(MESH_SIZE);
    group.sample_size(10);
    group.bench_function("load_str/mesh_50_clusters", |b| {
        b.iter(|| outrigger_config::load_str("mesh.yaml", black_box(&mesh_text)).unwrap())
    });
    group.finish();
}

/// The head of a typical invocation from an app: ten headers, a token, a JSON body.
const INVOKE_HEAD: &[u8] = b"POST /v1.0/invoke/orders/method/api/v1/items?x=1 HTTP/1.1\r\n\
Host: 127.0.0.1:3500\r\n\
User-Agent: orders-client/1.4.2\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, br\r\n\
Content-Type: application/json\r\n\
Content-Length: 128\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
X-Request-Id: c0ffee00-1234-4abc-9def-0123456789ab\r\n\
dapr-api-token: s3cr3t-token-value\r\n\
dapr-app-id: orders\r\n\r\n";

fn http1_head(c: &mut Criterion) {
    let mut group = c.benchmark_group("http1_head");
    let mut head = Head::default();
    group.bench_function("parse/10_headers", |b| {
        b.iter(|| head.parse(black_box(INVOKE_HEAD)))
    });
    head.parse(INVOKE_HEAD);
    let mut out = Vec::with_capacity(1024);
    group.bench_function("rewrite_for_invoke/10_headers", |b| {
        b.iter(|| {
            head.rewrite_for_invoke(
                &mut out,
                black_box("/api/v1/items?x=1"),
                black_box("checkout"),
                black_box("orders"),
            );
            out.len()
        })
    });
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend(std::iter::repeat_n(b'x', 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    group.bench_function("decode_chunked/16x1KiB", |b| {
        b.iter(|| bench_support::decode_chunked(black_box(&chunked)))
    });
    group.finish();
}

criterion_group!(benches, route_lookup, lb_pick, snapshot_load, http1_head);
criterion_main!(benches);
