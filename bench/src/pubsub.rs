//! `outrigger bench --pubsub`: two measurements of the pub/sub block against real brokers the
//! harness starts itself (a `redis-server` and a tansu Kafka-protocol broker).
//!
//! - **Publish throughput** on Kafka: `POST /v1.0/publish/kafka/bench` through a sidecar from
//!   `--connections` closed-loop HTTP/1.1 connections, against a direct rdkafka producer in this
//!   process with the same properties (`acks=all`, the same client settings) and the same
//!   number of sends in flight. Both count a publish only once the broker acknowledged it; the
//!   payload is `--body-bytes` of JSON. Repetitions alternate the two.
//! - **Publish → delivery latency** through two sidecars (publisher's and subscriber's), on
//!   Redis Streams and on Kafka: one message at a time, from just before the publish call to
//!   the moment the subscriber app (in this process) receives the delivery.
//!
//! Medians over repetitions are reported; the ratio sidecar / direct is what carries over.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use outrigger_load::{LoadSpec, Mode, Protocol};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::procs::{
    free_port, median, start_redis, start_sidecar, wait_listening, Proc, SidecarSpec,
};

pub(crate) struct Settings {
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) repetitions: usize,
    /// Publishes in flight for the throughput runs.
    pub(crate) in_flight: usize,
    pub(crate) payload_bytes: usize,
}

/// One throughput run of one path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ThroughputRun {
    pub(crate) path: &'static str,
    pub(crate) repetition: usize,
    pub(crate) published: u64,
    pub(crate) errors: u64,
    pub(crate) per_second: f64,
}

/// One latency run on one broker.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyRun {
    pub(crate) broker: &'static str,
    /// `sidecar` (two sidecars and the broker) or `direct` (a client of the broker in the
    /// benchmark process producing and consuming itself).
    pub(crate) path: &'static str,
    pub(crate) repetition: usize,
    pub(crate) delivered: u64,
    /// Not delivered within 5 s of its publish (the run moves on; a late delivery is ignored).
    pub(crate) late: u64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub(crate) throughput: Vec<ThroughputRun>,
    pub(crate) latency: Vec<LatencyRun>,
}

const TOPIC: &str = "bench";
const THROUGHPUT_COMPONENT: &str = "kafka-throughput";
const LATENCY_TOPIC: &str = "latency";
/// The direct baselines' topic (a Redis stream and a Kafka topic).
const DIRECT_TOPIC: &str = "direct-latency";
/// The producer properties the sidecar's `pubsub.kafka` component sets (pubsub/src/kafka.rs),
/// so the direct producer is the same client doing the same work.
const MESSAGE_TIMEOUT_MS: &str = "10000";

