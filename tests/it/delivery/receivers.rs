//! The receivers of docs/webhooks.md ("Writing a receiver") against a real
//! relay: the Python one, `docs/receivers/receiver.py`, verifying with the
//! official `standardwebhooks` library, must end holding exactly the
//! upstream's records while deliveries are batched and retried. Without
//! python3 and the library the test is skipped, unless
//! `STAMP_RELAY_REQUIRE_PYTHON=1` (which `.ci/run` sets after installing it).

use std::{collections::BTreeMap, process::Command, time::Duration};

use serde_json::{Value, json};
use stamp_relay::config::Paging;
use stamp_relay_simulator::{Change, Op, SimConfig};

use crate::harness::{App, Backend, Proc, Sim, TestStore, free_port, source, wait_for};

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("STAMP_RELAY_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(
        ok || !required,
        "STAMP_RELAY_REQUIRE_PYTHON=1 but python3 with standardwebhooks is missing (pip install standardwebhooks)"
    );
    if !ok {
        eprintln!("skipped: python3 with the standardwebhooks package is not installed");
    }
    ok
}

/// record id -> stamp, deleted: what the upstream holds.
fn upstream_state(sim: &Sim, table: &str) -> BTreeMap<String, (u64, bool)> {
    sim.sim
        .state(table)
        .into_iter()
        .map(|r| {
            let id = r["uuid"].as_str().unwrap().to_string();
            let stamp = r["update_stamp"].as_u64().unwrap();
            (id, (stamp, !r["deleted_at"].is_null()))
        })
        .collect()
}

/// record id -> stamp, deleted: what the receiver's state file holds.
fn receiver_state(path: &std::path::Path, table: &str) -> BTreeMap<String, (u64, bool)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    v[table]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, r)| {
            let stamp = r["stamp"].as_u64().unwrap();
            (id.clone(), (stamp, r["deleted"].as_bool().unwrap()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_receiver_ends_with_the_upstreams_records() {
    if !python_ready() {
        return;
    }
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 60)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 25)],
    )
    .await;
    let port = free_port();
    let body = json!({"url": format!("http://127.0.0.1:{port}/hook"), "resources": ["sim/patients"],
        "start": "beginning", "batch_size": 7, "enabled": false});
    let sub: Value = app.post_json("/v1/subscriptions", &body).await;
    let id = sub["id"].as_str().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let state = dir.path().join("records.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/receivers/receiver.py");
    let _rx = Proc(
        Command::new("python3")
            .arg(script)
            .env("WEBHOOK_SECRET", sub["secret"].as_str().unwrap())
            .env("PORT", port.to_string())
            .env("STATE_FILE", &state)
            .spawn()
            .expect("python3 starts"),
    );
    assert_eq!(app.set_enabled(id, true).await.status(), 200);
    // Changes while the initial load is delivered: updates, deletes and a restore.
    sim.sim.random_writes(Some("patients"), 40);
    let some = upstream_state(&sim, "patients").into_keys().next().unwrap();
    for op in [Op::Delete, Op::Restore, Op::Update] {
        sim.sim
            .apply(Change::new("patients", op).with_id(&some))
            .unwrap();
    }
    // The last difference seen is in the failure message.
    wait_for(
        "the receiver to hold the upstream's records",
        Duration::from_secs(60),
        async || {
            let (got, want) = (
                receiver_state(&state, "patients"),
                upstream_state(&sim, "patients"),
            );
            let differs = |(k, v): &(&String, &(u64, bool))| got.get(*k) != Some(*v);
            let first = want
                .iter()
                .find(differs)
                .map(|(k, v)| (k.clone(), *v, got.get(k).copied()));
            (got.len(), want.len(), first)
        },
        |(got, want, first)| got == want && first.is_none(),
    )
    .await;
    app.stop().await;
}
