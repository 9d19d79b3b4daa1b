//! The state API, end to end: one conformance suite run against every store — in-memory, a
//! `redis-server` each test starts on a free port, and a PostgreSQL database each test creates
//! — through a real sidecar's `/v1.0/state` API, asserting exact statuses, bodies, headers and
//! what the backend holds afterwards.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::backends::{PgDatabase, RedisServer};
use support::{client, start_control, SidecarBuilder, SidecarProc};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Memory,
    Redis,
    Postgres,
}

/// A store under test: its backend and a resources directory naming it `mystore`.
struct Store {
    kind: Kind,
    redis: Option<RedisServer>,
    pg: Option<PgDatabase>,
    resources: tempfile::TempDir,
    registry: tempfile::TempDir,
}

impl Store {
    fn start(kind: Kind) -> Store {
        Store::start_with(
            kind,
            (kind == Kind::Redis).then(|| RedisServer::start(false)),
        )
    }

    fn start_with(kind: Kind, redis: Option<RedisServer>) -> Store {
        let store = Store {
            kind,
            redis,
            pg: (kind == Kind::Postgres).then(PgDatabase::create),
            resources: tempfile::tempdir().unwrap(),
            registry: tempfile::tempdir().unwrap(),
        };
        store.write_component("mystore");
        store
    }

    fn write_component(&self, name: &str) {
        std::fs::write(
            self.resources.path().join(format!("{name}.yaml")),
            self.component_yaml(name),
        )
        .unwrap();
    }

    fn component_yaml(&self, name: &str) -> String {
        let (kind, metadata) = match self.kind {
            Kind::Memory => ("state.in-memory", String::new()),
            Kind::Redis => (
                "state.redis",
                format!(
                    "  - name: redisHost\n    value: {}\n  - name: readTimeout\n    value: 2s\n  - name: dialTimeout\n    value: 2s\n",
                    self.redis.as_ref().unwrap().address()
                ),
            ),
            Kind::Postgres => (
                "state.postgresql",
                format!(
                    "  - name: connectionString\n    value: \"{}\"\n",
                    self.pg.as_ref().unwrap().connection_string()
                ),
            ),
        };
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n{metadata}"
        )
    }

    fn sidecar(&self, app_id: &str) -> SidecarProc {
        SidecarBuilder::new(app_id, self.registry.path())
            .arg("--resources-path")
            .arg(self.resources.path().to_str().unwrap())
            .start()
    }
}

/// A client of one sidecar's state API for `mystore`.
struct Api {
    base: String,
    http: reqwest::Client,
}

struct Reply {
    status: StatusCode,
    etag: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    /// Asserts a Dapr error answer: status and error code.
    fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let body = self.json();
        assert_eq!(body["errorCode"], code, "body: {}", self.body);
        body["message"].as_str().unwrap().to_string()
    }
}

impl Api {
    fn new(sidecar: &SidecarProc) -> Api {
        Api {
            base: sidecar.url("/v1.0/state/mystore"),
            http: client(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let etag = headers.get("etag").map(|v| v.to_str().unwrap().to_string());
        let body = response.text().await.unwrap();
        Reply {
            status,
            etag,
            headers,
            body,
        }
    }

    async fn save(&self, items: Value) -> Reply {
        self.send(self.http.post(&self.base).json(&items)).await
    }

    async fn save_raw(&self, body: impl Into<reqwest::Body>) -> Reply {
        self.send(self.http.post(&self.base).body(body)).await
    }

    async fn get(&self, key: &str) -> Reply {
        self.send(self.http.get(format!("{}/{key}", self.base)))
            .await
    }

    async fn delete(&self, key: &str, if_match: Option<&str>) -> Reply {
        let mut request = self.http.delete(format!("{}/{key}", self.base));
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        self.send(request).await
    }

    async fn bulk(&self, body: Value) -> Reply {
        self.send(self.http.post(format!("{}/bulk", self.base)).json(&body))
            .await
    }

    async fn transaction(&self, body: Value) -> Reply {
        self.send(
            self.http
                .post(format!("{}/transaction", self.base))
                .json(&body),
        )
        .await
    }

    /// Saves one value and returns its ETag (read back).
    async fn put(&self, key: &str, value: Value) -> String {
        let reply = self.save(json!([{ "key": key, "value": value }])).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
        self.get(key).await.etag.expect("etag")
    }
}

// === the conformance suite ===

async fn save_then_get_returns_the_value_with_an_etag(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);

    let reply = api
        .save(json!([{ "key": "order", "value": { "id": 7, "items": ["x"] } }, { "key": "n", "value": 42 }]))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.body, "");

