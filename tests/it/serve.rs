//! `serve` as a user runs it: health and readiness on `api.listen`,
//! continuous polling, and a clean exit on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use stamp_relay::{
    simulator::{SimConfig, Simulator},
    store::{Store, Target, sqlite::SqliteStore},
};

use crate::harness::{Sim, assert_rebuilds, bin, free_port};

async fn wait_for(url: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            return r;
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until_synced(store: &dyn Store, t: &Target, sim: &Simulator) {
    let want = sim.state(&t.resource).len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.index_len(t).await.unwrap() < want {
        assert!(Instant::now() < deadline, "{t} did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [[sources]]\nname = \"sim\"\nbase_url = \"{}\"\nresources = [\"patients\"]\npoll_interval = \"100ms\"\n",
            dir.path().join("data").display(),
            sim.base_url
        ),
    )
    .unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = wait_for(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["targets"][0]["target"], "sim/patients");

    let store = SqliteStore::open(&dir.path().join("data")).unwrap();
    let t = Target::new("sim", "patients");
    wait_until_synced(&store, &t, &sim.sim).await;
    // Changes keep flowing while it serves.
    sim.sim.random_writes(Some("patients"), 25);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = store.last_id(&t).await.unwrap();
        let top = sim
            .sim
            .state("patients")
            .iter()
            .filter_map(|r| r["update_stamp"].as_u64())
            .max()
            .unwrap();
        if last.stamp >= top {
            break;
        }
        assert!(Instant::now() < deadline, "serve stopped following changes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
