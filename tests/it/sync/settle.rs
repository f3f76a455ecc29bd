//! No version lost whatever the timing (poller/walk.rs, poller/reconcile.rs):
//! settle walks over a slow upstream that edits records in place while the
//! relay pages, reconcile sweeps, and keyset pages with repeated rows.

use std::time::Duration;

use serde_json::Value;
use stamp_relay::{config::Paging, poller::PollError, store::Table};
use stamp_relay_simulator::{Change, Faults, Op, Order, SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    App, Sim, TestStore, all_events, assert_rebuilds, eventually, poll_until_quiet, relay, seeds,
    source, wait_synced,
};
use crate::on_both_stores;

on_both_stores!(
    edits_in_place_during_slow_walks,
    reconcile_repairs_what_the_polls_missed,
    a_requested_sweep_runs_in_the_serving_relay,
    keyset_pages_with_a_repeated_row,
    a_keyset_poll_chasing_writes_keeps_a_late_commit,
    a_sweep_after_the_load_repairs_counts_from_another_snapshot,
);

fn top(sim: &Simulator, table: &str) -> u64 {
    sim.state(table)
        .iter()
        .filter_map(|r| r["update_stamp"].as_u64())
        .max()
        .unwrap_or(0)
}

/// A slow, name-ordered upstream edits records in place before every page,
/// so each walk issues far more stamps than `overlap` re-reads: versions
/// written behind the walk sit below the highest stamp it saw. Settling
/// keeps every one: across seeds, the stream rebuilds the final state.
async fn edits_in_place_during_slow_walks(ts: TestStore) {
    const OVERLAP: u64 = 5;
    let mut settle_pages = 0;
    for seed in 0..seeds() {
        let sim = Sim::start(SimConfig {
            seed,
            order: Order::Name,
            initial: vec![("patients".into(), 200)],
            ..SimConfig::default()
        })
        .await;
        let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 10);
        src.overlap = OVERLAP;
        src.max_walks = 10;
        let mut cfg_store = ts.config.clone();
        cfg_store.key_prefix = format!("settle{seed}");
        cfg_store.data_dir = ts.dir.path().join(format!("settle{seed}"));
        let mut relay = stamp_relay::app::Relay::with_store(
            crate::harness::config(&cfg_store, vec![src]),
            stamp_relay::store::open(&cfg_store).await.unwrap(),
        )
        .unwrap();
        sim.sim.set_faults(Faults {
            edits_per_page: 2,
            slow_rate: 1.0,
            slow_ms: 2,
            ..Faults::default()
        });
        let cancel = CancellationToken::new();
        let mut most_issued = 0;
        for _ in 0..3 {
            let before = top(&sim.sim, "patients");
            // Under this much churn an incremental walk may not see its
            // whole set within `max_walks`: that poll fails and moves nothing.
            match relay.pollers[0].poll_once(&cancel).await {
                Ok(r) => settle_pages += r.settle_pages,
                Err(PollError::Unstable { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            most_issued = most_issued.max(top(&sim.sim, "patients") - before);
            sim.sim.random_writes(Some("patients"), 20);
        }
        assert!(
            most_issued > 4 * OVERLAP,
            "only {most_issued} stamps issued during a walk; the test proves nothing"
        );
        sim.sim.set_faults(Faults::default());
        poll_until_quiet(&mut relay, 5).await;
        let store = relay.store.clone();
        assert_rebuilds(store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;
    }
    assert!(settle_pages > 0, "no poll settled; the test proves nothing");
    drop(ts);
}

/// A write that commits long after its stamp was issued, beyond what
/// `overlap = 0` re-reads, is missed by the polls and found by a reconcile
/// sweep, which appends it as a late event; a second sweep finds nothing.
async fn reconcile_repairs_what_the_polls_missed(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 4,
        initial: vec![("assessments".into(), 20)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["assessments"], Paging::Pages, 10);
    src.overlap = 0;
    let mut relay = relay(&ts, vec![src]);
    poll_until_quiet(&mut relay, 5).await;
    hide_writes(&sim.sim, "assessments", 3);
    poll_until_quiet(&mut relay, 5).await;
    assert_eq!(sim.sim.flush_late(), 3);
    poll_until_quiet(&mut relay, 5).await;
    let t = Table::new("sim", "assessments");
    let before = all_events(ts.store.as_ref(), &t).await.len();

    let cancel = CancellationToken::new();
    let r = relay.pollers[0].reconcile_once(&cancel).await.unwrap();
    assert!(r.swept);
    assert_eq!(r.repaired, 3, "{r:?}");
    assert_eq!(r.outcome.late, 3, "{r:?}");
    let events = all_events(ts.store.as_ref(), &t).await;
    assert_eq!(events.len(), before + 3);
    assert!(events[before..].iter().all(|e| e.id.seq > 0 && !e.snapshot));
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
    let again = relay.pollers[0].reconcile_once(&cancel).await.unwrap();
    assert_eq!(again.repaired, 0);
    let metrics = relay.metrics.encode();
    assert!(
        metrics.contains(
            r#"stamp_relay_reconcile_repaired_total{source="sim",resource="assessments"} 3"#
        ),
        "{metrics}"
    );
}

/// Hides `n` writes to `table` until `flush_late`: their stamps are issued
/// now, and the polls' cursor passes them meanwhile.
fn hide_writes(sim: &Simulator, table: &str, n: usize) {
    sim.set_faults(Faults {
        late_rate: 1.0,
        late_after: 1000,
        ..Faults::default()
    });
    let hidden = sim.random_writes(Some(table), n);
    assert!(hidden.iter().all(|w| w.late));
    sim.set_faults(Faults::default());
    sim.random_writes(Some(table), 5);
}

/// `sync --reconcile` while a relay serves the table cannot take its lease;
/// it leaves a request the serving relay picks up after its next poll.
async fn a_requested_sweep_runs_in_the_serving_relay(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 6,
        initial: vec![("comments".into(), 15)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["comments"], Paging::Pages, 10);
    src.overlap = 0;
    let app = App::spawn(&ts, vec![src]).await;
    let t = Table::new("sim", "comments");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    hide_writes(&sim.sim, "comments", 2);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim.flush_late();
    ts.store.request_reconcile(&t).await.unwrap();
    eventually("the requested sweep", Duration::from_secs(20), async || {
        let events = all_events(ts.store.as_ref(), &t).await;
        events.iter().filter(|e| e.id.seq > 0).count() == 2
    })
    .await;
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
    assert!(!ts.store.take_reconcile_request(&t).await.unwrap());
    app.stop().await;
}

/// A keyset page that lists a record twice at one stamp (a join upstream)
/// is not "out of order": the row is kept once and the poll succeeds.
async fn keyset_pages_with_a_repeated_row(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("sites".into(), 5)],
        ..SimConfig::default()
    })
    .await;
    let last: Value = sim.sim.state("sites").last().cloned().unwrap();
    sim.sim.add_raw("sites", last).unwrap();
    let mut relay = relay(
        &ts,
        vec![source(&sim.base_url, &["sites"], Paging::Keyset, 10)],
    );
    let r = relay.pollers[0]
        .poll_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.outcome.created, 5);
    poll_until_quiet(&mut relay, 3).await;
    assert_rebuilds(ts.store.as_ref(), &Table::new("sim", "sites"), &sim.sim).await;
}

