//! The record store finds versions through the index (src/store/records.rs):
//! a record whose latest version is a late event, versions whose events
//! retention removed, and previous values across both, on each store; the
//! listing in stamp order with its count equal to the upstream's answer.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use stamp_relay::{
    config::Paging,
    events::{Event, StreamId},
    store::{Store, Table, records::RecordsQuery},
};
use stamp_relay_simulator::{self as simulator, Change, Faults, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{Sim, TestStore, all_events, poll_until_quiet, relay, source};
use crate::{on_both_stores, on_cluster};

on_both_stores!(
    late_and_trimmed_versions_are_found,
    a_long_history_lists_page_by_page
);
// The record store's scripts touch one table's keys only: one slot.
on_cluster!(late_and_trimmed_versions_are_found);

fn score(n: u64) -> Value {
    json!({"pain_score": n})
}

fn pain_score(json: &str) -> Value {
    serde_json::from_str::<Value>(json).unwrap()["pain_score"].clone()
}

/// Every record whose latest stamp is above `sync`, read from the store a
/// few records per page as the compatible API pages, checked for stamp
/// order and count, as id -> JSON.
async fn listing(store: &dyn Store, t: &Table, sync: u64) -> BTreeMap<String, String> {
    let (mut out, mut after, mut until, mut count) = (BTreeMap::new(), None, None, None);
    let mut last = sync;
    loop {
        let q = RecordsQuery {
            above: sync,
            until,
            after,
            offset: 0,
            limit: 3,
            count,
        };
        let page = store.records(t, q).await.unwrap();
        for r in &page.records {
            assert!(r.stamp > last, "stamp order: {} after {last}", r.stamp);
            last = r.stamp;
            assert!(out.insert(r.id.clone(), r.data.clone()).is_none());
        }
        (until, count) = (Some(page.until), Some(page.count));
        match page.records.last() {
            Some(r) if page.records.len() == 3 => after = Some(r.stamp),
            _ => break,
        }
    }
    assert_eq!(count, Some(out.len() as u64), "sync={sync}: the count");
    out
}

/// The simulator's records above `sync`, as id -> JSON.
fn upstream(sim: &Sim, sync: u64) -> BTreeMap<String, String> {
    sim.sim
        .state("patients")
        .into_iter()
        .filter(|r| r["update_stamp"].as_u64().unwrap() > sync)
        .map(|r| (r["uuid"].as_str().unwrap().to_string(), r.to_string()))
        .collect()
}

/// Lookups and listings (from 0 and from the middle) agree with the upstream.
async fn agrees(store: &dyn Store, t: &Table, sim: &Sim) {
    let want = upstream(sim, 0);
    for (id, json) in &want {
        let got = store.record(t, id).await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&got.data).unwrap(),
            serde_json::from_str::<Value>(json).unwrap(),
            "{id}: its latest version"
        );
    }
    let as_values = |m: BTreeMap<String, String>| -> BTreeMap<String, Value> {
        m.into_iter()
            .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
            .collect()
    };
    let top = sim
        .sim
        .state("patients")
        .iter()
        .map(|r| r["update_stamp"].as_u64().unwrap())
        .max()
        .unwrap();
    for sync in [0, top / 2, top - 1] {
        assert_eq!(
            as_values(listing(store, t, sync).await),
            as_values(upstream(sim, sync)),
            "sync={sync}"
        );
    }
}

/// The stream's events after `after` with the versions they replaced.
async fn with_previous(store: &dyn Store, t: &Table, after: StreamId) -> Vec<Event> {
    let mut events = store.read(t, after, 100).await.unwrap();
    store.fill_previous(t, &mut events).await.unwrap();
    events
}

/// Trims every event but the last.
async fn trim_all_but_last(store: &dyn Store, t: &Table) {
    let last = store.last_id(t).await.unwrap();
    store.trim(t, last).await.unwrap();
    assert_eq!(store.stream_len(t).await.unwrap(), 1);
}

fn update(sim: &Sim, id: &str, n: u64) {
    sim.sim
        .apply(
            Change::new("patients", simulator::Op::Update)
                .with_id(id)
                .with_fields(score(n)),
        )
        .unwrap();
}

