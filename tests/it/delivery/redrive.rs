//! A redrive never sends a version older than one the receiver already
//! accepted: such dead letters are dropped and listed as `superseded`,
//! the others are delivered again.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::store::Table;
use stamp_relay_simulator::{self as simulator, Change};

use crate::harness::delivery::{assert_record_order, subscribe_to};
use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{TestStore, patients_relay, wait_for, wait_synced};
use crate::on_both_stores;

on_both_stores!(a_redrive_drops_dead_letters_a_newer_version_superseded);

async fn a_redrive_drops_dead_letters_a_newer_version_superseded(ts: TestStore) {
    let (sim, app) = patients_relay(&ts, 2).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(3).await;
    rx.set_mode(Mode::Flaky(1.0));
    let id = subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning"}),
    )
    .await;
    let dead = async || ts.store.dead_letters(&id).await.unwrap().len();
    wait_for(
        "both first versions dead",
        Duration::from_secs(20),
        dead,
        |n| *n == 2,
    )
    .await;
    // The receiver is back, and gets a newer version of one record.
    rx.set_mode(Mode::Ok);
    let changed = sim.sim.state("patients")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    sim.sim
        .apply(Change::new("patients", simulator::Op::Update).with_id(&changed))
        .unwrap();
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let newer = async || rx.events().len();
    wait_for(
        "the newer version delivered",
        Duration::from_secs(20),
        newer,
        |n| *n == 1,
    )
    .await;
    let path = format!("/v1/subscriptions/{id}/dead-letters/redrive");
    let r = app.post(&path, &json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    crate::harness::openapi::check_response(
        "POST",
        "/v1/subscriptions/{id}/dead-letters/redrive",
        200,
        "application/json",
        &v,
    );
    assert_eq!(v["redriven"], 1, "{v}");
    let superseded = v["superseded"].as_array().unwrap();
    assert_eq!(superseded.len(), 1, "{v}");
    assert!(superseded[0].as_str().unwrap().contains(&changed), "{v}");
    let metrics = app.get("/metrics").send().await.unwrap().text().await;
    let line = format!(r#"stamp_relay_delivery_superseded_total{{subscription="{id}"}} 1"#);
    assert!(metrics.unwrap().lines().any(|l| l == line), "no {line}");
    // Every other version arrives; the superseded one never does.
    let kept: Vec<_> = event_ids(&ts, &t)
        .await
        .into_iter()
        .filter(|e| !superseded.contains(&json!(e)))
        .collect();
    let look = async || {
        let got = rx.event_ids();
        kept.iter().all(|k| got.contains(k))
    };
    wait_for(
        "the other dead letter delivered",
        Duration::from_secs(20),
        look,
        |d| *d,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !rx.event_ids()
            .contains(&superseded[0].as_str().unwrap().to_string())
    );
    assert_record_order(&rx.events());
    assert!(ts.store.dead_letters(&id).await.unwrap().is_empty());
    app.stop().await;
}

/// The CloudEvents ids of every event of `t`.
async fn event_ids(ts: &TestStore, t: &Table) -> Vec<String> {
    crate::harness::all_events(ts.store.as_ref(), t)
        .await
        .iter()
        .map(|e| format!("{}:{}:{}:{}", t.source, t.resource, e.record, e.stamp))
        .collect()
}
