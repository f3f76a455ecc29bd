//! The topology at run time: a source added to a running relay is polled
//! and served without a restart; a source removed stops polling while its
//! stream stays in the store.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use stamp_relay::{
    config::{Paging, Source},
    store::Table,
    topology::Origin,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::{App, Sim, TestStore, all_events, config, eventually, patients_relay, source};
use crate::on_both_stores;

on_both_stores!(
    a_source_added_at_run_time_is_polled_and_served,
    a_removed_source_stops_polling_and_keeps_its_stream,
    a_nudge_polls_a_source_now
);

/// A second upstream with `n` assessments, as the validated source `clinic`.
async fn clinic(ts: &TestStore, n: usize) -> (Sim, Source) {
    clinic_every(ts, n, Duration::from_millis(50)).await
}

/// The tests add sources to the topology directly, as the file's would be:
/// one added as `Origin::Api` without its stored document is removed again
/// by the source sync (`sources/sync.rs`), which follows the store.
async fn clinic_every(ts: &TestStore, n: usize, interval: Duration) -> (Sim, Source) {
    let sim = Sim::start(SimConfig {
        initial: vec![("assessments".into(), n)],
        ..SimConfig::default()
    })
    .await;
    let mut raw = source(&sim.base_url, &["assessments"], Paging::Pages, 100);
    raw.name = "clinic".into();
    raw.poll_interval = interval;
    // No sweep after the load, which could fetch a later write itself.
    raw.reconcile_after_load = false;
    let validated = config(&ts.config, vec![raw]).sources.remove(0);
    (sim, validated)
}

async fn replayed(app: &App, t: &str) -> Option<usize> {
    let r = app
        .get(&format!("/v1/resources/{t}/events"))
        .send()
        .await
        .unwrap();
    if !r.status().is_success() {
        return None;
    }
    let body: serde_json::Value = r.json().await.unwrap();
    Some(body["events"].as_array().unwrap().len())
}

async fn a_source_added_at_run_time_is_polled_and_served(ts: TestStore) {
    let (_sim, app) = patients_relay(&ts, 3).await;
    let (_clinic, added) = clinic(&ts, 7).await;
    assert_eq!(
        replayed(&app, "clinic/assessments").await,
        None,
        "unknown before"
    );
    app.topology.add_source(added, Origin::Config).unwrap();
    eventually(
        "the added source's records replayed",
        Duration::from_secs(20),
        async || replayed(&app, "clinic/assessments").await == Some(7),
    )
    .await;
    let listed = app.get_json("/v1/resources").await;
    assert!(
        listed["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["source"] == "clinic" && r["resource"] == "assessments"),
        "{listed}"
    );
    let compat = app
        .get("/compat/clinic/api/assessments/?sync=0")
        .send()
        .await
        .unwrap();
    assert_eq!(compat.status(), 200);
    assert_eq!(
        compat.json::<serde_json::Value>().await.unwrap()["count"],
        7
    );
    app.stop().await;
}

async fn a_removed_source_stops_polling_and_keeps_its_stream(ts: TestStore) {
    let (_sim, app) = patients_relay(&ts, 3).await;
    let (clinic, added) = clinic(&ts, 5).await;
    app.topology.add_source(added, Origin::Config).unwrap();
    let t = Table::new("clinic", "assessments");
    eventually(
        "the added source loaded",
        Duration::from_secs(20),
        async || all_events(ts.store.as_ref(), &t).await.len() == 5,
    )
    .await;
    let polling = clinic.sim.traffic().total;
    eventually("polls keep coming", Duration::from_secs(20), async || {
        clinic.sim.traffic().total > polling
    })
    .await;
    let table = app.topology.table(&t).unwrap();
    app.topology.remove_source("clinic").unwrap();
    assert!(table.gone.is_cancelled());
    // The scheduler drops the table; a poll running then ends and lets go
    // of the lease; none starts after it.
    eventually("the poller retired", Duration::from_secs(20), async || {
        let st = &table.status;
        !st.running.load(Relaxed) && !st.holds_lease.load(Relaxed)
    })
    .await;
    eventually(
        "no request in flight",
        Duration::from_secs(20),
        async || clinic.sim.traffic().in_flight == 0,
    )
    .await;
    let stopped = clinic.sim.traffic().total;
    // Twenty poll intervals (50 ms) with no request.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(clinic.sim.traffic().total, stopped, "polled after removal");
    assert_eq!(replayed(&app, "clinic/assessments").await, None);
    assert_eq!(
        all_events(ts.store.as_ref(), &t).await.len(),
        5,
        "the stream stays"
    );
    assert!(app.topology.source("clinic").is_none());
    app.stop().await;
}

/// A source polled hourly: added, it loads at once; a write then arrives
/// only because a nudge makes its tables due now.
async fn a_nudge_polls_a_source_now(ts: TestStore) {
    let (_sim, app) = patients_relay(&ts, 3).await;
    // The scheduler spreads the tables it finds at its start over their
    // interval (an hour here); one added after that is due at once. Wait
    // until it has started, shown by the first table's load.
    let patients = Table::new("sim", "patients");
    eventually(
        "the scheduler started",
        Duration::from_secs(20),
        async || all_events(ts.store.as_ref(), &patients).await.len() == 3,
    )
    .await;
    let (clinic, added) = clinic_every(&ts, 4, Duration::from_secs(3600)).await;
    app.topology.add_source(added, Origin::Config).unwrap();
    let t = Table::new("clinic", "assessments");
    eventually(
        "the added source loaded",
        Duration::from_secs(20),
        async || all_events(ts.store.as_ref(), &t).await.len() == 4,
    )
    .await;
    let written = clinic.sim.random_writes(Some("assessments"), 2);
    let top = written.iter().map(|w| w.stamp).max().unwrap();
    app.topology.nudge("clinic").unwrap();
    eventually(
        "the nudged poll brings the writes",
        Duration::from_secs(20),
        async || {
            all_events(ts.store.as_ref(), &t)
                .await
                .last()
                .is_some_and(|e| e.stamp >= top)
        },
    )
    .await;
    assert!(app.topology.nudge("nowhere").is_err());
    app.stop().await;
}