/// Six patients; ids[0] updated, ids[1] updated in a write that commits
/// after the cursor passed it (a reconcile sweep appends it as a late
/// event, its latest version), ids[2] updated. Returns the simulator, the
/// relay and the ids.
async fn with_a_late_event(ts: &TestStore) -> (Sim, stamp_relay::app::Relay, Vec<String>) {
    let sim = Sim::start(SimConfig {
        seed: 31,
        initial: vec![("patients".into(), 6)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 10);
    src.overlap = 0;
    let mut relay = relay(ts, vec![src]);
    poll_until_quiet(&mut relay, 5).await;
    let ids: Vec<String> = upstream(&sim, 0).into_keys().collect();
    update(&sim, &ids[0], 3);
    poll_until_quiet(&mut relay, 5).await;
    sim.sim.set_faults(Faults {
        late_rate: 1.0,
        late_after: 1000,
        ..Faults::default()
    });
    update(&sim, &ids[1], 5);
    sim.sim.set_faults(Faults::default());
    update(&sim, &ids[2], 1);
    poll_until_quiet(&mut relay, 5).await;
    assert_eq!(sim.sim.flush_late(), 1);
    let swept = relay.pollers[0]
        .reconcile_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(swept.outcome.late, 1, "{swept:?}");
    (sim, relay, ids)
}

async fn late_and_trimmed_versions_are_found(ts: TestStore) {
    let (sim, mut relay, ids) = with_a_late_event(&ts).await;
    let t = Table::new("sim", "patients");
    let store = ts.store.as_ref();
    let update = |id: &str, n| update(&sim, id, n);
    let late = store.index_entry(&t, &ids[1]).await.unwrap().unwrap();
    assert!(late.at.is_some(), "the index points at the late event");
    agrees(store, &t, &sim).await;

    // Retention removes every event but the late one: ids[0]'s and
    // ids[2]'s latest versions live on in the kept copies.
    trim_all_but_last(store, &t).await;
    agrees(store, &t, &sim).await;

    // Updates after that: each event's previous version is the kept copy
    // (ids[0]) or the late event (ids[1], through `previid`).
    let top = store.last_id(&t).await.unwrap();
    update(&ids[0], 8);
    update(&ids[1], 9);
    poll_until_quiet(&mut relay, 5).await;
    let events = with_previous(store, &t, top).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let before: BTreeMap<&str, Value> = events
        .iter()
        .map(|e| (e.record.as_str(), pain_score(e.before.as_deref().unwrap())))
        .collect();
    assert_eq!(before[ids[0].as_str()], 3, "{before:?}");
    assert_eq!(before[ids[1].as_str()], 5, "{before:?}");
    assert!(events[1].prev_id.is_some() || events[0].prev_id.is_some());
    agrees(store, &t, &sim).await;

    // The late version's event goes too: the last event's previous version
    // is still found (the kept copy), and so is everything else.
    trim_all_but_last(store, &t).await;
    let last = with_previous(store, &t, StreamId::ZERO).await;
    assert_eq!(last.len(), 1);
    let want = if last[0].record == ids[1] { 5 } else { 3 };
    assert_eq!(pain_score(last[0].before.as_deref().unwrap()), want);
    agrees(store, &t, &sim).await;
    let all = all_events(store, &t).await;
    assert_eq!(all.len(), 1);
}

/// Thousands of superseded versions before the latest ones: a listing
/// reads them in short calls (src/store/redis/records.rs, `PAGE_BUDGET`)
/// and still answers exactly the upstream's records in stamp order.
async fn a_long_history_lists_page_by_page(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 32,
        order: simulator::Order::Stamp,
        initial: vec![("patients".into(), 20)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Keyset, 1000);
    let mut relay = relay(&ts, vec![src]);
    let t = Table::new("sim", "patients");
    poll_until_quiet(&mut relay, 5).await;
    let ids: Vec<String> = upstream(&sim, 0).into_keys().collect();
    let cancel = CancellationToken::new();
    for round in 0..320u64 {
        for id in &ids[..18] {
            sim.sim
                .apply(
                    Change::new("patients", simulator::Op::Update)
                        .with_id(id)
                        .with_fields(score(round)),
                )
                .unwrap();
        }
        // Each round's versions are events of their own.
        relay.pollers[0].poll_once(&cancel).await.unwrap();
    }
    poll_until_quiet(&mut relay, 5).await;
    assert!(ts.store.stream_len(&t).await.unwrap() > 5700);
    agrees(ts.store.as_ref(), &t, &sim).await;
}

/// A Redis table written by a build before the index pointed at versions
/// (late events indexed as plain `<stamp>`, a full copy of every record in
/// `records` and `stamps`, no `late` set): a relay of this build lists and
/// finds every record, the late one included, and counts them right, once
/// it opened the table (never inside a read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_redis_layout_is_completed() {
    let Some(ts) = TestStore::open(crate::harness::Backend::Redis).await else {
        return;
    };
    let (sim, _relay, ids) = with_a_late_event(&ts).await;
    let t = Table::new("sim", "patients");
    let keys = stamp_relay::store::redis::Keys::new(&ts.config.key_prefix, &t);
    let client = redis::Client::open(ts.redis.as_ref().unwrap().url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let index: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(&keys.index)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(index[&ids[1]].contains('@'), "{index:?}");
    let latest = upstream(&sim, 0);
    for (id, entry) in &index {
        let old = entry.split('@').next().unwrap();
        let stamp: u64 = old.split(':').next().unwrap().parse().unwrap();
        let () = redis::pipe()
            .hset(&keys.index, id, old)
            .hset(&keys.records, id, format!("{old} {}", latest[id]))
            .zadd(&keys.stamps, id, stamp)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let () = redis::cmd("DEL")
        .arg(&keys.late)
        .arg(&keys.kept)
        .query_async(&mut c)
        .await
        .unwrap();

    // A new process: a read alone writes nothing; opening the table
    // completes the layout, then every read answers.
    let store = stamp_relay::store::open(&ts.config).await.unwrap();
    store.record(&t, &ids[1]).await.unwrap();
    let kept: Option<String> = redis::cmd("GET")
        .arg(&keys.kept)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(kept, None, "a read completed the layout");
    store.ready_records(&t).await.unwrap();
    agrees(store.as_ref(), &t, &sim).await;
    let late = store.index_entry(&t, &ids[1]).await.unwrap().unwrap();
    assert!(late.at.is_some(), "the late event's pointer is restored");
    let copies: u64 = redis::cmd("HLEN")
        .arg(&keys.records)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(copies, 0, "copies of versions the stream holds are dropped");
}
