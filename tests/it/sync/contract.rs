//! Upstreams that break the contract of docs/upstream.md are reported, never
//! silently (poller/breaks.rs, docs/sync.md "What the relay detects"): a
//! stamp below a record's last one is a regression counted apart from
//! duplicates, on both stores alike; rows removed show as a shrinking count
//! and as records a sweep no longer finds, which `hard_deletes = "emit"`
//! sends as `deleted`; a counter shared with other tables shows as sparse
//! stamps. Each has its own metric and alert mark.

use std::time::Duration;

use stamp_relay::{
    config::{HardDeletes, Paging},
    events::Op,
    record::UpstreamRecord,
    store::Table,
};
use stamp_relay_simulator::{Faults, SimConfig};

use crate::harness::{
    App, Sim, TestStore, all_events, append_as, eventually, leased_table, record, source,
    wait_synced,
};
use crate::on_both_stores;

on_both_stores!(
    both_stores_count_a_lower_stamp_as_a_regression,
    a_record_shown_with_a_lower_stamp_is_reported,
    a_shared_counter_is_reported,
    removed_rows_are_reported_and_emitted_as_deleted
);

async fn both_stores_count_a_lower_stamp_as_a_regression(ts: TestStore) {
    let (t, epoch) = leased_table(&ts, "sim", "patients").await;
    let append = async |r: UpstreamRecord| append_as(&ts, &t, "me", &epoch, &[r]).await.unwrap();
    assert_eq!(append(record("a", 5)).await.created, 1);
    let older = append(record("a", 3)).await;
    assert_eq!(
        (older.regressions, older.duplicates, older.appended()),
        (1, 0, 0)
    );
    let again = append(record("a", 5)).await;
    assert_eq!((again.regressions, again.duplicates), (0, 1));
}

/// A relay over a simulator of 40 patients, polled `pages` with 10 a page.
async fn relay(
    ts: &TestStore,
    tweak: impl FnOnce(&mut stamp_relay::config::SourceConfig),
) -> (Sim, App) {
    let sim = Sim::start(SimConfig {
        seed: 5,
        initial: vec![("patients".into(), 40)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 10);
    tweak(&mut src);
    let app = App::spawn(ts, vec![src]).await;
    wait_synced(ts.store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;
    (sim, app)
}

async fn alert_count(app: &App, kind: &str) -> u64 {
    let r = app.get_json("/v1/resources").await;
    r["resources"][0]["alerts"][kind]["count"]
        .as_u64()
        .unwrap_or(0)
}

async fn a_record_shown_with_a_lower_stamp_is_reported(ts: TestStore) {
    let (sim, app) = relay(&ts, |_| {}).await;
    let state = sim.sim.state("patients");
    let r = &state[5];
    let (id, stamp) = (
        r["uuid"].as_str().unwrap(),
        r["update_stamp"].as_u64().unwrap(),
    );
    assert!(sim.sim.restamp("patients", id, stamp - 1).unwrap());
    eventually(
        "the regression reported",
        Duration::from_secs(30),
        async || alert_count(&app, "stamp_regression").await >= 1,
    )
    .await;
    // Counted on each sighting: a re-read by the overlap or the sweep after
    // the load may count the same regression again.
    let line = app.table_counter("stamp_regressions").await;
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{line}");
    let entry = ts
        .store
        .index_entry(&Table::new("sim", "patients"), id)
        .await
        .unwrap();
    assert_eq!(
        entry.unwrap().stamp,
        stamp,
        "the older version was not appended"
    );
    app.stop().await;
}

async fn removed_rows_are_reported_and_emitted_as_deleted(ts: TestStore) {
    let (sim, app) = relay(&ts, |s| {
        s.hard_deletes = HardDeletes::Emit;
        s.reconcile_interval = Some(Duration::from_millis(300));
    })
    .await;
    let t = Table::new("sim", "patients");
    let before: Vec<String> = sim.sim.state("patients")[..3]
        .iter()
        .map(|r| r["uuid"].as_str().unwrap().to_string())
        .collect();
    // Three list requests in a row each remove the oldest record first: a
    // walk of four pages sees its count shrink.
    sim.sim.set_faults(Faults {
        hard_delete_next: 3,
        ..Faults::default()
    });
    // Only a poll's walk compares counts (a sweep's does not): should the
    // three removals fall between walks, or into a sweep, remove three more.
    eventually(
        "the shrinking count reported",
        Duration::from_secs(30),
        async || {
            if sim.sim.faults().hard_delete_next == 0 {
                sim.sim.set_faults(Faults {
                    hard_delete_next: 3,
                    ..Faults::default()
                });
            }
            alert_count(&app, "count_shrank").await >= 1
        },
    )
    .await;
    sim.sim.set_faults(Faults::default());
    app.table_counter("upstream_count_shrinks").await;
    eventually("the sweep's deletes", Duration::from_secs(30), async || {
        let events = all_events(ts.store.as_ref(), &t).await;
        before.iter().all(|id| {
            events
                .iter()
                .any(|e| &e.record == id && e.op == Op::Deleted && e.stamp == 0 && !e.snapshot)
        })
    })
    .await;
    // The marks reach the status with the next poll.
    eventually(
        "the hard deletes marked",
        Duration::from_secs(30),
        async || alert_count(&app, "hard_deletes").await >= 3,
    )
    .await;
    app.table_counter("hard_deletes").await;
    app.stop().await;
}

async fn a_shared_counter_is_reported(ts: TestStore) {
    let (sim, app) = relay(&ts, |_| {}).await;
    sim.sim.skip_stamps("patients", 100_000).unwrap();
    sim.sim.random_writes(Some("patients"), 1);
    eventually(
        "the sparse stamps reported",
        Duration::from_secs(30),
        async || alert_count(&app, "sparse_stamps").await >= 1,
    )
    .await;
    app.table_counter("sparse_stamps").await;
    app.stop().await;
}
