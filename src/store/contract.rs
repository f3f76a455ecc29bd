//! The store's promises, stated once as a suite every engine runs (issue
//! 22): the in-memory engine in the library's unit tests, and Redis, a Redis
//! Cluster and the embedded SQLite file in `tests/it/store/store_contract.rs`.
//! A new engine is an engine plus a green run of [`suite`].
//!
//! Each promise works on its own tables and subscriptions, so the suite
//! runs on one store per engine: ordering and idempotent appends, the
//! lease and epoch guards as refusals, trims that keep the index, leases,
//! the claim → pending → settle cycle of delivery, and compare-and-set on
//! documents and subscriptions.
//!
//! Test support, not part of the relay: it panics on a broken promise. It is
//! compiled into the library so the integration tests can run it, and needs
//! nothing beyond the library's own dependencies.

use std::time::Duration;

use super::{AppendBatch, Refusal, Store, StoreError, Table};
use crate::{
    events::{AppendOutcome, Event, Op, StreamId},
    record::UpstreamRecord,
    subscription::{
        Subscription,
        state::{DeadLetter, RetryState},
    },
};

/// Record `id` at `stamp`, as an upstream would send it.
pub fn record(id: &str, stamp: u64) -> UpstreamRecord {
    let raw = format!(r#"{{"uuid":"{id}","update_stamp":{stamp}}}"#);
    UpstreamRecord {
        id: id.into(),
        stamp,
        deleted: false,
        raw: serde_json::value::RawValue::from_string(raw).expect("a record's JSON"),
    }
}

/// Table `source/resource` with its epoch made and the lease held by `me`,
/// for suites that append to the store directly; answers the epoch.
pub async fn leased_table(store: &dyn Store, source: &str, resource: &str) -> (Table, String) {
    let t = Table::new(source, resource);
    let epoch = store.init_epoch(&t, "e1").await.unwrap();
    let leased = store.lease(&t, "me", Duration::from_secs(30));
    assert!(leased.await.unwrap(), "{t}: a new table's lease is free");
    (t, epoch)
}

/// Appends `records` to `t` as `holder` under `epoch`, observed at 7 ms.
pub async fn append_as(
    store: &dyn Store,
    t: &Table,
    holder: &str,
    epoch: &str,
    records: &[UpstreamRecord],
) -> Result<AppendOutcome, StoreError> {
    let batch = AppendBatch {
        holder,
        epoch,
        snapshot: false,
        observed: 7,
        records,
        rebase: false,
    };
    store.append(t, batch).await
}

/// Every promise, in turn, on one store.
pub async fn suite(store: &dyn Store) {
    appends_are_ordered_and_idempotent(store).await;
    late_and_older_versions_are_told_apart(store).await;
    guards_refuse_as_data(store).await;
    epochs_are_read_in_one_batch(store).await;
    trims_remove_events_and_keep_the_index(store).await;
    leases_are_exclusive_until_released_or_expired(store).await;
    claims_move_entries_through_pending(store).await;
    documents_compare_and_set(store).await;
    subscriptions_compare_and_set(store).await;
}

fn id(stamp: u64, seq: u64) -> StreamId {
    StreamId { stamp, seq }
}

/// A table of this suite with its epoch and the lease held by `me`.
async fn table(store: &dyn Store, name: &str) -> (Table, String) {
    leased_table(store, "contract", name).await
}

async fn append(
    store: &dyn Store,
    t: &Table,
    epoch: &str,
    records: &[UpstreamRecord],
) -> AppendOutcome {
    append_as(store, t, "me", epoch, records).await.unwrap()
}

/// Appends come back in stream order, one event per new version, and a
/// batch appended again adds nothing.
async fn appends_are_ordered_and_idempotent(store: &dyn Store) {
    let (t, epoch) = table(store, "ordered").await;
    let batch = [record("a", 1), record("b", 2), record("c", 3)];
    let first = append(store, &t, &epoch, &batch).await;
    assert_eq!((first.created, first.appended()), (3, 3));
    let again = append(store, &t, &epoch, &batch).await;
    assert_eq!((again.duplicates, again.appended()), (3, 0));
    let changed = append(store, &t, &epoch, &[record("b", 5)]).await;
    assert_eq!(changed.updated, 1);
    let mut gone = record("c", 6);
    gone.deleted = true;
    assert_eq!(append(store, &t, &epoch, &[gone]).await.deleted, 1);

    let events = store.read(&t, StreamId::ZERO, 100).await.unwrap();
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
    assert_eq!(store.last_id(&t).await.unwrap(), id(6, 0));
    let after = store.read(&t, id(2, 0), 2).await.unwrap();
    let ids: Vec<StreamId> = after.iter().map(|e| e.id).collect();
    assert_eq!(ids, [id(3, 0), id(5, 0)], "strictly after, at most limit");
    let back = |before, limit| store.read_back(&t, before, limit);
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
    assert_eq!(store.stream_len(&t).await.unwrap(), 5);
    assert_eq!(store.index_len(&t).await.unwrap(), 3);
    let entry = store.index_entry(&t, "c").await.unwrap().unwrap();
    assert_eq!((entry.stamp, entry.deleted), (6, true));
}

/// A version below the top that the index lacks is a late event above the
/// top; one below the record's own indexed stamp is a regression and is
/// not appended.
async fn late_and_older_versions_are_told_apart(store: &dyn Store) {
    let (t, epoch) = table(store, "late").await;
    append(store, &t, &epoch, &[record("a", 1), record("b", 10)]).await;
    let late = append(store, &t, &epoch, &[record("a", 4)]).await;
    assert_eq!((late.updated, late.late), (1, 1));
    let last = store.last_id(&t).await.unwrap();
    assert_eq!(last, id(10, 1), "a late event goes on top as <top>-<seq+1>");
    let entry = store.index_entry(&t, "a").await.unwrap().unwrap();
    assert_eq!((entry.stamp, entry.at), (4, Some(id(10, 1))));
    let older = append(store, &t, &epoch, &[record("b", 3)]).await;
    assert_eq!((older.regressions, older.appended()), (1, 0));
    assert_eq!(store.last_id(&t).await.unwrap(), id(10, 1));
}

/// An append without the lease, or under another epoch, is refused as
/// data naming the table, and appends nothing.
async fn guards_refuse_as_data(store: &dyn Store) {
    let (t, epoch) = table(store, "guards").await;
    let lost = append_as(store, &t, "other", &epoch, &[record("a", 1)]).await;
    let lost = lost.unwrap_err();
    assert_eq!(lost.refusal(), Some(Refusal::LeaseLost), "{lost}");
    assert!(lost.to_string().contains("contract/guards"), "{lost}");
    let moved = append_as(store, &t, "me", "e0", &[record("a", 1)]).await;
    assert_eq!(moved.unwrap_err().refusal(), Some(Refusal::EpochChanged));
    assert_eq!(store.stream_len(&t).await.unwrap(), 0);
    assert_eq!(store.init_epoch(&t, "e2").await.unwrap(), epoch);
}

/// `epochs` answers each table's epoch in the order asked, none for a
/// table never used, like `epoch` one by one.
async fn epochs_are_read_in_one_batch(store: &dyn Store) {
    let (a, ea) = table(store, "epochs-a").await;
    let (b, eb) = table(store, "epochs-b").await;
    let never = Table::new("contract", "epochs-never");
    let asked = [b.clone(), never.clone(), a.clone()];
    let got = store.epochs(&asked).await.unwrap();
    assert_eq!(got, vec![Some(eb), None, Some(ea)]);
    for (t, e) in asked.iter().zip(&got) {
        assert_eq!(&store.epoch(t).await.unwrap(), e, "{t}");
    }
    assert!(store.epochs(&[]).await.unwrap().is_empty());
}

/// A trim removes the events before the first kept one and remembers the
/// last it removed; the index still knows every record.
async fn trims_remove_events_and_keep_the_index(store: &dyn Store) {
    let (t, epoch) = table(store, "trims").await;
    let records: Vec<_> = (1..=5).map(|i| record(&format!("r{i}"), i)).collect();
    append(store, &t, &epoch, &records).await;
    assert_eq!(store.trimmed_through(&t).await.unwrap(), StreamId::ZERO);
    assert_eq!(store.trim(&t, id(4, 0)).await.unwrap(), 3);
    assert_eq!(store.trimmed_through(&t).await.unwrap(), id(3, 0));
    let (before, page, later) = store
        .read_between_trims(&t, StreamId::ZERO, 10)
        .await
        .unwrap();
    let ids: Vec<StreamId> = page.iter().map(|e| e.id).collect();
    assert_eq!(
        (before, ids, later),
        (id(3, 0), vec![id(4, 0), id(5, 0)], id(3, 0))
    );
    assert_eq!(store.stream_len(&t).await.unwrap(), 2);
    assert_eq!(store.index_len(&t).await.unwrap(), 5);
    let again = append(store, &t, &epoch, &[record("r1", 1)]).await;
    assert_eq!(again.duplicates, 1, "a trimmed version is still known");
}

/// One holder at a time: the holder extends, others wait for a release or
/// the expiry.
async fn leases_are_exclusive_until_released_or_expired(store: &dyn Store) {
    let t = Table::new("contract", "leases");
    let short = Duration::from_millis(300);
    assert!(store.lease(&t, "a", short).await.unwrap());
    assert!(!store.lease(&t, "b", short).await.unwrap());
    assert!(store.lease(&t, "a", short).await.unwrap(), "extends");
    store.release(&t, "b").await.unwrap();
    assert!(!store.lease(&t, "b", short).await.unwrap(), "not b's");
    store.release(&t, "a").await.unwrap();
    assert!(store.lease(&t, "b", short).await.unwrap());
    tokio::time::sleep(short * 3).await;
    assert!(store.lease(&t, "a", short).await.unwrap(), "expired");
}

/// Claims move entries past the position into the pending set; settling
/// removes them, a retry keeps its state, a redrive puts them back, one
/// dead letter is removed alone, and
/// forgetting the subscription removes all of it.
async fn claims_move_entries_through_pending(store: &dyn Store) {
    let (t, epoch) = table(store, "claims").await;
    let records: Vec<_> = (1..=5).map(|i| record(&format!("r{i}"), i)).collect();
    append(store, &t, &epoch, &records).await;
    let s = "claimer";
    let ids = |events: Vec<Event>| -> Vec<u64> { events.iter().map(|e| e.id.stamp).collect() };
    assert_eq!(store.position(s, &t).await.unwrap(), None);
    let first = store.claim(s, &t, StreamId::ZERO, 2).await.unwrap();
    assert_eq!(ids(first), [1, 2]);
    assert_eq!(store.position(s, &t).await.unwrap(), Some(id(2, 0)));
    let next = store.claim(s, &t, StreamId::ZERO, 2).await.unwrap();
    assert_eq!(ids(next), [3, 4]);
    store.settle(s, &t, &[id(1, 0), id(3, 0)]).await.unwrap();
    let later = RetryState {
        attempts: 2,
        next_at_ms: u64::MAX / 2,
    };
    store.retry_later(s, &t, id(2, 0), later).await.unwrap();
    let pending = store.pending(s, &t).await.unwrap();
    let seen: Vec<(u64, u32)> = pending
        .iter()
        .map(|(e, r)| (e.id.stamp, r.attempts))
        .collect();
    assert_eq!(seen, [(2, 2), (4, 0)], "stream order, retry state kept");
    assert_eq!(store.waiting_retries(s, &t).await.unwrap(), 1);
    store.settle(s, &t, &[id(2, 0), id(4, 0)]).await.unwrap();
    store.add_pending(s, &t, &[id(3, 0)]).await.unwrap();
    let back = store.pending(s, &t).await.unwrap();
    assert_eq!(
        back.iter().map(|(e, _)| e.id.stamp).collect::<Vec<_>>(),
        [3]
    );
    for at in [1, 2] {
        let d = dead_letter(&t, id(at, 0));
        store.dead_letter(s, &d).await.unwrap();
    }
    let key = dead_letter(&t, id(1, 0)).key();
    assert!(store.remove_dead_letter(s, &key).await.unwrap());
    assert!(!store.remove_dead_letter(s, &key).await.unwrap());
    let left = store.dead_letters(s).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["2-0"]
    );
    store.reposition(s, &t, StreamId::ZERO).await.unwrap();
    let again = store.claim(s, &t, StreamId::ZERO, 1).await.unwrap();
    assert_eq!(ids(again), [1]);
    store
        .forget_subscription(s, std::slice::from_ref(&t))
        .await
        .unwrap();
    assert_eq!(store.position(s, &t).await.unwrap(), None);
    assert!(store.pending(s, &t).await.unwrap().is_empty());
}

