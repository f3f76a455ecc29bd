//! The store's promises, stated once as a suite every engine runs (issue
//! 22): Redis, a Redis Cluster and the embedded SQLite store. A new engine
//! is an engine plus a green run of `contract_suite`.
//!
//! Each promise works on its own tables and subscriptions, so the suite
//! runs on one store per engine: ordering and idempotent appends, the
//! lease and epoch guards as refusals, trims that keep the index, leases,
//! the claim → pending → settle cycle of delivery, and compare-and-set on
//! documents and subscriptions.

use crate::harness::record;
use std::time::Duration;

use stamp_relay::{
    events::{self, IndexEntry, Op, StreamId},
    record::UpstreamRecord,
    store::{Refusal, Target},
    subscription::{
        Subscription,
        state::{DeadLetter, RetryState},
    },
};

use crate::harness::{Backend, TestStore, append_as, leased_table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    if let Some(ts) = TestStore::open(Backend::Redis).await {
        contract_suite(&ts).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    contract_suite(&TestStore::open(Backend::Sqlite).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    if let Some(ts) = TestStore::open(Backend::Cluster).await {
        contract_suite(&ts).await;
    }
}

/// The Redis scripts read and write index entries through `lib.lua` alone;
/// Rust reads them through `IndexEntry`. The two readings of the grammar
/// `<stamp>[:deleted][@<stream ID>]` agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_and_rust_read_index_entries_alike() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let entries = [
        IndexEntry::new(5, false),
        IndexEntry::new(5, true),
        IndexEntry {
            at: Some(id(1_700_000_000_123, 4)),
            ..IndexEntry::new(1_700_000_000_000, false)
        },
        IndexEntry {
            at: Some(id(events::MAX_RECORD_STAMP, 7)),
            ..IndexEntry::new(events::MAX_RECORD_STAMP, true)
        },
    ];
    // Per entry: its parts and Rust's encoding in; Lua's encoding of the
    // parts and its reading of Rust's encoding out.
    let body = "local out = {} \
        for i = 1, #ARGV, 4 do \
          local late = ARGV[i + 2] ~= '' and ARGV[i + 2] or nil \
          local stamp, deleted, at = entry_decode(ARGV[i + 3]) \
          local _, event = pointer(ARGV[i + 3]) \
          out[#out + 1] = {entry_encode(ARGV[i], ARGV[i + 1] == '1', late), \
            stamp, deleted and '1' or '0', at or '', event} \
        end \
        return out";
    let lib = include_str!("../../../src/store/redis/lib.lua");
    let mut eval = redis::cmd("EVAL");
    eval.arg(format!("{lib}\n{body}")).arg(0);
    for e in &entries {
        let late = e.at.map(|at| at.to_string()).unwrap_or_default();
        eval.arg(e.stamp)
            .arg(u8::from(e.deleted))
            .arg(late)
            .arg(e.encode());
    }
    let url = ts.redis.as_ref().unwrap().url();
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let got: Vec<Vec<String>> = eval.query_async(&mut c).await.unwrap();
    for (e, lua) in entries.iter().zip(&got) {
        let at = e.at.map(|at| at.to_string()).unwrap_or_default();
        let want = [
            e.encode(),
            e.stamp.to_string(),
            u8::from(e.deleted).to_string(),
            at,
            e.event_id().to_string(),
        ];
        assert_eq!(lua, &want, "{e:?}");
        assert_eq!(IndexEntry::decode(&lua[0]), Some(*e));
    }
    assert_eq!(got.len(), entries.len());
}

/// Every promise, in turn, on one store.
pub async fn contract_suite(ts: &TestStore) {
    appends_are_ordered_and_idempotent(ts).await;
    late_and_older_versions_are_told_apart(ts).await;
    guards_refuse_as_data(ts).await;
    epochs_are_read_in_one_batch(ts).await;
    trims_remove_events_and_keep_the_index(ts).await;
    leases_are_exclusive_until_released_or_expired(ts).await;
    claims_move_entries_through_pending(ts).await;
    documents_compare_and_set(ts).await;
    subscriptions_compare_and_set(ts).await;
}

fn id(stamp: u64, seq: u64) -> StreamId {
    StreamId { stamp, seq }
}

/// A table of this suite with its epoch and the lease held by `me`.
async fn table(ts: &TestStore, name: &str) -> (Target, String) {
    leased_table(ts, "contract", name).await
}

async fn append(
    ts: &TestStore,
    t: &Target,
    epoch: &str,
    records: &[UpstreamRecord],
) -> stamp_relay::events::AppendOutcome {
    append_as(ts, t, "me", epoch, records).await.unwrap()
}

