//! `serve` as a user runs it: health and readiness on `api.listen`,
//! continuous polling, and a clean exit on SIGTERM.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use stamp_relay::{
    config::{Paging, SourceConfig},
    store::{Store, Table, sqlite::SqliteStore},
};
use stamp_relay_simulator::SimConfig;

use crate::harness::{
    Api, ConfigBuilder, Proc, Sim, assert_rebuilds, eventually, free_port, serve, upstream,
    wait_for, wait_synced,
};

/// The simulator's patients, polled every 100 ms.
fn polled_often(sim: &Sim) -> SourceConfig {
    SourceConfig {
        poll_interval: Duration::from_millis(100),
        ..upstream("sim", &sim.base_url, &["patients"])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_polls_reports_ready_and_stops_on_sigterm() {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 300)],
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let cfg = ConfigBuilder::new()
        .data_dir(dir.path().join("data"))
        .listen(port)
        .source(polled_often(&sim))
        .write(&dir.path().join("relay.toml"));
    let mut child = serve(&cfg).spawn().map(Proc).unwrap();
    let api = Api::local(port, "");
    api.wait_healthy().await;
    let ready = api.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    let parts = body["parts"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["store", "poller:sim/patients"]);
    assert!(parts.iter().all(|p| p["ready"] == true), "{body}");

    let store = SqliteStore::open(&dir.path().join("data")).unwrap();
    let t = Table::new("sim", "patients");
    wait_synced(&store, &t, &sim.sim).await;
    // Changes keep flowing while it serves.
    sim.sim.random_writes(Some("patients"), 25);
    wait_synced(&store, &t, &sim.sim).await;

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_rebuilds(&store, &t, &sim.sim).await;
}

/// SIGTERM in the middle of a large load and of deliveries to a slow
/// receiver: the process exits 0 within the deadline, and a restart
/// finishes both with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_and_mid_delivery_then_restart() {
    use crate::harness::receiver::{Mode, TestReceiver};
    let sim = Sim::start(SimConfig {
        order: stamp_relay_simulator::Order::Stamp,
        initial: vec![("patients".into(), 30_000)],
        ..SimConfig::default()
    })
    .await;
    let rx = TestReceiver::start(51).await;
    rx.set_mode(Mode::Ok);
    // Slow for real: 20 ms a request, so SIGTERM meets requests in flight.
    rx.set_delay(Duration::from_millis(20));
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let cfg = ConfigBuilder::new()
        .data_dir(dir.path().join("data"))
        .store(|s| s.lease_ttl = Duration::from_secs(1))
        .listen(port)
        .admin_token_env("SR_TERM_ADMIN")
        .delivery(|d| {
            d.allow_private_targets = true;
            d.request_timeout = Duration::from_millis(500);
        })
        .source(SourceConfig {
            paging: Paging::Keyset,
            page_size: 100,
            ..polled_often(&sim)
        })
        .write(&dir.path().join("relay.toml"));
    let spawn = || {
        serve(&cfg)
            .env("SR_TERM_ADMIN", "term-admin-token-0001")
            .spawn()
            .map(Proc)
            .unwrap()
    };
    let term = |child: &mut std::process::Child| {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        let status = child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "shutdown took {:?}",
            started.elapsed()
        );
    };
    let store = SqliteStore::open(&dir.path().join("data")).unwrap();
    let t = Table::new("sim", "patients");

    // 1. SIGTERM while the initial load is under way.
    let mut child = spawn();
    eventually("the load to start", Duration::from_secs(30), async || {
        store.stream_len(&t).await.unwrap() >= 2000
    })
    .await;
    term(&mut child);
    assert!(
        store.stream_len(&t).await.unwrap() < 30_000,
        "the load finished before SIGTERM"
    );

    // 2. A restart finishes the load; then SIGTERM while delivering.
    let mut child = spawn();
    wait_synced(&store, &t, &sim.sim).await;
    let api = Api::local(port, "term-admin-token-0001");
    api.wait_healthy().await;
    let body =
        serde_json::json!({"url": rx.url, "resources": ["*"], "start": {"sim/patients": 29_000}});
    let created = api.post_json("/v1/subscriptions", &body).await;
    rx.set_secrets(&[created["secret"].as_str().unwrap()]);
    eventually("deliveries to start", Duration::from_secs(30), async || {
        rx.event_ids().len() >= 50
    })
    .await;
    term(&mut child);
    assert!(
        rx.event_ids().len() < 1000,
        "deliveries finished before SIGTERM"
    );

    // 3. A restart delivers the rest.
    let mut child = spawn();
    // Event ids end in `:<stamp>`.
    let missing = async || {
        let ids = rx.event_ids();
        let got: HashSet<&str> = ids.iter().filter_map(|id| id.rsplit(':').next()).collect();
        (29_001..=30_000u64)
            .filter(|s| !got.contains(s.to_string().as_str()))
            .count()
    };
    let what = "the deliveries to finish after the restart (events missing)";
    wait_for(what, Duration::from_secs(60), missing, |n| *n == 0).await;
    term(&mut child);
    assert_rebuilds(&store, &t, &sim.sim).await;
    crate::harness::delivery::assert_record_order(&rx.events());
}