pub(crate) async fn measure(
    exe: &Path,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<Results> {
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let tansu = start_tansu(&logs)?;
    tansu.create_topic(TOPIC)?;
    tansu.create_topic(LATENCY_TOPIC)?;
    tansu.create_topic(DIRECT_TOPIC)?;
    let redis = start_redis(
        &work.join("pubsub-redis"),
        &logs.join("pubsub-redis.log"),
        None,
    )?;

    // The subscriber app, in this process: it records when each delivery arrives.
    let (deliveries, mut arrived) = mpsc::unbounded_channel::<(String, u64, Instant)>();
    let app_port = serve_subscriber(deliveries).await?;

    let resources = work.join("pubsub-resources");
    std::fs::create_dir_all(&resources)?;
    // The throughput component has librdkafka's defaults, as the direct producer does.
    let kafka_base = format!(
        "  - {{name: brokers, value: \"{}\"}}\n  - {{name: authType, value: none}}\n",
        tansu.address
    );
    std::fs::write(
        resources.join("kafka-throughput.yaml"),
        component(THROUGHPUT_COMPONENT, "pubsub.kafka", &kafka_base),
    )?;
    // The latency component: manual assignment (tansu 0.6.0's SyncGroup answers an empty
    // assignment), no producer linger, and a 1 ms fetch wait — tansu 0.6.0 answers a fetch only
    // after sleeping through its wait even when it has records, so the wait is the floor of
    // delivery latency there (Apache Kafka answers as soon as records arrive).
    std::fs::write(
        resources.join("kafka.yaml"),
        component(
            "kafka",
            "pubsub.kafka",
            &format!(
                "{kafka_base}  - {{name: initialOffset, value: newest}}\n  - {{name: partitionAssignment, value: manual}}\n  - {{name: librdkafka.linger.ms, value: \"0\"}}\n  - {{name: librdkafka.fetch.wait.max.ms, value: \"1\"}}\n"
            ),
        ),
    )?;
    std::fs::write(
        resources.join("redis.yaml"),
        component(
            "redis",
            "pubsub.redis",
            &format!(
                "  - {{name: redisHost, value: \"127.0.0.1:{}\"}}\n",
                redis.1
            ),
        ),
    )?;
    let sidecar = |app_id: &str, app_port: Option<u16>| {
        start_sidecar(
            exe,
            &SidecarSpec {
                app_id,
                app_port,
                resources: Some(&resources),
                log: &logs.join(format!("sidecar-{app_id}.log")),
                cpu: None,
                extra: &["--log-level", "warn"],
            },
        )
    };
    let publisher = sidecar("publisher", None)?;
    let subscriber = sidecar("subscriber", Some(app_port))?;

    let mut results = Results {
        throughput: Vec::new(),
        latency: Vec::new(),
    };
    // Latency first: tansu's in-memory storage slows as the throughput runs fill it.
    let mut id = 0u64;
    for broker in ["redis", "kafka"] {
        wait_first_delivery(publisher.http, broker, &mut arrived, &mut id).await?;
    }
    // The direct baselines: a client of each broker in this process, producing and consuming
    // itself on a topic of its own, read from the start by a task that stays up.
    let (direct_arrivals, mut direct_arrived) = mpsc::unbounded_channel();
    let redis_client = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.1))?;
    let mut redis_writer = redis_client.get_multiplexed_async_connection().await?;
    let redis_reader = redis_client.get_multiplexed_async_connection().await?;
    tokio::spawn(direct_redis_reader(redis_reader, direct_arrivals.clone()));
    direct_kafka_reader(&tansu.address, direct_arrivals)?;
    let latency_producer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.address)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create::<FutureProducer>()
        .context("creating the direct rdkafka producer")?;
    for repetition in 0..settings.repetitions {
        for broker in ["redis", "kafka"] {
            let sidecar = Publisher::Sidecar {
                client: PublishClient::default(),
                http: publisher.http,
                component: broker,
            };
            let run = latency_run(broker, sidecar, &mut arrived, &mut id, settings, repetition);
            results.latency.push(run.await?);
            let direct = match broker {
                "redis" => Publisher::Redis(&mut redis_writer),
                _ => Publisher::Kafka(&latency_producer),
            };
            let run = latency_run(
                broker,
                direct,
                &mut direct_arrived,
                &mut id,
                settings,
                repetition,
            );
            results.latency.push(run.await?);
        }
    }
    let producer = direct_producer(&tansu.address)?;
    let payload = payload(settings.payload_bytes);
    for repetition in 0..settings.repetitions {
        results
            .throughput
            .push(sidecar_publishes(publisher.http, &payload, settings, repetition).await?);
        results
            .throughput
            .push(direct_publishes(&producer, &payload, settings, repetition).await?);
    }

    drop(subscriber);
    drop(publisher);
    Ok(results)
}

fn component(name: &str, kind: &str, metadata: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n{metadata}"
    )
}

/// A JSON string of `bytes` bytes, the body of every publish.
fn payload(bytes: usize) -> Bytes {
    Bytes::from(serde_json::Value::String("x".repeat(bytes.saturating_sub(2))).to_string())
}

/// A tansu broker on a free port with in-memory storage.
struct Tansu {
    bin: PathBuf,
    address: String,
    _proc: Proc,
}

impl Tansu {
    fn create_topic(&self, name: &str) -> anyhow::Result<()> {
        let out = std::process::Command::new(&self.bin)
            .args(["topic", "create", name, "--partitions", "1", "--broker"])
            .arg(format!("tcp://{}", self.address))
            .output()
            .context("running tansu topic create")?;
        if !out.status.success() {
            bail!(
                "tansu topic create {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

fn start_tansu(logs: &Path) -> anyhow::Result<Tansu> {
    let bin = tansu_bin()?;
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let args: Vec<String> = [
        "broker",
        "--storage-engine",
        "memory://tansu/",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut proc = Proc::spawn("tansu", &bin, &args, None, &logs.join("tansu.log"))?;
    wait_listening(&mut proc, port)?;
    Ok(Tansu {
        bin,
        address: format!("127.0.0.1:{port}"),
        _proc: proc,
    })
}

/// `tansu` on the PATH, else where `cargo install` puts it.
fn tansu_bin() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("tansu"))
            .find(|p| p.is_file())
    });
    let installed = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
        .filter(|p| p.is_file());
    on_path.or(installed).context(
        "tansu is not installed: cargo install tansu --version 0.6.0 --locked --features dynostore",
    )
}

fn direct_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "outrigger")
        .set("acks", "all")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
        .create()
        .context("creating the direct rdkafka producer")
}

