//! The latest-record store on Redis (README.md, "The Redis layout"):
//! `P:{s:r}:records`, a hash of record id -> `<index entry> <record JSON>`,
//! and `P:{s:r}:stamps`, a sorted set of record id by latest stamp, both
//! written by `append.lua` beside the stream and the index (one hash tag,
//! one slot on a cluster). Listings read both in one script, so a page is
//! one consistent snapshot.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::RedisStore;
use crate::events::StreamId;
use crate::store::records::{RecordStore, RecordsPage, RecordsQuery, StoredRecord, decode_value};
use crate::store::{StoreResult, Target};

/// Fills the records of one chunk of the stream: each entry that is its
/// record's latest version (the index holds its stamp) and is missing.
/// KEYS: events, index, records, stamps. ARGV: after (exclusive ID), count.
/// Returns {filled, last ID read ('' at the end)}.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local filled = 0
for _, e in ipairs(entries) do
  local f = {}
  for i = 1, #e[2], 2 do
    f[e[2][i]] = e[2][i + 1]
  end
  local idx = redis.call('HGET', KEYS[2], f.record)
  if idx then
    local stamp = string.match(idx, '^(%d+)')
    if stamp == f.stamp and redis.call('HEXISTS', KEYS[3], f.record) == 0 then
      redis.call('HSET', KEYS[3], f.record, idx .. ' ' .. f.data)
      redis.call('ZADD', KEYS[4], stamp, f.record)
      filled = filled + 1
    end
  end
end
local last = ''
if #entries > 0 then
  last = entries[#entries][1]
end
return {filled, last}
"#,
    )
});

/// One page of a listing. KEYS: stamps, records, events. ARGV: above,
/// until ('' for the stream's top stamp), after, offset, limit.
/// Returns {count, until, last ID, ids, values}.
static PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then
  last_id = last[1][1]
end
local untl = ARGV[2]
if untl == '' then
  untl = string.match(last_id, '^(%d+)')
end
local count = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], untl)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], untl, 'LIMIT', ARGV[4], ARGV[5])
local values = {}
if #ids > 0 then
  values = redis.call('HMGET', KEYS[2], unpack(ids))
end
return {count, untl, last_id, ids, values}
"#,
    )
});

const FILL_CHUNK: usize = 1000;

impl RedisStore {
    /// Before the first append of this process to `t`: drops the records of
    /// a table that no longer keeps them, or fills those of a table whose
    /// events predate the store (fewer records than index entries).
    pub(super) async fn ready_records(&self, t: &Target) -> StoreResult<()> {
        if !self.keep.first_use(t) {
            return Ok(());
        }
        let done = self.fill_or_drop(t).await;
        if done.is_err() {
            self.keep.not_ready(t);
        }
        done
    }

    async fn fill_or_drop(&self, t: &Target) -> StoreResult<()> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        if !self.keep.keeps(t) {
            let _: () = c
                .del(&[&keys.records, &keys.stamps])
                .await
                .map_err(|e| self.err(e))?;
            return Ok(());
        }
        let kept: u64 = c.hlen(&keys.records).await.map_err(|e| self.err(e))?;
        let indexed: u64 = c.hlen(&keys.index).await.map_err(|e| self.err(e))?;
        if kept >= indexed {
            return Ok(());
        }
        let (mut after, mut filled) = ("0-0".to_string(), 0u64);
        loop {
            let (n, last): (u64, String) = FILL
                .key(&keys.events)
                .key(&keys.index)
                .key(&keys.records)
                .key(&keys.stamps)
                .arg(&after)
                .arg(FILL_CHUNK)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            filled += n;
            if last.is_empty() {
                break;
            }
            after = last;
        }
        let short = indexed.saturating_sub(kept + filled);
        tracing::info!(target = %t, filled, "filled the latest-record store from the stream");
        if short > 0 {
            tracing::warn!(target = %t, missing = short, "retention removed the events of some records before records were kept; `stamp-relay sync --reconcile` fills them in");
        }
        Ok(())
    }

    /// Whether appends to `t` write the records: "1" or "0" for append.lua.
    pub(super) fn keep_arg(&self, t: &Target) -> &'static str {
        if self.keep.keeps(t) { "1" } else { "0" }
    }
}

type PageReply = (u64, u64, String, Vec<String>, Vec<Option<String>>);

#[async_trait]
impl RecordStore for RedisStore {
    fn keep_records(&self, t: &Target, keep: bool) {
        self.keep.set(t, keep);
    }

    async fn record(&self, t: &Target, id: &str) -> StoreResult<Option<StoredRecord>> {
        let mut c = self.conn.clone();
        let v: Option<String> = c
            .hget(self.keys(t).records, id)
            .await
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|v| decode_value(id, &v)))
    }

    async fn records(&self, t: &Target, q: RecordsQuery) -> StoreResult<RecordsPage> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        let (count, until, last, ids, values): PageReply = PAGE
            .key(&keys.stamps)
            .key(&keys.records)
            .key(&keys.events)
            .arg(q.above)
            .arg(q.until.map(|u| u.to_string()).unwrap_or_default())
            .arg(q.after.unwrap_or(q.above).max(q.above))
            .arg(q.offset)
            .arg(q.limit)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        let records = ids
            .iter()
            .zip(values)
            .filter_map(|(id, v)| decode_value(id, &v?))
            .collect();
        Ok(RecordsPage {
            count,
            until,
            last_id: last.parse().unwrap_or(StreamId::ZERO),
            records,
        })
    }
}