/// Appends come back in stream order, one event per new version, and a
/// batch appended again adds nothing.
async fn appends_are_ordered_and_idempotent(ts: &TestStore) {
    let (t, epoch) = table(ts, "ordered").await;
    let batch = [record("a", 1), record("b", 2), record("c", 3)];
    let first = append(ts, &t, &epoch, &batch).await;
    assert_eq!((first.created, first.appended()), (3, 3));
    let again = append(ts, &t, &epoch, &batch).await;
    assert_eq!((again.duplicates, again.appended()), (3, 0));
    let changed = append(ts, &t, &epoch, &[record("b", 5)]).await;
    assert_eq!(changed.updated, 1);
    let mut gone = record("c", 6);
    gone.deleted = true;
    assert_eq!(append(ts, &t, &epoch, &[gone]).await.deleted, 1);

    let events = ts.store.read(&t, StreamId::ZERO, 100).await.unwrap();
    let seen: Vec<(StreamId, &str, Op, Option<u64>)> = events
        .iter()
        .map(|e| (e.id, e.record.as_str(), e.op, e.prev))
        .collect();
    assert_eq!(
        seen,
        [
            (id(1, 0), "a", Op::Created, None),
            (id(2, 0), "b", Op::Created, None),
            (id(3, 0), "c", Op::Created, None),
            (id(5, 0), "b", Op::Updated, Some(2)),
            (id(6, 0), "c", Op::Deleted, Some(3)),
        ]
    );
    assert!(events.iter().all(|e| e.observed == 7));
    assert_eq!(ts.store.last_id(&t).await.unwrap(), id(6, 0));
    let after = ts.store.read(&t, id(2, 0), 2).await.unwrap();
    let ids: Vec<StreamId> = after.iter().map(|e| e.id).collect();
    assert_eq!(ids, [id(3, 0), id(5, 0)], "strictly after, at most limit");
    let back = |before, limit| ts.store.read_back(&t, before, limit);
    let newest: Vec<StreamId> = back(None, 2).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(
        newest,
        [id(6, 0), id(5, 0)],
        "backwards from the last event"
    );
    let older = back(Some(id(5, 0)), 10).await.unwrap();
    let older: Vec<(StreamId, &str)> = older.iter().map(|e| (e.id, e.record.as_str())).collect();
    assert_eq!(
        older,
        [(id(3, 0), "c"), (id(2, 0), "b"), (id(1, 0), "a")],
        "strictly before"
    );
    assert!(back(Some(id(1, 0)), 10).await.unwrap().is_empty());
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 5);
    assert_eq!(ts.store.index_len(&t).await.unwrap(), 3);
    let entry = ts.store.index_entry(&t, "c").await.unwrap().unwrap();
    assert_eq!((entry.stamp, entry.deleted), (6, true));
}

/// A version below the top that the index lacks is a late event above the
/// top; one below the record's own indexed stamp is a regression and is
/// not appended.
async fn late_and_older_versions_are_told_apart(ts: &TestStore) {
    let (t, epoch) = table(ts, "late").await;
    append(ts, &t, &epoch, &[record("a", 1), record("b", 10)]).await;
    let late = append(ts, &t, &epoch, &[record("a", 4)]).await;
    assert_eq!((late.updated, late.late), (1, 1));
    let last = ts.store.last_id(&t).await.unwrap();
    assert_eq!(last, id(10, 1), "a late event goes on top as <top>-<seq+1>");
    let entry = ts.store.index_entry(&t, "a").await.unwrap().unwrap();
    assert_eq!((entry.stamp, entry.at), (4, Some(id(10, 1))));
    let older = append(ts, &t, &epoch, &[record("b", 3)]).await;
    assert_eq!((older.regressions, older.appended()), (1, 0));
    assert_eq!(ts.store.last_id(&t).await.unwrap(), id(10, 1));
}

/// An append without the lease, or under another epoch, is refused as
/// data naming the table, and appends nothing.
async fn guards_refuse_as_data(ts: &TestStore) {
    let (t, epoch) = table(ts, "guards").await;
    let lost = append_as(ts, &t, "other", &epoch, &[record("a", 1)]).await;
    let lost = lost.unwrap_err();
    assert_eq!(lost.refusal(), Some(Refusal::LeaseLost), "{lost}");
    assert!(lost.to_string().contains("contract/guards"), "{lost}");
    let moved = append_as(ts, &t, "me", "e0", &[record("a", 1)]).await;
    assert_eq!(moved.unwrap_err().refusal(), Some(Refusal::EpochChanged));
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 0);
    assert_eq!(ts.store.init_epoch(&t, "e2").await.unwrap(), epoch);
}