/// A keyset poll passes stamp 32 while it is uncommitted, and 32 commits
/// within `overlap` (5) stamps of the top, as the contract allows. Writes
/// then keep coming while the poll pages. A poll that chased them would
/// move the cursor past 32 + overlap, so no later poll re-reads 32; the
/// poll stops at the stamp the upstream showed when it began (keyset.rs),
/// and the next poll's window reads 32.
async fn a_keyset_poll_chasing_writes_keeps_a_late_commit(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), 30)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["patients"], Paging::Keyset, 4);
    src.overlap = 5;
    let mut relay = relay(&ts, vec![src]);
    let cancel = CancellationToken::new();
    relay.pollers[0].poll_once(&cancel).await.unwrap();
    let create = || sim.sim.apply(Change::new("patients", Op::Create)).unwrap();
    create();
    sim.sim.set_faults(Faults {
        late_rate: 1.0,
        late_after: 1000,
        ..Faults::default()
    });
    let late = create();
    assert_eq!((late.stamp, late.late), (32, true));
    sim.sim.set_faults(Faults {
        slow_rate: 1.0,
        slow_ms: 40,
        ..Faults::default()
    });
    create();
    create();
    // Once the poll read a page that passed 32 (its `sync` is 28 or 29, so
    // it listed 33), 32 commits (the top is 34), and ten more records
    // follow while the poll goes on.
    let asked = sim.sim.requests().len();
    let passed = || sim.sim.requests()[asked..].iter().any(|q| q.sync >= 28);
    let burst = async {
        while !passed() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(sim.sim.flush_late(), 1);
        (0..10).for_each(|_| {
            create();
        });
    };
    let (polled, ()) = tokio::join!(relay.pollers[0].poll_once(&cancel), burst);
    polled.unwrap();
    sim.sim.set_faults(Faults::default());
    poll_until_quiet(&mut relay, 5).await;
    let t = Table::new("sim", "patients");
    let events = all_events(ts.store.as_ref(), &t).await;
    assert!(
        events.iter().any(|e| e.record == late.id && e.stamp == 32),
        "the version committed late at stamp 32 is not in the stream"
    );
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
}

