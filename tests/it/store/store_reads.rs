//! The store's refusals are data, and its reads write nothing (issue 22):
//! an append under a lost lease or another epoch answers a [`Refusal`];
//! `pending()` leaves out entries whose events are gone without removing
//! them (Redis's `INFO commandstats` shows no write), and the trim that
//! removed their events drops them. One append classifies each record
//! against the version before it, also one earlier in the same batch.

use stamp_relay::{
    events::StreamId,
    record::UpstreamRecord,
    store::{Refusal, Table, redis::Keys},
    subscription::Subscription,
};

use crate::harness::{TestStore, append_as, leased_table, record};
use crate::on_both_stores;

on_both_stores!(
    an_append_under_another_epoch_is_refused_as_data,
    a_pending_read_writes_nothing_and_the_trim_drops_what_it_removed,
    one_append_classifies_each_version_against_the_one_before_it
);

/// Appends `records` as holder `me` under `epoch`; answers how many went in.
async fn append(
    ts: &TestStore,
    t: &Table,
    epoch: &str,
    records: &[UpstreamRecord],
) -> Result<u64, stamp_relay::store::StoreError> {
    Ok(append_as(ts, t, "me", epoch, records).await?.appended())
}

async fn an_append_under_another_epoch_is_refused_as_data(ts: TestStore) {
    let (t, epoch) = leased_table(&ts, "sim", "patients").await;
    assert_eq!(append(&ts, &t, &epoch, &[record("a", 1)]).await.unwrap(), 1);
    let refused = append(&ts, &t, "e0", &[record("b", 2)]).await.unwrap_err();
    assert_eq!(refused.refusal(), Some(Refusal::EpochChanged), "{refused}");
    assert!(
        refused.to_string().contains("sim/patients"),
        "names the table: {refused}"
    );
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 1);
}

/// Calls of the commands that change a hash, a stream or a key, on the
/// server at `url`.
async fn writes(url: &str) -> u64 {
    let stats = stamp_relay::bench::sources::commandstats(url)
        .await
        .unwrap();
    let cmds = [
        "hdel", "hset", "del", "xdel", "xack", "xtrim", "evalsha", "eval",
    ];
    cmds.iter().filter_map(|c| stats.get(*c)).sum()
}

async fn a_pending_read_writes_nothing_and_the_trim_drops_what_it_removed(ts: TestStore) {
    let (t, epoch) = leased_table(&ts, "sim", "patients").await;
    let records: Vec<_> = (1..=4).map(|i| record(&format!("r{i}"), i)).collect();
    assert_eq!(append(&ts, &t, &epoch, &records).await.unwrap(), 4);
    let sub: Subscription = serde_json::from_str(
        r#"{"id":"a","url":"https://example.com/h","resources":["*"],"ops":[],"start":{},"headers":{},"batch_size":1,"rate_limit":null,"enabled":true,"description":"","secret":"whsec_x","previous_secret":null,"created_ms":1,"updated_ms":1}"#,
    )
    .unwrap();
    ts.store.put_subscription(&sub).await.unwrap();
    let claimed = ts.store.claim("a", &t, StreamId::ZERO, 3).await.unwrap();
    assert_eq!(claimed.len(), 3);
    if let Some(redis) = &ts.redis {
        // The stream loses its first entry behind the store's back: a read
        // leaves its pending entry out, and removes nothing.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys = Keys::new(&ts.config.key_prefix, &t);
        let _: i64 = redis::cmd("XTRIM")
            .arg(&keys.events)
            .arg("MINID")
            .arg("2-0")
            .query_async(&mut c)
            .await
            .unwrap();
        let before = writes(&redis.url()).await;
        let pending = ts.store.pending("a", &t).await.unwrap();
        assert_eq!(
            pending.len(),
            2,
            "the entry whose event is gone is left out"
        );
        assert_eq!(
            writes(&redis.url()).await,
            before,
            "pending() wrote to Redis"
        );
        let kept: u64 = redis::cmd("HLEN")
            .arg(keys.pending("a"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(kept, 3, "a read removed pending entries");
    }
    // Redis: 2-0 is left to remove (1-0 is gone already); SQLite: both.
    assert!(ts.store.trim(&t, StreamId::new(3, 0)).await.unwrap() >= 1);
    let pending = ts.store.pending("a", &t).await.unwrap();
    let ids: Vec<StreamId> = pending.iter().map(|(e, _)| e.id).collect();
    assert_eq!(ids, [StreamId::new(3, 0)]);
    assert_eq!(
        ts.store.waiting_retries("a", &t).await.unwrap(),
        0,
        "nothing of the removed events waits"
    );
    if let Some(redis) = &ts.redis {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let left: u64 = redis::cmd("HLEN")
            .arg(Keys::new(&ts.config.key_prefix, &t).pending("a"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            left, 1,
            "the trim dropped the pending entries of the events it removed"
        );
    }
}

/// A batch holding a record's stored version again, a newer one, and that
/// newer one again: each is compared with the version before it, the last
/// with the one appended earlier in the same batch.
async fn one_append_classifies_each_version_against_the_one_before_it(ts: TestStore) {
    let (t, epoch) = leased_table(&ts, "sim", "patients").await;
    assert_eq!(append(&ts, &t, &epoch, &[record("a", 1)]).await.unwrap(), 1);
    let records = [
        record("a", 1),
        record("b", 2),
        record("a", 3),
        record("a", 3),
    ];
    let out = append_as(&ts, &t, "me", &epoch, &records).await.unwrap();
    assert_eq!((out.appended(), out.duplicates), (2, 2), "{out:?}");
    let events = ts.store.read(&t, StreamId::ZERO, 10).await.unwrap();
    let seen: Vec<(String, String, Option<u64>)> = events
        .iter()
        .map(|e| (e.record.clone(), e.op.as_str().to_string(), e.prev))
        .collect();
    let want = [
        ("a", "created", None),
        ("b", "created", None),
        ("a", "updated", Some(1)),
    ]
    .map(|(r, op, prev)| (r.to_string(), op.to_string(), prev));
    assert_eq!(seen, want);
    let entry = ts.store.index_entry(&t, "a").await.unwrap().unwrap();
    assert_eq!(entry.stamp, 3);
}