/// `epochs` answers each table's epoch in the order asked, none for a
/// table never used, like `epoch` one by one.
async fn epochs_are_read_in_one_batch(ts: &TestStore) {
    let (a, ea) = table(ts, "epochs-a").await;
    let (b, eb) = table(ts, "epochs-b").await;
    let never = Target::new("contract", "epochs-never");
    let asked = [b.clone(), never.clone(), a.clone()];
    let got = ts.store.epochs(&asked).await.unwrap();
    assert_eq!(got, vec![Some(eb), None, Some(ea)]);
    for (t, e) in asked.iter().zip(&got) {
        assert_eq!(&ts.store.epoch(t).await.unwrap(), e, "{t}");
    }
    assert!(ts.store.epochs(&[]).await.unwrap().is_empty());
}

/// A trim removes the events before the first kept one and remembers the
/// last it removed; the index still knows every record.
async fn trims_remove_events_and_keep_the_index(ts: &TestStore) {
    let (t, epoch) = table(ts, "trims").await;
    let records: Vec<_> = (1..=5).map(|i| record(&format!("r{i}"), i)).collect();
    append(ts, &t, &epoch, &records).await;
    assert_eq!(ts.store.trimmed_through(&t).await.unwrap(), StreamId::ZERO);
    assert_eq!(ts.store.trim(&t, id(4, 0)).await.unwrap(), 3);
    assert_eq!(ts.store.trimmed_through(&t).await.unwrap(), id(3, 0));
    let (before, page, later) = ts
        .store
        .read_between_trims(&t, StreamId::ZERO, 10)
        .await
        .unwrap();
    let ids: Vec<StreamId> = page.iter().map(|e| e.id).collect();
    assert_eq!(
        (before, ids, later),
        (id(3, 0), vec![id(4, 0), id(5, 0)], id(3, 0))
    );
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 2);
    assert_eq!(ts.store.index_len(&t).await.unwrap(), 5);
    let again = append(ts, &t, &epoch, &[record("r1", 1)]).await;
    assert_eq!(again.duplicates, 1, "a trimmed version is still known");
}

/// One holder at a time: the holder extends, others wait for a release or
/// the expiry.
async fn leases_are_exclusive_until_released_or_expired(ts: &TestStore) {
    let t = Target::new("contract", "leases");
    let short = Duration::from_millis(300);
    assert!(ts.store.lease(&t, "a", short).await.unwrap());
    assert!(!ts.store.lease(&t, "b", short).await.unwrap());
    assert!(ts.store.lease(&t, "a", short).await.unwrap(), "extends");
    ts.store.release(&t, "b").await.unwrap();
    assert!(!ts.store.lease(&t, "b", short).await.unwrap(), "not b's");
    ts.store.release(&t, "a").await.unwrap();
    assert!(ts.store.lease(&t, "b", short).await.unwrap());
    tokio::time::sleep(short * 3).await;
    assert!(ts.store.lease(&t, "a", short).await.unwrap(), "expired");
}

/// Claims move entries past the position into the pending set; settling
/// removes them, a retry keeps its state, a redrive puts them back, one
/// dead letter is removed alone, and
/// forgetting the subscription removes all of it.
async fn claims_move_entries_through_pending(ts: &TestStore) {
    let (t, epoch) = table(ts, "claims").await;
    let records: Vec<_> = (1..=5).map(|i| record(&format!("r{i}"), i)).collect();
    append(ts, &t, &epoch, &records).await;
    let s = "claimer";
    let ids = |events: Vec<stamp_relay::events::Event>| -> Vec<u64> {
        events.iter().map(|e| e.id.stamp).collect()
    };
    assert_eq!(ts.store.position(s, &t).await.unwrap(), None);
    let first = ts.store.claim(s, &t, StreamId::ZERO, 2).await.unwrap();
    assert_eq!(ids(first), [1, 2]);
    assert_eq!(ts.store.position(s, &t).await.unwrap(), Some(id(2, 0)));
    let next = ts.store.claim(s, &t, StreamId::ZERO, 2).await.unwrap();
    assert_eq!(ids(next), [3, 4]);
    ts.store.settle(s, &t, &[id(1, 0), id(3, 0)]).await.unwrap();
    let later = RetryState {
        attempts: 2,
        next_at_ms: u64::MAX / 2,
    };
    ts.store.retry_later(s, &t, id(2, 0), later).await.unwrap();
    let pending = ts.store.pending(s, &t).await.unwrap();
    let seen: Vec<(u64, u32)> = pending
        .iter()
        .map(|(e, r)| (e.id.stamp, r.attempts))
        .collect();
    assert_eq!(seen, [(2, 2), (4, 0)], "stream order, retry state kept");
    assert_eq!(ts.store.waiting_retries(s, &t).await.unwrap(), 1);
    ts.store.settle(s, &t, &[id(2, 0), id(4, 0)]).await.unwrap();
    ts.store.add_pending(s, &t, &[id(3, 0)]).await.unwrap();
    let back = ts.store.pending(s, &t).await.unwrap();
    assert_eq!(
        back.iter().map(|(e, _)| e.id.stamp).collect::<Vec<_>>(),
        [3]
    );
    for at in [1, 2] {
        let d = dead_letter(&t, id(at, 0));
        ts.store.dead_letter(s, &d).await.unwrap();
    }
    let key = dead_letter(&t, id(1, 0)).key();
    assert!(ts.store.remove_dead_letter(s, &key).await.unwrap());
    assert!(!ts.store.remove_dead_letter(s, &key).await.unwrap());
    let left = ts.store.dead_letters(s).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["2-0"]
    );
    ts.store.reposition(s, &t, StreamId::ZERO).await.unwrap();
    let again = ts.store.claim(s, &t, StreamId::ZERO, 1).await.unwrap();
    assert_eq!(ids(again), [1]);
    ts.store
        .forget_subscription(s, std::slice::from_ref(&t))
        .await
        .unwrap();
    assert_eq!(ts.store.position(s, &t).await.unwrap(), None);
    assert!(ts.store.pending(s, &t).await.unwrap().is_empty());
}