async fn sidecar_publishes(
    http: SocketAddr,
    payload: &Bytes,
    settings: &Settings,
    repetition: usize,
) -> anyhow::Result<ThroughputRun> {
    let mut spec = LoadSpec::get(format!(
        "http://{http}/v1.0/publish/{THROUGHPUT_COMPONENT}/{TOPIC}"
    ));
    spec.method = http::Method::POST;
    spec.headers = vec![("content-type".into(), "application/json".into())];
    spec.body = payload.clone();
    spec.protocol = Protocol::Http1;
    spec.connections = settings.in_flight;
    spec.mode = Mode::ClosedLoop;
    spec.warmup = settings.warmup;
    spec.duration = settings.duration;
    spec.timeout = Duration::from_secs(15);
    let report = outrigger_load::run(&spec).await?;
    let published = report.status_counts.get(&204).copied().unwrap_or(0);
    Ok(ThroughputRun {
        path: "sidecar",
        repetition,
        published,
        errors: report.requests - published,
        per_second: published as f64 / report.duration_secs.max(f64::MIN_POSITIVE),
    })
}

/// `in_flight` tasks, each sending the next record once the broker acknowledged its last.
async fn direct_publishes(
    producer: &FutureProducer,
    payload: &Bytes,
    settings: &Settings,
    repetition: usize,
) -> anyhow::Result<ThroughputRun> {
    let published = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let end = measure_from + settings.duration;
    let mut tasks = Vec::new();
    for _ in 0..settings.in_flight {
        let (producer, payload) = (producer.clone(), payload.clone());
        let (published, errors) = (published.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let sent_at = Instant::now();
                if sent_at >= end {
                    break;
                }
                let record = FutureRecord::<str, [u8]>::to(TOPIC).payload(payload.as_ref());
                let outcome = producer.send(record, Duration::from_secs(10)).await;
                if sent_at >= measure_from && Instant::now() <= end {
                    match outcome {
                        Ok(_) => published.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let published = published.load(Ordering::Relaxed);
    Ok(ThroughputRun {
        path: "direct-rdkafka",
        repetition,
        published,
        errors: errors.load(Ordering::Relaxed),
        per_second: published as f64 / settings.duration.as_secs_f64(),
    })
}

/// The subscriber app: answers `GET /dapr/subscribe` with one subscription per broker and
/// every delivery with 200, reporting (broker, id, arrival) for each.
async fn serve_subscriber(
    deliveries: mpsc::UnboundedSender<(String, u64, Instant)>,
) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let subscriptions = serde_json::json!([
        {"pubsubname": "redis", "topic": LATENCY_TOPIC, "route": "/redis"},
        {"pubsubname": "kafka", "topic": LATENCY_TOPIC, "route": "/kafka"},
    ])
    .to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (deliveries, subscriptions) = (deliveries.clone(), subscriptions.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (deliveries, subscriptions) = (deliveries.clone(), subscriptions.clone());
                    async move {
                        let path = request.uri().path().trim_start_matches('/').to_string();
                        let is_get = request.method() == hyper::Method::GET;
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let arrived = Instant::now();
                        if is_get && path == "dapr/subscribe" {
                            let mut response = Response::new(Full::new(Bytes::from(subscriptions)));
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            return Ok::<_, Infallible>(response);
                        }
                        if let Some(id) = delivered_id(&body) {
                            let _ = deliveries.send((path, id, arrived));
                        }
                        Ok(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// The `id` inside a delivered CloudEvent's `data`.
fn delivered_id(body: &[u8]) -> Option<u64> {
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    event.get("data")?.get("id")?.as_u64()
}

/// Where a latency run's messages go in.
enum Publisher<'a> {
    /// `POST /v1.0/publish/{component}/latency` on the publisher's sidecar.
    Sidecar {
        client: PublishClient,
        http: SocketAddr,
        component: &'static str,
    },
    /// `XADD direct-latency * id N` on Redis.
    Redis(&'a mut redis::aio::MultiplexedConnection),
    /// A record to `direct-latency` with the rdkafka producer.
    Kafka(&'a FutureProducer),
}

impl Publisher<'_> {
    fn path(&self) -> &'static str {
        match self {
            Publisher::Sidecar { .. } => "sidecar",
            _ => "direct",
        }
    }

    /// Publishes one message carrying `id` (`{"id": N}` for the sidecar).
    async fn publish(&mut self, id: u64) -> anyhow::Result<()> {
        match self {
            Publisher::Sidecar {
                client,
                http,
                component,
            } => {
                let body = format!("{{\"id\":{id}}}");
                let status = client
                    .post(
                        *http,
                        &format!("/v1.0/publish/{component}/{LATENCY_TOPIC}"),
                        body,
                    )
                    .await?;
                if status != 204 {
                    bail!("publishing to {component} answered {status}");
                }
            }
            Publisher::Redis(connection) => {
                let _: String = redis::cmd("XADD")
                    .arg(DIRECT_TOPIC)
                    .arg("*")
                    .arg("id")
                    .arg(id)
                    .query_async(&mut **connection)
                    .await?;
            }
            Publisher::Kafka(producer) => {
                let payload = id.to_string();
                let record = FutureRecord::<str, str>::to(DIRECT_TOPIC).payload(&payload);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("direct produce: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Publishes one message `{"id": N}` to a component's latency topic through the sidecar.
async fn publish_one(
    client: &mut PublishClient,
    http: SocketAddr,
    broker: &str,
    id: u64,
) -> anyhow::Result<()> {
    let body = format!("{{\"id\":{id}}}");
    let status = client
        .post(
            http,
            &format!("/v1.0/publish/{broker}/{LATENCY_TOPIC}"),
            body,
        )
        .await?;
    if status != 204 {
        bail!("publishing to {broker} answered {status}");
    }
    Ok(())
}

/// Publishes until the subscriber's sidecar has its consumer running and a message arrives.
async fn wait_first_delivery(
    http: SocketAddr,
    broker: &'static str,
    arrived: &mut mpsc::UnboundedReceiver<(String, u64, Instant)>,
    id: &mut u64,
) -> anyhow::Result<()> {
    let mut client = PublishClient::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        *id += 1;
        publish_one(&mut client, http, broker, *id).await?;
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                got = arrived.recv() => match got {
                    Some((route, _, _)) if route == broker => return Ok(()),
                    Some(_) => continue,
                    None => bail!("the subscriber app stopped"),
                },
                _ = &mut wait => break,
            }
        }
    }
    bail!("no delivery from {broker} within 60 s of the first publish (see the sidecar logs)")
}

/// One message at a time: publish, wait for its arrival, record the time between. Ids are
/// unique across every path, so an arrival is matched by id alone.
async fn latency_run(
    broker: &'static str,
    mut publisher: Publisher<'_>,
    arrived: &mut mpsc::UnboundedReceiver<(String, u64, Instant)>,
    id: &mut u64,
    settings: &Settings,
    repetition: usize,
) -> anyhow::Result<LatencyRun> {
    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut delivered, mut late) = (0u64, 0u64);
    let measure_from = Instant::now() + settings.warmup;
    let end = measure_from + settings.duration;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        *id += 1;
        let want = *id;
        publisher.publish(want).await?;
        let arrival = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match arrived.recv().await {
                    Some((_, got, at)) if got == want => return Some(at),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await;
        if sent < measure_from {
            continue;
        }
        match arrival {
            Ok(Some(at)) => {
                delivered += 1;
                histogram.record(at.duration_since(sent).as_nanos() as u64)?;
            }
            _ => late += 1,
        }
    }
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(LatencyRun {
        broker,
        path: publisher.path(),
        repetition,
        delivered,
        late,
        p50_us: us(0.5),
        p99_us: us(0.99),
    })
}

/// Reads `direct-latency` on Redis from the start, reporting each entry's id as it arrives.
async fn direct_redis_reader(
    mut connection: redis::aio::MultiplexedConnection,
    arrived: mpsc::UnboundedSender<(String, u64, Instant)>,
) {
    type Reply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;
    let mut last = "0-0".to_string();
    loop {
        let reply: redis::RedisResult<Reply> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(DIRECT_TOPIC)
            .arg(&last)
            .query_async(&mut connection)
            .await;
        let at = Instant::now();
        let Ok(reply) = reply else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for (_, entries) in reply.unwrap_or_default() {
            for (entry, fields) in entries {
                if let Some(id) = fields.get(1).and_then(|v| v.parse().ok()) {
                    if arrived.send((String::new(), id, at)).is_err() {
                        return;
                    }
                }
                last = entry;
            }
        }
    }
}

/// Consumes `direct-latency` on Kafka from the start (partition 0, no group rebalance), with
/// the sidecar's latency component's fetch wait, reporting each record's id as it arrives.
fn direct_kafka_reader(
    brokers: &str,
    arrived: mpsc::UnboundedSender<(String, u64, Instant)>,
) -> anyhow::Result<()> {
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Message as _;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-direct")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1")
        .create()
        .context("creating the direct rdkafka consumer")?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(DIRECT_TOPIC, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&assignment)?;
    tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(message) => {
                    let at = Instant::now();
                    let id = message
                        .payload()
                        .and_then(|p| std::str::from_utf8(p).ok())
                        .and_then(|p| p.parse().ok());
                    if let Some(id) = id {
                        if arrived.send((String::new(), id, at)).is_err() {
                            return;
                        }
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    Ok(())
}

/// A keep-alive HTTP/1.1 client for single publishes.
#[derive(Default)]
struct PublishClient {
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl PublishClient {
    async fn post(&mut self, http: SocketAddr, path: &str, body: String) -> anyhow::Result<u16> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(http).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            bail!("no connection to {http}");
        };
        let request = Request::post(path)
            .header(hyper::header::HOST, "bench")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        Ok(status)
    }
}

/// Medians over repetitions: (sidecar publishes/s, direct publishes/s).
pub(crate) fn throughput_medians(results: &Results) -> (f64, f64) {
    let of = |path: &str| {
        median(
            results
                .throughput
                .iter()
                .filter(|r| r.path == path)
                .map(|r| r.per_second)
                .collect(),
        )
    };
    (of("sidecar"), of("direct-rdkafka"))
}

/// Medians over repetitions for one broker and path: (p50 µs, p99 µs).
pub(crate) fn latency_medians(results: &Results, broker: &str, path: &str) -> (f64, f64) {
    let runs = || {
        results
            .latency
            .iter()
            .filter(|r| r.broker == broker && r.path == path)
    };
    (
        median(runs().map(|r| r.p50_us).collect()),
        median(runs().map(|r| r.p99_us).collect()),
    )
}

pub(crate) fn markdown(results: &Results, command: &str, settings: &Settings) -> String {
    let (sidecar, direct) = throughput_medians(results);
    let mut out = format!(
        "# Pub/sub: publish throughput and publish → delivery latency\n\n\
         - command: `{command}`\n\
         - brokers started by the harness: tansu 0.6.0 (in-memory storage, one partition) and redis-server (no persistence)\n\
         - throughput: {} publishes in flight, {}-byte JSON payloads, each counted once the broker acknowledged it (`acks=all`); \
         sidecar = `POST /v1.0/publish/{THROUGHPUT_COMPONENT}/{TOPIC}` over {} HTTP/1.1 connections, direct = an rdkafka `FutureProducer` in the benchmark process with the sidecar's producer properties; \
         {:?} measured after {:?} warm-up, {} repetitions alternating the two\n\
         - latency: one message at a time, from just before the publish call to its arrival; sidecar = through two sidecars (the publisher's, the subscriber's) to the subscriber app, direct = a client of the broker in the benchmark process reading its own messages (Redis `XADD` → blocking `XREAD`; rdkafka producer → consumer); \
         the Kafka paths set `linger.ms: 0` and `fetch.wait.max.ms: 1` (tansu 0.6.0 answers a fetch only after its wait, even with records to give)\n\n\
         | publish throughput | publishes/s |\n|---|---:|\n\
         | direct rdkafka producer | {direct:.0} |\n\
         | through the sidecar | {sidecar:.0} |\n\
         | ratio sidecar / direct | {:.2} |\n\n\
         | publish → delivery | direct p50 (µs) | direct p99 (µs) | sidecars p50 (µs) | sidecars p99 (µs) | added p50 (µs) |\n|---|---:|---:|---:|---:|---:|\n",
        settings.in_flight,
        settings.payload_bytes,
        settings.in_flight,
        settings.duration,
        settings.warmup,
        settings.repetitions,
        sidecar / direct.max(f64::MIN_POSITIVE),
    );
    for (broker, label) in [("redis", "Redis Streams"), ("kafka", "Kafka (tansu)")] {
        let (d50, d99) = latency_medians(results, broker, "direct");
        let (s50, s99) = latency_medians(results, broker, "sidecar");
        out.push_str(&format!(
            "| {label} | {d50:.0} | {d99:.0} | {s50:.0} | {s99:.0} | {:.0} |\n",
            s50 - d50
        ));
    }
    out.push_str(
        "\n## Runs\n\n| repetition | path | published | errors | publishes/s |\n|---:|---|---:|---:|---:|\n",
    );
    for r in &results.throughput {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} |\n",
            r.repetition, r.path, r.published, r.errors, r.per_second
        ));
    }
    out.push_str(
        "\n| repetition | broker | path | delivered | late (> 5 s) | p50 (µs) | p99 (µs) |\n|---:|---|---|---:|---:|---:|---:|\n",
    );
    for r in &results.latency {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} |\n",
            r.repetition, r.broker, r.path, r.delivered, r.late, r.p50_us, r.p99_us
        ));
    }
    out
}
