//! An upstream that went back in time (poller/rebase.rs): the simulator
//! restarted with the same seed, its stamps back below the relay's cursor.
//! The relay says so (`UPSTREAM RESET`, a metric, the table's alerts) and,
//! by `on_upstream_reset`, reloads the table as a snapshot so later changes
//! arrive, or pauses it.

use std::time::Duration;

use serde_json::json;
use stamp_relay::{
    config::{OnUpstreamReset, Paging},
    events::Op,
    store::Table,
};
use stamp_relay_simulator::{Change, Op as SimOp, Order, SimConfig};

use crate::harness::{App, Sim, TestStore, all_events, eventually, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(
    a_reset_upstream_is_reloaded_and_later_changes_arrive,
    a_reset_keyset_upstream_is_reloaded_and_later_changes_arrive,
    a_paused_table_appends_nothing_after_an_upstream_reset
);

/// A relay on a simulator whose table went from 40 records to more, at a
/// cursor well above the initial top; then the simulator restarts.
async fn reset_upstream(
    ts: &TestStore,
    on_reset: OnUpstreamReset,
    paging: Paging,
) -> (Sim, App, u64) {
    let sim = Sim::start(SimConfig {
        seed: 23,
        initial: vec![("patients".into(), 40)],
        order: Order::Stamp,
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["patients"], paging, 50);
    src.on_upstream_reset = on_reset;
    let app = App::spawn(ts, vec![src]).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let initial_top = ts.store.last_id(&t).await.unwrap().stamp;
    for i in 0..30 {
        sim.sim
            .apply(Change::new("patients", SimOp::Create).with_id(&format!("new-{i}")))
            .unwrap();
    }
    sim.sim.random_writes(Some("patients"), 60);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim.restart();
    (sim, app, initial_top)
}

async fn a_reset_upstream_is_reloaded_and_later_changes_arrive(ts: TestStore) {
    reloaded_and_later_changes_arrive(ts, Paging::Pages).await;
}

/// Keyset pages are committed as they come, so the reset shows at the
/// poll's end; the reload is the same.
async fn a_reset_keyset_upstream_is_reloaded_and_later_changes_arrive(ts: TestStore) {
    reloaded_and_later_changes_arrive(ts, Paging::Keyset).await;
}

async fn reloaded_and_later_changes_arrive(ts: TestStore, paging: Paging) {
    let (sim, app, initial_top) = reset_upstream(&ts, OnUpstreamReset::Resnapshot, paging).await;
    let t = Table::new("sim", "patients");
    let cursor = ts.store.last_id(&t).await.unwrap().stamp;
    assert!(
        cursor > initial_top + 50,
        "the relay's cursor {cursor} is far above the upstream's top {initial_top}"
    );
    eventually("the reset reported", Duration::from_secs(30), async || {
        let r = app.get_json("/v1/resources").await;
        r["resources"][0]["alerts"]["upstream_reset"]["count"].as_u64() == Some(1)
    })
    .await;
    // The reload: every upstream record at its upstream version, every
    // record created since the restored copy `deleted`.
    let upstream = sim.sim.state("patients");
    eventually("the reload", Duration::from_secs(30), async || {
        for r in &upstream {
            let id = r["uuid"].as_str().unwrap();
            let e = ts.store.index_entry(&t, id).await.unwrap();
            if e.map(|e| e.stamp) != r["update_stamp"].as_u64() {
                return false;
            }
        }
        for i in 0..30 {
            let e = ts.store.index_entry(&t, &format!("new-{i}")).await.unwrap();
            if !e.is_some_and(|e| e.deleted) {
                return false;
            }
        }
        true
    })
    .await;
    let events = all_events(ts.store.as_ref(), &t).await;
    let gone = events.iter().rfind(|e| e.record == "new-0").unwrap();
    assert_eq!((gone.op, gone.stamp, gone.snapshot), (Op::Deleted, 0, true));
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));

    // A later change, with a stamp far below the stream's top, arrives.
    let id = upstream[3]["uuid"].as_str().unwrap().to_string();
    let fields = json!({"first_name": "After-the-reset"});
    let changed = sim
        .sim
        .apply(
            Change::new("patients", SimOp::Update)
                .with_id(&id)
                .with_fields(fields),
        )
        .unwrap();
    assert!(changed.stamp < cursor);
    eventually("the later change", Duration::from_secs(30), async || {
        let events = all_events(ts.store.as_ref(), &t).await;
        events.iter().any(|e| {
            e.record == id && e.stamp == changed.stamp && e.op == Op::Updated && !e.snapshot
        })
    })
    .await;
    assert!(app.table_counter("upstream_resets").await.ends_with(" 1"));
    app.stop().await;
}

async fn a_paused_table_appends_nothing_after_an_upstream_reset(ts: TestStore) {
    let (sim, app, _) = reset_upstream(&ts, OnUpstreamReset::Pause, Paging::Pages).await;
    let t = Table::new("sim", "patients");
    let before = ts.store.stream_len(&t).await.unwrap();
    eventually("the pause reported", Duration::from_secs(30), async || {
        let r = app.get_json("/v1/resources").await;
        let p = &r["resources"][0];
        p["alerts"]["upstream_reset"]["count"].as_u64() == Some(1)
            && p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("UPSTREAM RESET"))
    })
    .await;
    sim.sim.random_writes(Some("patients"), 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ts.store.stream_len(&t).await.unwrap(),
        before,
        "a paused table appends nothing"
    );
    app.stop().await;
}
