//! The store's promises (`stamp_relay::store::contract`, written once; the
//! library's unit tests run them on the in-memory engine) on the engines
//! that need a server or a file: Redis, a Redis Cluster and the embedded
//! SQLite file. Also here: Redis's Lua and Rust readings of an index entry
//! agree.

use stamp_relay::{
    events::{self, IndexEntry, StreamId},
    store::contract,
};

use crate::harness::{Backend, TestStore};

async fn contract_suite(ts: &TestStore) {
    contract::suite(&*ts.store).await;
}

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

fn id(stamp: u64, seq: u64) -> StreamId {
    StreamId { stamp, seq }
}
