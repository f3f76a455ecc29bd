//! The sync algorithm's behaviour suite (ARCHITECTURE.md, poller/), on both stores.

use serde_json::json;
use stamp_relay::{
    config::Paging,
    events::{Op, StreamId},
    store::Table,
};
use stamp_relay_simulator::{self as simulator, Change, Faults, Order, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    Sim, TestStore, all_events, assert_rebuilds, poll_until_quiet, relay, seeds, source,
};
use crate::{on_both_stores, on_cluster};

on_both_stores!(
    seed_example,
    deletes_restores_and_gaps,
    name_order_with_writes_between_pages,
    late_commits_with_overlap,
    keyset_paging_commits_each_page,
    rejects_keep_raw_json,
    archived_records_load_as_deleted,
);
on_cluster!(
    seed_example,
    deletes_restores_and_gaps,
    late_commits_with_overlap
);

fn create(sim: &simulator::Simulator, table: &str, id: &str) -> u64 {
    sim.apply(Change::new(table, simulator::Op::Create).with_id(id))
        .unwrap()
        .stamp
}

/// The seed's example: A, B, C at 1, 2, 3; B edited (4) and D added (5);
/// the next poll sends sync=3 and appends exactly B updated and D created.
async fn seed_example(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        order: Order::Name,
        ..SimConfig::default()
    })
    .await;
    let stamps: Vec<u64> = ["A", "B", "C"]
        .iter()
        .map(|id| create(&sim.sim, "patients", id))
        .collect();
    assert_eq!(stamps, [1, 2, 3]);
    assert_eq!(
        create(&sim.sim, "users", "U"),
        1,
        "each table keeps its own sequence"
    );
    let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 50);
    src.overlap = 0;
    let mut relay = relay(&ts, vec![src]);
    let cancel = CancellationToken::new();
    let t = Table::new("sim", "patients");
    let p = &mut relay.pollers[0];

    let r = p.poll_once(&cancel).await.unwrap();
    assert_eq!(r.outcome.created, 3);
    assert_eq!(ts.store.last_id(&t).await.unwrap(), StreamId::new(3, 0));
    assert!(
        all_events(ts.store.as_ref(), &t)
            .await
            .iter()
            .all(|e| e.snapshot)
    );

    let b = sim
        .sim
        .apply(Change::new("patients", simulator::Op::Update).with_id("B"))
        .unwrap();
    let d = create(&sim.sim, "patients", "D");
    assert_eq!((b.stamp, d), (4, 5));
    let r = p.poll_once(&cancel).await.unwrap();
    let last = sim.sim.requests().last().cloned().unwrap();
    assert_eq!(last.sync, 3, "the poll after cursor 3 must send sync=3");
    assert_eq!(
        (r.outcome.updated, r.outcome.created, r.outcome.appended()),
        (1, 1, 2)
    );
    let events = all_events(ts.store.as_ref(), &t).await;
    let tail: Vec<_> = events[3..]
        .iter()
        .map(|e| (e.op, e.record.as_str(), e.stamp, e.prev, e.snapshot))
        .collect();
    assert_eq!(
        tail,
        [
            (Op::Updated, "B", 4, Some(2), false),
            (Op::Created, "D", 5, None, false)
        ]
    );
    assert_eq!(ts.store.last_id(&t).await.unwrap(), StreamId::new(5, 0));

    let r = p.poll_once(&cancel).await.unwrap();
    assert_eq!(r.outcome.appended(), 0);
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 5);
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
}

/// A record the initial load finds already deleted (an archived resident)
/// is announced as `deleted` with `snapshot`, not `created`; restoring it
/// later is a `restored` like any other (src/events.rs, classify).
async fn archived_records_load_as_deleted(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        order: Order::Name,
        ..SimConfig::default()
    })
    .await;
    create(&sim.sim, "patients", "A");
    create(&sim.sim, "patients", "B");
    let del = Change::new("patients", simulator::Op::Delete).with_id("B");
    sim.sim.apply(del).unwrap();
    let mut relay = relay(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    );
    let t = Table::new("sim", "patients");
    poll_until_quiet(&mut relay, 5).await;
    let ops = |events: Vec<stamp_relay::events::Event>| -> Vec<_> {
        events
            .into_iter()
            .map(|e| (e.record, e.op, e.prev, e.snapshot))
            .collect()
    };
    assert_eq!(
        ops(all_events(ts.store.as_ref(), &t).await),
        [
            ("A".to_string(), Op::Created, None, true),
            ("B".to_string(), Op::Deleted, None, true)
        ]
    );
    let restore = Change::new("patients", simulator::Op::Restore).with_id("B");
    sim.sim.apply(restore).unwrap();
    poll_until_quiet(&mut relay, 5).await;
    let events = all_events(ts.store.as_ref(), &t).await;
    assert_eq!(
        (events[2].op, events[2].prev, events[2].snapshot),
        (Op::Restored, Some(events[1].stamp), false)
    );
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
}

