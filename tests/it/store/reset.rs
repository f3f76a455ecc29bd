//! A store that loses its data under a running relay (poller/epoch.rs):
//! Redis wiped by `FLUSHALL`, or the embedded store's file replaced. The
//! relay says so (`/readyz`, metrics, `GET /v1/resources`) and reloads every
//! table as an initial load, never inventing `snapshot=0` changes.

use std::{collections::HashSet, time::Duration};

use stamp_relay::{config::Paging, events::Op, store::Table};
use stamp_relay_simulator::{SimConfig, Simulator};

use crate::harness::wipe::wipe;
use crate::harness::{
    App, Sim, TestStore, all_events, assert_rebuilds, eventually, source, wait_synced,
};
use crate::on_both_stores;

on_both_stores!(a_store_that_loses_its_data_is_reloaded_as_a_snapshot);

/// The `store_reset:` parts of a `/readyz` answer.
fn reset_parts(ready: &serde_json::Value) -> Vec<serde_json::Value> {
    ready["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("store_reset:"))
        .cloned()
        .collect()
}

fn ids(sim: &Simulator, table: &str) -> HashSet<String> {
    sim.state(table)
        .iter()
        .map(|r| r["uuid"].as_str().unwrap().to_string())
        .collect()
}

async fn a_store_that_loses_its_data_is_reloaded_as_a_snapshot(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 9,
        initial: vec![("patients".into(), 120)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    )
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim.random_writes(Some("patients"), 10);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert!(reset_parts(&app.get_json("/readyz").await).is_empty());

    wipe(&ts).await;
    let known = ids(&sim.sim, "patients");
    eventually("the reset reload", Duration::from_secs(30), async || {
        let r = app.get_json("/v1/resources").await;
        let p = &r["resources"][0];
        p["store_resets"].as_u64() >= Some(1) && p["reloading"] == false
    })
    .await;
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let events = all_events(ts.store.as_ref(), &t).await;
    assert_eq!(events.len(), known.len(), "one event per record, reloaded");
    // Archived records reload as `deleted` (src/events.rs, classify).
    let archived = |e: &stamp_relay::events::Event| {
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        !data["deleted_at"].is_null()
    };
    assert!(
        events.iter().all(|e| e.snapshot
            && e.prev.is_none()
            && e.op
                == if archived(e) {
                    Op::Deleted
                } else {
                    Op::Created
                }),
        "the reload is a snapshot, not invented changes"
    );

    // Then changes flow as before, and only new records are `created`.
    let writes = sim.sim.random_writes(Some("patients"), 20);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let after = all_events(ts.store.as_ref(), &t).await;
    for e in after.iter().filter(|e| !e.snapshot) {
        assert!(
            e.op != Op::Created || !known.contains(&e.record),
            "{} was announced as created again",
            e.record
        );
    }
    assert!(
        after.len() > events.len(),
        "{} writes left no event",
        writes.len()
    );
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;

    let ready = app.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        reset_parts(&ready),
        [serde_json::json!({"name": "store_reset:sim/patients", "ready": true})],
        "{ready}"
    );
    let metrics = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"stamp_relay_store_resets_total{source="sim",resource="patients"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}
