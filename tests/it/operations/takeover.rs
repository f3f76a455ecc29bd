//! Per-record order through crashes: relay processes killed with SIGKILL
//! while they deliver to a slow receiver that fails 30 % of requests, with
//! many requests in flight; alone on either store, and as two instances
//! sharing Redis that take over from each other.

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde_json::{Value, json};
use stamp_relay::{
    config::SourceConfig,
    store::{Store, Table},
};
use stamp_relay_simulator::{Order, SimConfig};

use crate::harness::delivery::{assert_record_order, wait_delivered};
use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{
    Api, Backend, ConfigBuilder, Proc, Sim, TestStore, all_events, eventually, free_port, serve,
    upstream, wait_synced,
};

/// Fourteen retries: with 30 % of requests failing, an event is
/// dead-lettered with odds 0.3^15 (about 1e-8), negligible for ~500 events.
fn retries() -> Vec<Duration> {
    let mut delays = [10, 20, 50].map(Duration::from_millis).to_vec();
    delays.resize(14, Duration::from_millis(100));
    delays
}

fn write_config(ts: &TestStore, sim: &str, port: u16) -> PathBuf {
    let source = SourceConfig {
        poll_interval: Duration::from_millis(100),
        ..upstream("sim", sim, &["patients"])
    };
    ConfigBuilder::on(&ts.config)
        .listen(port)
        .admin_token_env("SR_TEST_ADMIN")
        .delivery(|d| d.retry_schedule = retries())
        .source(source)
        .write(&ts.dir.path().join(format!("relay-{port}.toml")))
}

fn spawn(cfg: &std::path::Path) -> Proc {
    serve(cfg)
        .env("SR_TEST_ADMIN", "takeover-admin-secret")
        .spawn()
        .map(Proc)
        .unwrap()
}

/// Creates a subscription from the beginning through the first instance,
/// once it listens.
async fn subscribe(ports: &[u16], rx: &TestReceiver) -> Value {
    let api = Api::local(ports[0], "takeover-admin-secret");
    api.wait_healthy().await;
    let body = json!({"url": rx.url, "resources": ["*"], "start": "beginning"});
    api.post_json("/v1/subscriptions", &body).await
}

/// `instances` relays on one store; three times, once deliveries are under
/// way, one of them (in turn) is killed with SIGKILL and started again.
async fn kills_keep_record_order(ts: &TestStore, instances: usize) {
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), 400)],
        ..SimConfig::default()
    })
    .await;
    let rx = TestReceiver::start(9).await;
    let ports: Vec<u16> = (0..instances).map(|_| free_port()).collect();
    let cfgs: Vec<_> = ports
        .iter()
        .map(|p| write_config(ts, &sim.base_url, *p))
        .collect();
    let mut children: Vec<Proc> = cfgs.iter().map(|c| spawn(c)).collect();
    let created = subscribe(&ports, &rx).await;
    rx.set_secrets(&[created["secret"].as_str().unwrap()]);
    rx.set_mode(Mode::Flaky(0.3));
    rx.set_delay(Duration::from_millis(20));
    for kill in 0..3 {
        let before = rx.event_ids().len();
        eventually("deliveries to go on", Duration::from_secs(20), async || {
            rx.event_ids().len() > before
        })
        .await;
        let i = kill % instances;
        children[i].kill().unwrap();
        children[i].wait().unwrap();
        sim.sim.random_writes(Some("patients"), 30);
        children[i] = spawn(&cfgs[i]);
    }
    let store: Arc<dyn Store> = ts.store.clone();
    let t = Table::new("sim", "patients");
    wait_synced(store.as_ref(), &t, &sim.sim).await;
    let within = Duration::from_secs(60);
    wait_delivered(store.as_ref(), &rx, std::slice::from_ref(&t), within).await;
    assert!(all_events(store.as_ref(), &t).await.len() >= 400);
    let requests = rx.inner.lock().unwrap().requests;
    assert!(
        requests > rx.event_ids().len(),
        "the receiver never failed; the test proves nothing"
    );
    assert_record_order(&rx.events());
    for mut child in children {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_keeps_record_order_sqlite() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    kills_keep_record_order(&ts, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_keeps_record_order_redis() {
    if let Some(ts) = TestStore::open(Backend::Redis).await {
        kills_keep_record_order(&ts, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_take_over_deliveries_in_record_order() {
    if let Some(ts) = TestStore::open(Backend::Redis).await {
        kills_keep_record_order(&ts, 2).await;
    }
}