/// Deletes and restores become their own ops; stamp gaps are harmless;
/// every table keeps its own sequence.
async fn deletes_restores_and_gaps(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        stamp_gap_rate: 0.5,
        seed: 3,
        ..SimConfig::default()
    })
    .await;
    // The stamps the patients table handed out, in order.
    let mut stamps: Vec<u64> = ["p1", "p2", "p3"]
        .into_iter()
        .map(|id| create(&sim.sim, "patients", id))
        .collect();
    create(&sim.sim, "users", "u1");
    let mut relay = relay(
        &ts,
        vec![source(
            &sim.base_url,
            &["patients", "users"],
            Paging::Pages,
            2,
        )],
    );
    poll_until_quiet(&mut relay, 5).await;
    let del = |id: &str| Change::new("patients", simulator::Op::Delete).with_id(id);
    stamps.push(sim.sim.apply(del("p1")).unwrap().stamp);
    stamps.push(sim.sim.apply(del("p2")).unwrap().stamp);
    stamps.push(
        sim.sim
            .apply(Change::new("patients", simulator::Op::Restore).with_id("p2"))
            .unwrap()
            .stamp,
    );
    sim.sim
        .apply(Change::new("users", simulator::Op::Update).with_id("u1"))
        .unwrap();
    poll_until_quiet(&mut relay, 5).await;
    stamps.push(
        sim.sim
            .apply(Change::new("patients", simulator::Op::Restore).with_id("p1"))
            .unwrap()
            .stamp,
    );
    poll_until_quiet(&mut relay, 5).await;
    assert!(
        stamps.windows(2).any(|w| w[1] > w[0] + 1),
        "the test needs a stamp gap to prove anything: {stamps:?}"
    );

    let t = Table::new("sim", "patients");
    let ops: Vec<_> = all_events(ts.store.as_ref(), &t)
        .await
        .iter()
        .filter(|e| !e.snapshot)
        .map(|e| (e.op, e.record.clone()))
        .collect();
    // p2's delete was overwritten by its restore before the poll: the upstream
    // shows only the restored version, which the index sees as an update.
    assert_eq!(
        ops,
        [
            (Op::Deleted, "p1".into()),
            (Op::Updated, "p2".into()),
            (Op::Restored, "p1".into())
        ]
    );
    let users = all_events(ts.store.as_ref(), &Table::new("sim", "users")).await;
    assert_eq!(
        users.iter().map(|e| e.op).collect::<Vec<_>>(),
        [Op::Created, Op::Updated]
    );
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
    assert_rebuilds(ts.store.as_ref(), &Table::new("sim", "users"), &sim.sim).await;
}

/// Offset paging over a name-ordered set that changes between page
/// requests: across seeds, the events rebuild the final state exactly.
async fn name_order_with_writes_between_pages(ts: TestStore) {
    let mut rewalks = 0;
    for seed in 0..seeds() {
        let sim = Sim::start(SimConfig {
            seed,
            order: Order::Name,
            initial: vec![("patients".into(), 60)],
            ..SimConfig::default()
        })
        .await;
        let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 20);
        src.max_walks = 20;
        let mut cfg_store = ts.config.clone();
        cfg_store.key_prefix = format!("seed{seed}");
        cfg_store.data_dir = ts.dir.path().join(format!("seed{seed}"));
        let mut relay = stamp_relay::app::Relay::with_store(
            crate::harness::config(&cfg_store, vec![src]),
            stamp_relay::store::open(&cfg_store).await.unwrap(),
        )
        .unwrap();
        let cancel = CancellationToken::new();
        sim.sim.set_faults(Faults {
            writes_per_page: 1,
            ..Faults::default()
        });
        for _ in 0..4 {
            let r = relay.pollers[0].poll_once(&cancel).await.unwrap();
            rewalks += r.walks - 1;
            sim.sim.random_writes(Some("patients"), 5);
        }
        sim.sim.set_faults(Faults::default());
        poll_until_quiet(&mut relay, 5).await;
        let store = relay.store.clone();
        assert_rebuilds(store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;
    }
    assert!(
        rewalks > 0,
        "no walk ever skipped a row; the test proves nothing"
    );
    drop(ts);
}