/// A document is written only over the version its writer read; each
/// write raises the kind's counter.
async fn documents_compare_and_set(ts: &TestStore) {
    let kind = "contract";
    let v0 = ts.store.documents_version(kind).await.unwrap();
    let put = |json: &'static str, expected: u64| ts.store.put_document(kind, "x", json, expected);
    assert_eq!(put("{\"n\":1}", 0).await.unwrap(), Some(1));
    assert_eq!(put("{\"n\":2}", 0).await.unwrap(), None, "exists");
    assert_eq!(put("{\"n\":2}", 1).await.unwrap(), Some(2));
    assert_eq!(put("{\"n\":3}", 1).await.unwrap(), None, "stale");
    let doc = ts.store.document(kind, "x").await.unwrap().unwrap();
    assert_eq!((doc.version, doc.json.as_str()), (2, "{\"n\":2}"));
    assert!(ts.store.documents_version(kind).await.unwrap() >= v0 + 2);
    let listed = ts.store.documents(kind).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["x"]
    );
    assert!(ts.store.delete_document(kind, "x").await.unwrap());
    assert!(!ts.store.delete_document(kind, "x").await.unwrap());
    assert_eq!(ts.store.document(kind, "x").await.unwrap(), None);
}

/// A subscription is replaced only over the version its writer read, and
/// every change raises the subscriptions' version.
async fn subscriptions_compare_and_set(ts: &TestStore) {
    let mut sub: Subscription = serde_json::from_str(
        r#"{"id":"cas","url":"https://example.com/h","resources":["*"],"ops":[],"start":{},"headers":{},"batch_size":1,"rate_limit":null,"enabled":true,"description":"","secret":"whsec_x","previous_secret":null,"created_ms":1,"updated_ms":1}"#,
    )
    .unwrap();
    let v0 = ts.store.subscriptions_version().await.unwrap();
    ts.store.put_subscription(&sub).await.unwrap();
    let v1 = ts.store.subscriptions_version().await.unwrap();
    assert!(v1 > v0, "a new subscription raises the version");
    let stored = ts.store.subscription("cas").await.unwrap().unwrap();
    let read = stored.version;
    sub.description = "changed".into();
    sub.version = read + 1;
    assert!(ts.store.replace_subscription(&sub, read).await.unwrap());
    assert!(
        !ts.store.replace_subscription(&sub, read).await.unwrap(),
        "stale"
    );
    assert!(ts.store.subscriptions_version().await.unwrap() > v1);
    let now = ts.store.subscription("cas").await.unwrap().unwrap();
    assert_eq!(now.description, "changed");
    assert!(ts.store.delete_subscription("cas").await.unwrap());
    assert!(ts.store.subscription("cas").await.unwrap().is_none());
}

fn dead_letter(t: &Target, at: StreamId) -> DeadLetter {
    DeadLetter {
        target: t.to_string(),
        id: at.to_string(),
        event_id: format!("{}:{}:r:{}", t.source, t.resource, at.stamp),
        attempts: 3,
        last_error: "HTTP 500".into(),
        at_ms: at.stamp,
    }
}
