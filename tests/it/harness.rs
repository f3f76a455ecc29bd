//! The shared test harness: a real `redis-server` per test on a free port
//! (killable and restartable, `redis.rs`), the in-process simulator on port
//! 0, and the relay built exactly as production builds it (`app.rs`), from
//! a typed configuration (`config.rs`), asked over HTTP (`api.rs`) and
//! waited for (`wait.rs`); stores appended to directly (`append.rs`). What
//! several suites share lives here too, a file by concept: the webhook
//! receivers (`receiver.rs`, `scripted.rs`), subscribing and waiting for
//! deliveries (`delivery.rs`), schema checks (`openapi.rs`), live streams
//! (`sse.rs`), the compatible API (`compat.rs`), `/metrics` (`metrics.rs`),
//! filters (`filters.rs`), the binary (`cli.rs`), a local Redis Cluster
//! (`redis_cluster.rs`) and a store that loses its data (`wipe.rs`). Suites
//! import from here, never from each other.
//!
//! Without `redis-server` on the PATH the Redis tests are skipped with a
//! message, unless `STAMP_RELAY_REQUIRE_REDIS=1` (set by `.ci/run`), which
//! turns a missing Redis into a failure.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use stamp_relay::{
    app::Relay,
    config::{Config, Paging, SourceConfig, StoreConfig},
    events::{Event, StreamId},
    store::{self, Store, Table},
};
use stamp_relay_simulator::{SimConfig, Simulator};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use redis_cluster::RedisCluster;

mod api;
mod app;
mod append;
pub mod cli;
pub mod compat;
mod config;
pub mod delivery;
pub mod filters;
pub mod metrics;
pub mod openapi;
pub mod receiver;
mod redis;
pub mod redis_cluster;
pub mod scripted;
pub mod sse;
mod wait;
pub mod wipe;

pub use api::{Api, serve};
pub use app::{ADMIN_TOKEN, App, READ_TOKEN, app_with_subscription, with_tokens};
pub use append::{append_as, leased_table, record};
pub use config::{ConfigBuilder, upstream};
pub use redis::{RedisServer, redis_available};
pub use wait::{eventually, eventually_blocking, wait_for, wait_for_every};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Sqlite,
    /// Three masters of a local Redis Cluster, no replicas.
    Cluster,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many seeds randomized suites run (`STAMP_RELAY_SEEDS`, default 4).
pub fn seeds() -> u64 {
    std::env::var("STAMP_RELAY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// The seeds a randomized suite runs: `STAMP_RELAY_SEED=k` reruns seed `k`
/// alone (the one a failure printed); otherwise `0..STAMP_RELAY_SEEDS`.
pub fn seed_list() -> Vec<u64> {
    match std::env::var("STAMP_RELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..seeds()).collect(),
    }
}

/// The seed of a test that runs once: `STAMP_RELAY_SEED`, else a fresh
/// random one (a [`SeedGuard`] prints it on failure).
pub fn one_seed() -> u64 {
    std::env::var("STAMP_RELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// Prints which seed a randomized test was running when it panics, so the
/// failure can be rerun alone with `STAMP_RELAY_SEED`.
pub struct SeedGuard {
    pub what: String,
    pub seed: u64,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {}; rerun it alone with STAMP_RELAY_SEED={}",
                self.what, self.seed, self.seed
            );
        }
    }
}

/// A store of either backend, with what keeps it alive.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub config: StoreConfig,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
    pub dir: TempDir,
}

impl TestStore {
    pub async fn open(backend: Backend) -> Option<TestStore> {
        Self::open_with(backend, false).await
    }

    pub async fn open_with(backend: Backend, aof: bool) -> Option<TestStore> {
        let dir = TempDir::new().unwrap();
        let redis = match backend {
            Backend::Redis => Some(RedisServer::start(aof)?),
            Backend::Sqlite | Backend::Cluster => None,
        };
        let cluster = match backend {
            Backend::Cluster => Some(RedisCluster::start(0)?),
            Backend::Redis | Backend::Sqlite => None,
        };
        let config = StoreConfig {
            redis_url: redis.as_ref().map(|r| r.url()),
            redis_cluster: cluster.as_ref().map(|c| c.urls()).unwrap_or_default(),
            key_prefix: "test".into(),
            data_dir: dir.path().join("data"),
            lease_ttl: Duration::from_millis(500),
            ..StoreConfig::default()
        };
        let store = store::open(&config).await.unwrap();
        Some(TestStore {
            store,
            config,
            redis,
            cluster,
            dir,
        })
    }
}

pub struct Sim {
    pub sim: Arc<Simulator>,
    pub base_url: String,
    pub cancel: CancellationToken,
}

