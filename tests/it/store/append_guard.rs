//! The Redis append reads, plans in Rust and applies the plan under a
//! guard (`src/store/redis/append_apply.lua`): the plan is written only
//! while the lease and the epoch hold and the stream's last generated ID
//! and the trimmed marker are what the read saw. A trim between the read
//! and the apply is refused as `RACED` (the store reads and plans again),
//! never applied over a state the plan did not see.

use stamp_relay::store::{
    Table,
    contract::{append_as, leased_table, record},
    redis::Keys,
};

use crate::harness::{Backend, TestStore};

/// `append_apply.lua` with the guard `(issued, trimmed)` and one planned
/// event `3-0` creating record `c`, as the table's lease holder `holder`.
fn apply(keys: &Keys, holder: &str, epoch: &str, issued: &str, trimmed: &str) -> redis::Cmd {
    let mut eval = redis::cmd("EVAL");
    let append = keys.append();
    eval.arg(include_str!("../../../src/store/redis/append_apply.lua"))
        .arg(append.len())
        .arg(&append[..]);
    eval.arg(holder).arg(epoch).arg(issued).arg(trimmed).arg("");
    eval.arg("0").arg("7").arg(1).arg(1).arg(0);
    eval.arg("3-0")
        .arg("created")
        .arg("c")
        .arg(3)
        .arg("")
        .arg("")
        .arg("{}");
    eval.arg("c").arg("3");
    eval
}

/// A Redis store with table `s/r` leased to `me` and holding `a` at 1 and
/// `b` at 2 (one append of records new to the index), the table's keys
/// and a connection of the test's own to the server.
async fn leased() -> Option<(
    TestStore,
    Table,
    String,
    Keys,
    redis::aio::MultiplexedConnection,
)> {
    let ts = TestStore::open(Backend::Redis).await?;
    let (t, epoch) = leased_table(&*ts.store, "s", "r").await;
    append_as(
        &*ts.store,
        &t,
        "me",
        &epoch,
        &[record("a", 1), record("b", 2)],
    )
    .await
    .unwrap();
    let keys = Keys::new(&ts.config.key_prefix, &t);
    let c = redis::Client::open(ts.redis.as_ref().unwrap().url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Some((ts, t, epoch, keys, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_applied_only_over_the_state_it_was_made_from() {
    let Some((ts, t, epoch, keys, mut c)) = leased().await else {
        return;
    };
    let store = &*ts.store;
    // What a read before the trim saw: issued 2-0, no trimmed marker.
    let stale = apply(&keys, "me", &epoch, "2-0", "");
    store.trim(&t, "2-0".parse().unwrap()).await.unwrap();
    let code = |r: redis::RedisResult<i64>| r.unwrap_err().code().map(str::to_string);
    let raced = stale.query_async::<i64>(&mut c).await;
    assert_eq!(
        code(raced).as_deref(),
        Some("RACED"),
        "a trim moved the marker"
    );
    let raced = apply(&keys, "me", &epoch, "1-0", "1-0")
        .query_async::<i64>(&mut c)
        .await;
    assert_eq!(code(raced).as_deref(), Some("RACED"), "the stream moved");
    let lost = apply(&keys, "other", &epoch, "2-0", "1-0")
        .query_async::<i64>(&mut c)
        .await;
    assert_eq!(code(lost).as_deref(), Some("LEASELOST"));
    let moved = apply(&keys, "me", "e0", "2-0", "1-0")
        .query_async::<i64>(&mut c)
        .await;
    assert_eq!(code(moved).as_deref(), Some("EPOCHCHANGED"));
    assert_eq!(store.stream_len(&t).await.unwrap(), 1, "nothing applied");
    assert_eq!(store.index_entry(&t, "c").await.unwrap(), None);
    // The same plan over what the store now holds is applied.
    let applied: i64 = apply(&keys, "me", &epoch, "2-0", "1-0")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(applied, 1);
    assert_eq!(store.last_id(&t).await.unwrap().to_string(), "3-0");
    assert_eq!(
        store.index_entry(&t, "c").await.unwrap().map(|e| e.stamp),
        Some(3)
    );
    // The store reads and plans again after the trim: its next append
    // goes above the applied one.
    let out = append_as(store, &t, "me", &epoch, &[record("d", 2)])
        .await
        .unwrap();
    assert_eq!(out.late, 1);
    assert_eq!(store.last_id(&t).await.unwrap().to_string(), "3-1");
}

/// The number of `EVALSHA` calls the server at `url` has run.
async fn script_calls(url: &str) -> u64 {
    let stats = stamp_relay::bench::sources::commandstats(url)
        .await
        .unwrap();
    stats.get("evalsha").copied().expect("EVALSHA ran")
}

/// After a chunk of records all new to the index, the table's next chunk
/// is planned on the stream as that append left it, without a read
/// (`src/store/redis/append.rs`): one script call. The apply checks the
/// records it took as new are absent from the index; one that is there
/// sends the append back to read and plan, so it is classified against
/// its indexed version, never appended as created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_load_chunk_skips_the_read_and_reads_when_a_record_is_held() {
    let Some((ts, t, epoch, keys, mut c)) = leased().await else {
        return;
    };
    let url = ts.redis.as_ref().unwrap().url();
    let store = &*ts.store;
    let before = script_calls(&url).await;
    let out = append_as(store, &t, "me", &epoch, &[record("c", 3), record("d", 4)])
        .await
        .unwrap();
    assert_eq!(out.created, 2);
    assert_eq!(
        script_calls(&url).await - before,
        1,
        "an all-new chunk after an all-new chunk is one round trip"
    );
    assert_eq!(store.last_id(&t).await.unwrap().to_string(), "4-0");

    // Record `e` reaches the index behind the store's back (as a version
    // another writer appended would): the next chunk, which the store
    // takes as new, must find it there.
    let _: i64 = redis::cmd("HSET")
        .arg(&keys.index)
        .arg("e")
        .arg("5")
        .query_async(&mut c)
        .await
        .unwrap();
    let out = append_as(store, &t, "me", &epoch, &[record("e", 5), record("f", 6)])
        .await
        .unwrap();
    assert_eq!(
        (out.created, out.duplicates),
        (1, 1),
        "e is the version the index holds"
    );
    assert_eq!(store.stream_len(&t).await.unwrap(), 5);
    let out = append_as(store, &t, "me", &epoch, &[record("e", 7)])
        .await
        .unwrap();
    assert_eq!(
        (out.created, out.updated),
        (0, 1),
        "e is updated, not created"
    );
    assert_eq!(
        store.index_entry(&t, "e").await.unwrap().map(|e| e.stamp),
        Some(7)
    );
}