    let got = api
        .get("order?consistency=strong&metadata.partitionKey=p")
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, r#"{"id":7,"items":["x"]}"#);
    assert_eq!(got.headers["content-type"], "application/json");
    let etag = got.etag.expect("etag header");
    assert!(etag.parse::<u64>().is_ok(), "etag {etag:?}");
    assert_eq!(api.get("n").await.body, "42");

    // A string value is kept as the JSON it was sent as, as daprd does.
    api.put("s", json!("hello")).await;
    assert_eq!(api.get("s").await.body, r#""hello""#);
    // An empty save array is a no-op.
    assert_eq!(api.save(json!([])).await.status, StatusCode::NO_CONTENT);
    // PUT works like POST.
    let reply = api
        .send(
            api.http
                .put(&api.base)
                .json(&json!([{ "key": "p", "value": 1 }])),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
}

async fn get_of_a_missing_key_is_204_with_no_body(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let got = Api::new(&sidecar).get("never-saved").await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert_eq!(got.body, "");
    assert_eq!(got.etag, None);
}

async fn first_write_without_etag_on_existing_key_conflicts(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let first_write = json!({ "concurrency": "first-write" });

    // On a new key, first-write without an ETag creates it.
    let reply = api
        .save(json!([{ "key": "k", "value": 1, "options": first_write }]))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let etag1 = api.get("k").await.etag.unwrap();

    // On the existing key: no ETag → 409, nothing written.
    let reply = api
        .save(json!([{ "key": "k", "value": 2, "options": first_write }]))
        .await;
    let message = reply.assert_error(409, "ERR_STATE_SAVE");
    assert!(message.contains("state store mystore"), "{message}");
    assert!(message.contains("\"k\""), "{message}");
    assert_eq!(api.get("k").await.body, "1");

    // The right ETag → 204 and a new ETag.
    let reply = api
        .save(json!([{ "key": "k", "value": 3, "etag": etag1, "options": first_write }]))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let got = api.get("k").await;
    assert_eq!(got.body, "3");
    let etag2 = got.etag.unwrap();
    assert_ne!(etag2, etag1);

    // The stale ETag → 409, nothing written.
    let reply = api
        .save(json!([{ "key": "k", "value": 4, "etag": etag1, "options": first_write }]))
        .await;
    reply.assert_error(409, "ERR_STATE_SAVE");
    assert_eq!(api.get("k").await.body, "3");

    // An ETag for a key that does not exist → 409.
    let reply = api
        .save(json!([{ "key": "other", "value": 1, "etag": etag2, "options": first_write }]))
        .await;
    reply.assert_error(409, "ERR_STATE_SAVE");
    assert_eq!(api.get("other").await.status, StatusCode::NO_CONTENT);
}

async fn an_etag_is_checked_even_without_a_concurrency_option(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let etag = api.put("k", json!(1)).await;
    api.put("k", json!(2)).await;
    let reply = api
        .save(json!([{ "key": "k", "value": 3, "etag": etag }]))
        .await;
    reply.assert_error(409, "ERR_STATE_SAVE");
    assert_eq!(api.get("k").await.body, "2");
    // Without an ETag or options the write is unconditional.
    api.put("k", json!(5)).await;
    assert_eq!(api.get("k").await.body, "5");
}

async fn last_write_ignores_the_etag(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let etag = api.put("k", json!(1)).await;
    api.put("k", json!(2)).await;
    for stale in [etag.as_str(), "not-even-a-version"] {
        let reply = api
            .save(json!([{ "key": "k", "value": stale, "etag": stale, "options": { "concurrency": "last-write" } }]))
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
        assert_eq!(api.get("k").await.body, format!("\"{stale}\""));
    }
}

async fn delete_checks_if_match_and_missing_keys_delete_fine(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let etag = api.put("k", json!("v")).await;
    api.put("k", json!("v2")).await;

    let message = api
        .delete("k", Some(&etag))
        .await
        .assert_error(409, "ERR_STATE_DELETE");
    assert!(message.contains("state store mystore"), "{message}");
    assert_eq!(api.get("k").await.body, r#""v2""#);
    api.delete("k", Some("zz"))
        .await
        .assert_error(400, "ERR_STATE_DELETE");

    let current = api.get("k").await.etag.unwrap();
    let reply = api.delete("k", Some(&current)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(api.get("k").await.status, StatusCode::NO_CONTENT);

    // A deleted key's old ETag never matches a re-created key.
    api.put("k", json!("again")).await;
    api.delete("k", Some(&current))
        .await
        .assert_error(409, "ERR_STATE_DELETE");

    // Without If-Match: unconditional, and deleting a missing key is fine.
    assert_eq!(api.delete("k", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(api.delete("k", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get("k").await.status, StatusCode::NO_CONTENT);
}

async fn bulk_get_answers_every_key_in_order(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let e1 = api.put("k1", json!({ "a": 1 })).await;
    let e2 = api.put("k2", json!("two")).await;

    let reply = api
        .bulk(json!({ "keys": ["k2", "missing", "k1"], "parallelism": 2 }))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.json(),
        json!([
            { "key": "k2", "data": "two", "etag": e2 },
            { "key": "missing" },
            { "key": "k1", "data": { "a": 1 }, "etag": e1 },
        ])
    );
    let reply = api.bulk(json!({ "keys": [] })).await;
    assert_eq!(reply.json(), json!([]));
}

async fn a_transaction_applies_every_operation(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let etag = api.put("gone", json!(1)).await;
    let reply = api
        .transaction(json!({
            "operations": [
                { "operation": "upsert", "request": { "key": "t1", "value": "one" } },
                { "operation": "upsert", "request": { "key": "t2", "value": { "n": 2 } } },
                { "operation": "delete", "request": { "key": "gone", "etag": etag } },
            ],
            "metadata": { "partitionKey": "p" }
        }))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(api.get("t1").await.body, r#""one""#);
    assert_eq!(api.get("t2").await.body, r#"{"n":2}"#);
    assert_eq!(api.get("gone").await.status, StatusCode::NO_CONTENT);

    // The JS SDK sends nulls for what it leaves out.
    let reply = api
        .transaction(json!({
            "operations": [{ "operation": "upsert", "request": { "key": "t3", "value": 3, "etag": null, "metadata": null, "options": null } }],
            "metadata": null
        }))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let reply = api
        .save(json!([{ "key": "t4", "value": 4, "etag": null, "metadata": { "ttlInSeconds": null }, "options": { "concurrency": null } }]))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(api.get("t3").await.body, "3");
    assert_eq!(api.get("t4").await.body, "4");
}

async fn a_transaction_rolls_back_on_an_etag_conflict(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let stale = api.put("guarded", json!("v1")).await;
    api.put("guarded", json!("v2")).await;
    api.put("doomed", json!("kept")).await;

    let reply = api
        .transaction(json!({
            "operations": [
                { "operation": "upsert", "request": { "key": "new", "value": 1 } },
                { "operation": "delete", "request": { "key": "doomed" } },
                { "operation": "upsert", "request": { "key": "guarded", "value": "v3", "etag": stale } },
            ]
        }))
        .await;
    let message = reply.assert_error(409, "ERR_STATE_TRANSACTION");
    assert!(message.contains("\"guarded\""), "{message}");
    // Nothing of it happened.
    assert_eq!(api.get("new").await.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get("doomed").await.body, r#""kept""#);
    assert_eq!(api.get("guarded").await.body, r#""v2""#);

    // first-write inside a transaction: creating an existing key fails the whole transaction.
    let reply = api
        .transaction(json!({
            "operations": [
                { "operation": "upsert", "request": { "key": "new", "value": 1 } },
                { "operation": "upsert", "request": { "key": "doomed", "value": 2, "options": { "concurrency": "first-write" } } },
            ]
        }))
        .await;
    reply.assert_error(409, "ERR_STATE_TRANSACTION");
    assert_eq!(api.get("new").await.status, StatusCode::NO_CONTENT);
}

async fn items_saved_with_a_ttl_expire(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let reply = api
        .save(json!([
            { "key": "short", "value": "v", "metadata": { "ttlInSeconds": "1" } },
            { "key": "forever", "value": "v", "metadata": { "ttlInSeconds": -1 } },
        ]))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let got = api.get("forever").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.headers.contains_key("metadata.ttlexpiretime"));

    // Until it expires the item reads back with its expiry time (RFC 3339); then it is gone.
    let mut saw_expiry = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = api.get("short").await;
        match got.status {
            StatusCode::OK => {
                let expiry = got.headers["metadata.ttlexpiretime"].to_str().unwrap();
                assert!(expiry.ends_with('Z') && expiry.contains('T'), "{expiry}");
                saw_expiry = true;
            }
            StatusCode::NO_CONTENT => break,
            other => panic!("unexpected {other}: {}", got.body),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the item never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_expiry, "the item expired before the first read");
    assert_eq!(api.get("forever").await.status, StatusCode::OK);
    // An expired key counts as missing for first-write.
    let reply = api
        .save(json!([{ "key": "short", "value": 2, "options": { "concurrency": "first-write" } }]))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
}

async fn bad_input_gets_the_exact_4xx_and_writes_nothing(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);

    let message = api
        .save_raw("{not json")
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    assert!(
        message.starts_with("request body is not valid"),
        "{message}"
    );
    api.save_raw(r#"{"key":"k","value":1}"#)
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    let message = api
        .save(json!([{ "key": "fine", "value": 1 }, { "value": 1 }]))
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    assert_eq!(message, "[1].key: required");
    // The valid item before the bad one was not written either.
    assert_eq!(api.get("fine").await.status, StatusCode::NO_CONTENT);

    let message = api
        .save(json!([{ "key": "a||b", "value": 1 }]))
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    assert_eq!(message, "[0].key: input key \"a||b\" can't contain '||'");
    api.get("a%7C%7Cb")
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    api.bulk(json!({ "keys": ["ok", "x||y"] }))
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");

    let message = api
        .save(json!([{ "key": "k", "value": 1, "etag": "not-a-version" }]))
        .await
        .assert_error(400, "ERR_STATE_SAVE");
    assert!(
        message.contains("invalid etag \"not-a-version\""),
        "{message}"
    );
    api.save(json!([{ "key": "k", "value": 1, "options": { "concurrency": "sometimes" } }]))
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    api.save(json!([{ "key": "k", "value": 1, "metadata": { "ttlInSeconds": "soon" } }]))
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    api.transaction(json!({ "operations": [{ "operation": "merge", "request": { "key": "k" } }] }))
        .await
        .assert_error(400, "ERR_NOT_SUPPORTED_STATE_OPERATION");
    api.transaction(json!({ "operations": [{ "operation": "upsert", "request": { "key": "k", "etag": "x" } }] }))
        .await
        .assert_error(400, "ERR_STATE_TRANSACTION");
    api.bulk(json!({ "nokeys": [] }))
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    let message = api
        .get("k?consistency=sometimes")
        .await
        .assert_error(400, "ERR_MALFORMED_REQUEST");
    assert_eq!(
        message,
        "query consistency: unknown consistency \"sometimes\"; expected \"strong\" or \"eventual\""
    );

    // A 10 MB value is over the 4 MiB body limit.
    let big = format!(
        r#"[{{"key":"big","value":"{}"}}]"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let message = api
        .save_raw(big)
        .await
        .assert_error(413, "ERR_MALFORMED_REQUEST");
    assert!(message.contains("limit"), "{message}");

    let unknown = api
        .send(api.http.get(sidecar.url("/v1.0/state/nosuchstore/k")))
        .await;
    assert_eq!(
        unknown.assert_error(400, "ERR_STATE_STORE_NOT_FOUND"),
        "state store nosuchstore is not found"
    );
    api.send(api.http.get(&api.base))
        .await
        .assert_error(405, "ERR_MALFORMED_REQUEST");

    // None of it was written, and the sidecar still serves.
    assert_eq!(api.get("k").await.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get("big").await.status, StatusCode::NO_CONTENT);
    api.put("k", json!("ok")).await;
    assert_eq!(api.get("k").await.body, r#""ok""#);
}

/// 32 clients each add 1 to one counter 50 times, reading the ETag and retrying on 409.
async fn concurrent_increments_lose_no_update(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let api = std::sync::Arc::new(Api::new(&sidecar));
    api.put("counter", json!(0)).await;

    let mut clients = Vec::new();
    for _ in 0..32 {
        let api = api.clone();
        clients.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..50 {
                loop {
                    let got = api.get("counter").await;
                    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
                    let n: u64 = got.body.parse().unwrap();
                    let reply = api
                        .save(json!([{
                            "key": "counter",
                            "value": n + 1,
                            "etag": got.etag.unwrap(),
                            "options": { "concurrency": "first-write" }
                        }]))
                        .await;
                    match reply.status {
                        StatusCode::NO_CONTENT => break,
                        StatusCode::CONFLICT => {
                            conflicts += 1;
                            // Back off a little so the clients do not all collide again.
                            tokio::time::sleep(Duration::from_micros(fastrand::u64(200..2000)))
                                .await;
                        }
                        other => panic!("unexpected {other}: {}", reply.body),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for c in clients {
        conflicts += c.await.unwrap();
    }
    assert_eq!(api.get("counter").await.body, "1600");
    eprintln!("{kind:?}: 1600 increments, {conflicts} conflicts retried");
}

async fn metadata_lists_the_store_with_its_capabilities(kind: Kind) {
    let store = Store::start(kind);
    let sidecar = store.sidecar("a");
    let body: Value = support::get_json(sidecar.url("/v1.0/metadata")).await;
    let expected_type = match kind {
        Kind::Memory => "state.in-memory",
        Kind::Redis => "state.redis",
        Kind::Postgres => "state.postgresql",
    };
    assert_eq!(
        body["components"],
        json!([{ "name": "mystore", "type": expected_type, "version": "v1", "capabilities": ["ETAG", "TRANSACTIONAL", "TTL"] }])
    );
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test(super::Kind::Memory).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test(super::Kind::Redis).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test(super::Kind::Postgres).await } )*
        }
    };
}

conformance!(
    save_then_get_returns_the_value_with_an_etag,
    get_of_a_missing_key_is_204_with_no_body,
    first_write_without_etag_on_existing_key_conflicts,
    an_etag_is_checked_even_without_a_concurrency_option,
    last_write_ignores_the_etag,
    delete_checks_if_match_and_missing_keys_delete_fine,
    bulk_get_answers_every_key_in_order,
    a_transaction_applies_every_operation,
    a_transaction_rolls_back_on_an_etag_conflict,
    items_saved_with_a_ttl_expire,
    bad_input_gets_the_exact_4xx_and_writes_nothing,
    concurrent_increments_lose_no_update,
    metadata_lists_the_store_with_its_capabilities,
);

// === what only a shared backend can show ===

/// Two apps on one Redis or PostgreSQL store: the same key names never collide, because the
/// backend holds `<appId>||<key>`. (Two in-memory stores are two processes' memory, so there is
/// nothing shared to isolate.)
async fn keys_are_isolated_between_app_ids(kind: Kind) {
    let store = Store::start(kind);
    let (sa, sb) = (store.sidecar("a"), store.sidecar("b"));
    let (a, b) = (Api::new(&sa), Api::new(&sb));
    a.put("shared-name", json!("from a")).await;
    assert_eq!(b.get("shared-name").await.status, StatusCode::NO_CONTENT);
    b.put("shared-name", json!("from b")).await;
    assert_eq!(a.get("shared-name").await.body, r#""from a""#);
    assert_eq!(b.get("shared-name").await.body, r#""from b""#);
    b.delete("shared-name", None).await;
    assert_eq!(a.get("shared-name").await.body, r#""from a""#);

    let stored =
        match kind {
            Kind::Redis => store
                .redis
                .as_ref()
                .unwrap()
                .cli(&["HGET", "a||shared-name", "data"]),
            Kind::Postgres => store.pg.as_ref().unwrap().query(
                "SELECT convert_from(value, 'UTF8') FROM state WHERE key = 'a||shared-name'",
            ),
            Kind::Memory => unreachable!(),
        };
    assert_eq!(stored, r#""from a""#);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_keys_are_isolated_between_app_ids() {
    keys_are_isolated_between_app_ids(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_keys_are_isolated_between_app_ids() {
    keys_are_isolated_between_app_ids(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_resources_the_sidecar_serves_an_in_memory_statestore() {
    let registry = tempfile::tempdir().unwrap();
    let sidecar = SidecarBuilder::new("a", registry.path()).start();
    let http = client();
    let reply = http
        .post(sidecar.url("/v1.0/state/statestore"))
        .body(r#"[{"key":"k","value":"v"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    let got = http
        .get(sidecar.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.text().await.unwrap(), r#""v""#);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_creates_its_table_with_a_version_column() {
    let store = Store::start(Kind::Postgres);
    let sidecar = store.sidecar("a");
    let etag = Api::new(&sidecar).put("k", json!(1)).await;
    let pg = store.pg.as_ref().unwrap();
    assert_eq!(
        pg.query("SELECT key || ' ' || version FROM state"),
        format!("a||k {etag}")
    );
}

/// Redis with `appendonly yes` and `appendfsync always`: every save answered 204 before Redis
/// is killed (-9) is there after it restarts; while it is down, calls fail fast with a 500
/// naming the store; and the sidecar reconnects by itself.
#[tokio::test(flavor = "multi_thread")]
async fn redis_saves_survive_a_restart_and_an_outage_fails_fast_then_recovers() {
    let store = Store::start_with(Kind::Redis, Some(RedisServer::start(true)));
    let sidecar = store.sidecar("a");
    let api = Api {
        base: sidecar.url("/v1.0/state/mystore"),
        // Longer than the component's dialTimeout + readTimeout (2 s + 2 s): a hang fails here.
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    for i in 0..200 {
        let reply = api
            .save(json!([{ "key": format!("k{i}"), "value": { "i": i } }]))
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    }

    let mut redis = store.redis.expect("a redis store");
    redis.kill();
    let address = redis.address();
    let message = api.get("k0").await.assert_error(500, "ERR_STATE_GET");
    assert!(
        message.starts_with("fail to get k0 from state store mystore: redis at "),
        "{message}"
    );
    assert!(message.contains(&address), "{message}");
    let message = api
        .save(json!([{ "key": "during", "value": 1 }]))
        .await
        .assert_error(500, "ERR_STATE_SAVE");
    assert!(
        message.starts_with("failed saving state in state store mystore: redis at "),
        "{message}"
    );
    api.delete("k1", None)
        .await
        .assert_error(500, "ERR_STATE_DELETE");

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = api.get("k0").await;
        if got.status == StatusCode::OK {
            break;
        }
        assert_eq!(got.status.as_u16(), 500, "{}", got.body);
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {}",
            got.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..200 {
        let got = api.get(&format!("k{i}")).await;
        assert_eq!(got.status, StatusCode::OK, "k{i} lost: {}", got.body);
        assert_eq!(got.body, format!(r#"{{"i":{i}}}"#));
    }
    // Writes work again too, and the ETag sequence went on where it was.
    let etag = api.put("after", json!(1)).await;
    assert!(etag.parse::<u64>().unwrap() > 200, "{etag}");
}

fn redis_component(name: &str, metadata: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n"
    );
    for (k, v) in metadata {
        yaml.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    yaml
}

async fn component_names(sidecar: &SidecarProc) -> Vec<String> {
    let body: Value = support::get_json(sidecar.url("/v1.0/metadata")).await;
    let mut names: Vec<String> = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Components pushed by the control plane: while one store is redefined ten times (between
/// two Redis servers) and once refused (NACK naming the field), steady traffic to another
/// store fails no request and that store — in memory — keeps its data, so it was never
/// reopened.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_component_swaps_in_without_failing_requests_to_the_others() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let (r1, r2) = (RedisServer::start(false), RedisServer::start(false));
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("keep.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: keep\nspec:\n  type: state.in-memory\n  version: v1\n",
    )
    .unwrap();
    let write_swap = |yaml: String| {
        let tmp = config.path().join(".swap.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, config.path().join("swap.yaml")).unwrap();
    };
    write_swap(redis_component("swap", &[("redisHost", &r1.address())]));
    let control = start_control(config.path());
    let registry = tempfile::tempdir().unwrap();
    let sidecar = SidecarBuilder::new("a", registry.path())
        .arg("--no-discovery")
        .arg("--control-plane")
        .arg(&format!("http://{}", control.listen))
        .start();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while component_names(&sidecar).await != ["keep", "swap"] {
        assert!(
            std::time::Instant::now() < deadline,
            "components never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let keep = Arc::new(Api {
        base: sidecar.url("/v1.0/state/keep"),
        http: client(),
    });
    keep.put("survivor", json!("still here")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (keep, stop, ok, failed) = (keep.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{w}");
                    let saved = keep.save(json!([{ "key": key, "value": n }])).await;
                    let got = keep.get(&key).await;
                    if saved.status == StatusCode::NO_CONTENT && got.body == n.to_string() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!(
                            "failed: save {} / get {} {}",
                            saved.status, got.status, got.body
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let swap = Api {
        base: sidecar.url("/v1.0/state/swap"),
        http: client(),
    };
    for round in 0..10 {
        let target = if round % 2 == 0 { &r2 } else { &r1 };
        write_swap(redis_component("swap", &[("redisHost", &target.address())]));
        // The swap is in force once a save through `swap` lands in the new server.
        let marker = format!("round{round}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let saved = swap.save(json!([{ "key": marker, "value": round }])).await;
            assert_eq!(saved.status, StatusCode::NO_CONTENT, "{}", saved.body);
            if target.cli(&["HGET", &format!("a||{marker}"), "data"]) == round.to_string() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round} never took effect"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // A definition the sidecar cannot open is refused; the last good one stays in force.
    write_swap(redis_component("swap", &[("redisDB", "0")]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let nack = loop {
        let sidecars: Value = support::get_json(format!("http://{}/sidecars", control.admin)).await;
        let nack = sidecars[0]["last_nack"].clone();
        if !nack.is_null() {
            break nack;
        }
        assert!(std::time::Instant::now() < deadline, "no NACK: {sidecars}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        nack["message"],
        "component \"swap\": spec.metadata redisHost: is required, e.g. localhost:6379"
    );
    swap.put("after-nack", json!(1)).await;
    assert_eq!(r1.cli(&["HGET", "a||after-nack", "data"]), "1");

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests to keep failed",
        ok + failed
    );
    assert!(ok > 0);
    assert_eq!(keep.get("survivor").await.body, r#""still here""#);
    eprintln!("{ok} save+get pairs on keep during 10 swaps and a NACK, none failed");
}

#[test]
fn a_component_the_sidecar_cannot_open_stops_it_at_start_naming_the_field() {
    let resources = tempfile::tempdir().unwrap();
    std::fs::write(
        resources.path().join("cache.yaml"),
        redis_component(
            "cache",
            &[("redisHost", "localhost:6379"), ("redisDB", "zero")],
        ),
    )
    .unwrap();
    let registry = tempfile::tempdir().unwrap();
    let mut sidecar = SidecarBuilder::new("a", registry.path())
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap());
    let out = sidecar.command.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("component \"cache\": spec.metadata redisDB: \"zero\" is not a whole number"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_with_no_state_store_answers_500_not_configured() {
    let (resources, registry) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sidecar = SidecarBuilder::new("a", registry.path())
        .arg("--resources-path")
        .arg(resources.path().to_str().unwrap())
        .start();
    let api = Api::new(&sidecar);
    let message = api
        .get("k")
        .await
        .assert_error(500, "ERR_STATE_STORES_NOT_CONFIGURED");
    assert_eq!(message, "state store is not configured");
}

/// Pointed at a table of another shape (Dapr's own PostgreSQL v1 layout has no version
/// column), the store answers 500 naming the table and the problem, and keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_on_a_table_of_another_shape_answers_500_naming_it() {
    let store = Store::start(Kind::Postgres);
    store.pg.as_ref().unwrap().query(
        "CREATE TABLE state (key text PRIMARY KEY, value jsonb NOT NULL, isbinary boolean NOT NULL, \
         insertdate timestamptz NOT NULL DEFAULT now(), updatedate timestamptz, expiredate timestamptz)",
    );
    let sidecar = store.sidecar("a");
    let api = Api::new(&sidecar);
    let message = api.get("k").await.assert_error(500, "ERR_STATE_GET");
    assert!(
        message.starts_with("fail to get k from state store mystore: postgresql table state: column \"version\" does not exist"),
        "{message}"
    );
    let message = api
        .save(json!([{ "key": "k", "value": 1 }]))
        .await
        .assert_error(500, "ERR_STATE_SAVE");
    assert!(message.contains("postgresql table state"), "{message}");
    assert_eq!(
        client()
            .get(sidecar.url("/v1.0/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
}