/// An upstream that reads a page's `count` and its rows in two snapshots
/// (writes land between them) breaks the completeness check of `pages`,
/// and with `overlap = 0` an initial load could miss versions below its
/// cursor. A sweep follows every `pages` load by default (and only the
/// load: a second step of the loop sweeps nothing); afterwards every
/// upstream version at or below the cursor is in the stream.
async fn a_sweep_after_the_load_repairs_counts_from_another_snapshot(ts: TestStore) {
    for seed in 0..seeds() {
        let sim = Sim::start(SimConfig {
            seed,
            order: Order::Name,
            initial: vec![("patients".into(), 200)],
            ..SimConfig::default()
        })
        .await;
        let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 40);
        src.overlap = 0;
        let mut store = ts.config.clone();
        store.key_prefix = format!("apart{seed}");
        store.data_dir = ts.dir.path().join(format!("apart{seed}"));
        let mut relay = stamp_relay::app::Relay::with_store(
            crate::harness::config(&store, vec![src]),
            stamp_relay::store::open(&store).await.unwrap(),
        )
        .unwrap();
        sim.sim.set_faults(Faults {
            count_apart_writes: 1,
            ..Faults::default()
        });
        let cancel = CancellationToken::new();
        let poller = &mut relay.pollers[0];
        // Under this churn a load poll may fail to see its whole set; that
        // commits nothing and the next one tries again.
        for _ in 0..20 {
            if matches!(poller.poll_once(&cancel).await, Ok(r) if r.loading) {
                break;
            }
        }
        sim.sim.set_faults(Faults::default());
        let asked = sim.sim.requests().len();
        poller.maybe_reconcile(&cancel).await;
        let swept = sim.sim.requests().len();
        assert!(
            sim.sim.requests()[asked..].iter().any(|q| q.sync == 0),
            "seed {seed}: no sweep followed the initial load"
        );
        poller.maybe_reconcile(&cancel).await;
        assert_eq!(
            sim.sim.requests().len(),
            swept,
            "seed {seed}: a second sweep ran"
        );
        let t = Table::new("sim", "patients");
        let events = all_events(relay.store.as_ref(), &t).await;
        let top = events.iter().map(|e| e.id.stamp).max().unwrap();
        let have: std::collections::HashSet<(&str, u64)> = events
            .iter()
            .map(|e| (e.record.as_str(), e.stamp))
            .collect();
        for r in sim.sim.state("patients") {
            let (id, stamp) = (
                r["uuid"].as_str().unwrap(),
                r["update_stamp"].as_u64().unwrap(),
            );
            assert!(
                stamp > top || have.contains(&(id, stamp)),
                "seed {seed}: {id} @ {stamp}, below the cursor {top}, is not in the stream"
            );
        }
    }
}