/// A stamp handed out but visible only later is caught by the overlap window.
async fn late_commits_with_overlap(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 11,
        initial: vec![("assessments".into(), 30)],
        ..SimConfig::default()
    })
    .await;
    sim.sim.set_faults(Faults {
        late_rate: 0.4,
        late_after: 3,
        ..Faults::default()
    });
    let mut relay = relay(
        &ts,
        vec![source(&sim.base_url, &["assessments"], Paging::Pages, 10)],
    );
    let cancel = CancellationToken::new();
    let mut late_seen = 0;
    for _ in 0..8 {
        sim.sim.random_writes(Some("assessments"), 6);
        late_seen += relay.pollers[0]
            .poll_once(&cancel)
            .await
            .unwrap()
            .outcome
            .late;
    }
    sim.sim.set_faults(Faults::default());
    sim.sim.flush_late();
    let r = relay.pollers[0].poll_once(&cancel).await.unwrap();
    late_seen += r.outcome.late;
    assert!(
        late_seen > 0,
        "the late-commit fault produced no late events; the test proves nothing"
    );
    poll_until_quiet(&mut relay, 5).await;
    assert_rebuilds(
        ts.store.as_ref(),
        &Table::new("sim", "assessments"),
        &sim.sim,
    )
    .await;
}

/// Keyset paging on a stamp-sorted upstream commits page by page, and a
/// page out of stamp order is an error, not a silent fallback. The poll
/// first reads the last page for its cap (keyset.rs), and every next page
/// re-reads the last stamp of a full one, which may hold more rows.
async fn keyset_paging_commits_each_page(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), 95)],
        ..SimConfig::default()
    })
    .await;
    let mut relay = relay(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Keyset, 10)],
    );
    let cancel = CancellationToken::new();
    let r = relay.pollers[0].poll_once(&cancel).await.unwrap();
    // Records the load finds archived are `deleted` (src/events.rs).
    let loaded = r.outcome.created + r.outcome.deleted;
    assert_eq!((loaded, r.outcome.appended(), r.pages), (95, 95, 13));
    let asked: Vec<(u64, i64)> = sim
        .sim
        .requests()
        .iter()
        .map(|q| (q.sync, q.page))
        .collect();
    let mut want = vec![(0, 1), (0, 10)];
    want.extend((0..=90).step_by(9).map(|sync| (sync, 1)));
    assert_eq!(asked, want);
    sim.sim.random_writes(Some("patients"), 20);
    poll_until_quiet(&mut relay, 5).await;
    assert_rebuilds(ts.store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;

    let unsorted = Sim::start(SimConfig {
        order: Order::Name,
        initial: vec![("users".into(), 30)],
        ..SimConfig::default()
    })
    .await;
    let mut relay2 = crate::harness::relay(
        &ts,
        vec![source(&unsorted.base_url, &["users"], Paging::Keyset, 10)],
    );
    let err = relay2.pollers[0].poll_once(&cancel).await.unwrap_err();
    assert!(err.to_string().contains("paging = \"pages\""), "{err}");
}

/// Records without an id or a stamp land in the reject stream, raw.
async fn rejects_keep_raw_json(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("sites".into(), 4)],
        ..SimConfig::default()
    })
    .await;
    sim.sim
        .add_raw("sites", json!({"name": "no id", "update_stamp": 2}))
        .unwrap();
    sim.sim
        .add_raw("sites", json!({"uuid": "no-stamp", "name": "x"}))
        .unwrap();
    let mut relay = relay(
        &ts,
        vec![source(&sim.base_url, &["sites"], Paging::Pages, 3)],
    );
    poll_until_quiet(&mut relay, 3).await;
    let t = Table::new("sim", "sites");
    let rejects = ts.store.rejects(&t, 10).await.unwrap();
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert!(
        rejects
            .iter()
            .any(|r| r.raw.contains("no id") && r.reason.contains("id"))
    );
    assert!(
        rejects
            .iter()
            .any(|r| r.raw.contains("no-stamp") && r.reason.contains("stamp"))
    );
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 4);
}