impl Sim {
    pub async fn start(config: SimConfig) -> Sim {
        let sim = Simulator::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/api", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        tokio::spawn(sim.clone().serve(listener, cancel.clone()));
        Sim {
            sim,
            base_url,
            cancel,
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The simulator with `patients` patients and a relay polling them
/// (`pages`, page size 100): how many tests begin.
pub async fn patients_relay(ts: &TestStore, patients: usize) -> (Sim, App) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), patients)],
        ..SimConfig::default()
    })
    .await;
    let sources = vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)];
    let app = App::spawn(ts, sources).await;
    (sim, app)
}

/// A source named `sim` over the given tables, with fast retries for tests.
pub fn source(base_url: &str, resources: &[&str], paging: Paging, page_size: u32) -> SourceConfig {
    SourceConfig {
        poll_interval: Duration::from_millis(50),
        page_size,
        paging,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        ..upstream("sim", base_url, resources)
    }
}

/// What the in-process relays run with: the test store and delivery
/// settings and `sources`.
pub fn config(store: &StoreConfig, sources: Vec<SourceConfig>) -> Config {
    ConfigBuilder::on(store).sources(sources).build()
}

pub fn relay(ts: &TestStore, sources: Vec<SourceConfig>) -> Relay {
    Relay::with_store(config(&ts.config, sources), ts.store.clone()).unwrap()
}

pub async fn all_events(store: &dyn Store, t: &Table) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let after = out.last().map(|e| e.id).unwrap_or_default();
        let page = store.read(t, after, 5000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Checks the exactly-once contract for one table against the simulator's
/// ground truth: no (record, stamp) twice, stamps rising per record, and the
/// last event per record carrying exactly the record's current JSON.
pub async fn assert_rebuilds(store: &dyn Store, t: &Table, sim: &Simulator) {
    let events = all_events(store, t).await;
    let mut pairs = HashSet::new();
    let mut last: HashMap<&str, &Event> = HashMap::new();
    for e in &events {
        assert!(
            pairs.insert((e.record.as_str(), e.stamp)),
            "{t}: duplicate event {} @ {}",
            e.record,
            e.stamp
        );
        if let Some(prev) = last.get(e.record.as_str()) {
            assert!(
                e.stamp > prev.stamp,
                "{t}: record {} went from stamp {} back to {}",
                e.record,
                prev.stamp,
                e.stamp
            );
            assert_eq!(
                e.prev,
                Some(prev.stamp),
                "{t}: prev of {} @ {}",
                e.record,
                e.stamp
            );
        } else {
            assert_eq!(e.prev, None);
        }
        last.insert(&e.record, e);
    }
    let truth = sim.state(&t.resource);
    let with_ids: Vec<&Value> = truth
        .iter()
        .filter(|r| r.get("uuid").is_some_and(Value::is_string))
        .collect();
    assert_eq!(
        last.len(),
        with_ids.len(),
        "{t}: records in the stream vs upstream"
    );
    for rec in with_ids {
        let id = rec["uuid"].as_str().unwrap();
        let e = last
            .get(id)
            .unwrap_or_else(|| panic!("{t}: record {id} never reached the stream"));
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            &data, rec,
            "{t}: record {id} differs from the upstream's final state"
        );
    }
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{t}: stream IDs not ascending"
    );
}

/// Polls until a poll appends nothing, failing after `max` polls.
pub async fn poll_until_quiet(relay: &mut Relay, max: usize) {
    let cancel = CancellationToken::new();
    for _ in 0..max {
        let mut appended = 0;
        for p in relay.pollers.iter_mut() {
            let r = p
                .poll_once(&cancel)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", p.table));
            appended += r.outcome.appended();
        }
        if appended == 0 {
            return;
        }
    }
    panic!("still appending after {max} polls");
}

/// A relay process killed when dropped, so a failing test leaves nothing
/// running behind it.
pub struct Proc(pub std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stamp-relay"))
}

/// Runs a test body on both stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::harness::{Backend, TestStore};
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    if let Some(ts) = TestStore::open(Backend::Redis).await {
                        super::$name(ts).await;
                    }
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(TestStore::open(Backend::Sqlite).await.unwrap()).await;
                }
            }
        )*
    };
}

/// How far a stream is behind the simulator's table.
#[derive(Debug)]
struct Catching {
    stream_at: StreamId,
    upstream_top: u64,
    indexed: u64,
    upstream_records: usize,
}

/// Waits until table `t` of `sim` is fully in the stream.
pub async fn wait_synced(store: &dyn Store, t: &Table, sim: &Simulator) {
    let look = async || {
        let state = sim.state(&t.resource);
        let top = state.iter().filter_map(|r| r["update_stamp"].as_u64());
        Catching {
            stream_at: store.last_id(t).await.unwrap(),
            upstream_top: top.max().unwrap_or(0),
            indexed: store.index_len(t).await.unwrap(),
            upstream_records: state.len(),
        }
    };
    let caught_up = |c: &Catching| {
        c.stream_at.stamp >= c.upstream_top && c.indexed as usize >= c.upstream_records
    };
    let what = format!("{t} to catch up with the simulator");
    wait_for(&what, Duration::from_secs(60), look, caught_up).await;
}