/// A document is written only over the version its writer read; each
/// write raises the kind's counter.
async fn documents_compare_and_set(store: &dyn Store) {
    let kind = "contract";
    let v0 = store.documents_version(kind).await.unwrap();
    let put = |json: &'static str, expected: u64| store.put_document(kind, "x", json, expected);
    assert_eq!(put("{\"n\":1}", 0).await.unwrap(), Some(1));
    assert_eq!(put("{\"n\":2}", 0).await.unwrap(), None, "exists");
    assert_eq!(put("{\"n\":2}", 1).await.unwrap(), Some(2));
    assert_eq!(put("{\"n\":3}", 1).await.unwrap(), None, "stale");
    let doc = store.document(kind, "x").await.unwrap().unwrap();
    assert_eq!((doc.version, doc.json.as_str()), (2, "{\"n\":2}"));
    assert!(store.documents_version(kind).await.unwrap() >= v0 + 2);
    let listed = store.documents(kind).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["x"]
    );
    assert!(store.delete_document(kind, "x").await.unwrap());
    assert!(!store.delete_document(kind, "x").await.unwrap());
    assert_eq!(store.document(kind, "x").await.unwrap(), None);
}

/// A subscription is replaced only over the version its writer read, and
/// every change raises the subscriptions' version.
async fn subscriptions_compare_and_set(store: &dyn Store) {
    let mut sub: Subscription = serde_json::from_str(
        r#"{"id":"cas","url":"https://example.com/h","resources":["*"],"ops":[],"start":{},"headers":{},"batch_size":1,"rate_limit":null,"enabled":true,"description":"","secret":"whsec_x","previous_secret":null,"created_ms":1,"updated_ms":1}"#,
    )
    .unwrap();
    let v0 = store.subscriptions_version().await.unwrap();
    store.put_subscription(&sub).await.unwrap();
    let v1 = store.subscriptions_version().await.unwrap();
    assert!(v1 > v0, "a new subscription raises the version");
    let stored = store.subscription("cas").await.unwrap().unwrap();
    let read = stored.version;
    sub.description = "changed".into();
    sub.version = read + 1;
    assert!(store.replace_subscription(&sub, read).await.unwrap());
    assert!(
        !store.replace_subscription(&sub, read).await.unwrap(),
        "stale"
    );
    assert!(store.subscriptions_version().await.unwrap() > v1);
    let now = store.subscription("cas").await.unwrap().unwrap();
    assert_eq!(now.description, "changed");
    assert!(store.delete_subscription("cas").await.unwrap());
    assert!(store.subscription("cas").await.unwrap().is_none());
}

fn dead_letter(t: &Table, at: StreamId) -> DeadLetter {
    DeadLetter {
        table: t.to_string(),
        id: at.to_string(),
        event_id: format!("{}:{}:r:{}", t.source, t.resource, at.stamp),
        attempts: 3,
        last_error: "HTTP 500".into(),
        at_ms: at.stamp,
    }
}

#[cfg(test)]
mod tests {
    /// The promises on the in-memory engine: the same suite the integration
    /// tests run on Redis, a Redis Cluster and the SQLite file.
    #[tokio::test]
    async fn the_in_memory_engine_keeps_every_promise() {
        let store = crate::store::sqlite::SqliteStore::in_memory().unwrap();
        super::suite(&store).await;
    }
}
