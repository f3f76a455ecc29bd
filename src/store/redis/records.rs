//! The latest-record store on Redis (docs/redis-layout.md). The
//! index already points at each record's latest version (`<stamp>`, or
//! `<stamp>@<stream ID>` for a late event), and the stream holds it, so an
//! append copies no record: it writes a set only for a late event, and
//! for an update whose old version's event retention removed. Besides:
//!
//! - `P:{s:r}:records`, record id -> `<stamp>[:deleted] <JSON>`: the last
//!   version of each record whose event retention removed (trim.lua), so
//!   lookups, listings and previous values outlive the events;
//! - `P:{s:r}:stamps`, the records whose latest version is only there, and
//!   `P:{s:r}:late`, those whose latest version is a late event, each by
//!   stamp: with the stream's `<stamp>-0` entries, three sources in stamp
//!   order that a listing merges (records.lua);
//! - `P:{s:r}:kept`, set once the two sets are complete for the table.
//!
//! The reads are one script (`records.lua`): a lookup is one call, a
//! listing page as many short calls as it takes (each reading up to a
//! frontier stamp). A page read while appends land is not one snapshot:
//! a record that changes between two calls may be left out (its new stamp
//! above `until`, as the compatible API's own snapshot rule says) or, when
//! the change is a late event below `until`, come twice, older version
//! first (readers keep the highest stamp, docs/resync.md).

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::RedisStore;
use crate::events::{Event, StreamId};
use crate::store::records::{
    RecordStore, RecordsPage, RecordsQuery, StoredRecord, decode_value, replaced,
};
use crate::store::{StoreResult, Table};

static READS: LazyLock<Script> =
    LazyLock::new(|| super::lua::with_lib(include_str!("records.lua")));

/// Index entries `complete` reads per call, and stream entries per count call.
const CHUNK: usize = 1000;

impl RedisStore {
    /// The script with the table's keys, calling `function`.
    fn reads(&self, t: &Table, function: &str) -> redis::ScriptInvocation<'static> {
        let keys = self.keys(t);
        let mut inv = READS.prepare_invoke();
        inv.key(keys.events)
            .key(keys.index)
            .key(keys.records)
            .key(keys.stamps)
            .key(keys.late)
            .key(keys.trimmed)
            .key(keys.kept)
            .arg(function);
        inv
    }

    async fn complete_or_drop(&self, t: &Table) -> StoreResult<()> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        if !self.keep.keeps(t) {
            let _: () = c
                .del(&[&keys.records, &keys.stamps, &keys.late, &keys.kept])
                .await
                .map_err(|e| self.err(e))?;
            return Ok(());
        }
        let kept: Option<String> = c.get(&keys.kept).await.map_err(|e| self.err(e))?;
        if kept.is_some() {
            return Ok(());
        }
        let mut from = String::new();
        loop {
            let next: String = self
                .reads(t, "point_late")
                .arg(&from)
                .arg(CHUNK)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            if next.is_empty() {
                break;
            }
            from = next;
        }
        let (mut at, mut missing) = ("0".to_string(), 0u64);
        loop {
            let (next, lost): (String, u64) = self
                .reads(t, "complete")
                .arg(&at)
                .arg(CHUNK)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            missing += lost;
            if next == "0" {
                break;
            }
            at = next;
        }
        let state = if missing == 0 { "complete" } else { "partial" };
        let _: () = c.set(&keys.kept, state).await.map_err(|e| self.err(e))?;
        tracing::info!(target = %t, "the latest-record store is ready");
        if missing > 0 {
            tracing::warn!(target = %t, missing, "retention removed the events of some records before records were kept; `stamp-relay sync --reconcile` fills them in");
        }
        Ok(())
    }

    /// Whether `t` keeps the records: "1" or "0" for the scripts.
    pub(super) fn keep_arg(&self, t: &Table) -> &'static str {
        if self.keep.keeps(t) { "1" } else { "0" }
    }

    /// Records whose latest stamp is in `(above, until]`, summed over
    /// short script calls (a long count never blocks Redis for long).
    async fn count(&self, t: &Table, above: u64, until: u64) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        let (mut from, mut total) = (String::new(), 0u64);
        loop {
            let (n, next): (u64, String) = self
                .reads(t, "count")
                .arg(above)
                .arg(until)
                .arg(&from)
                .arg(CHUNK)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            total += n;
            if next.is_empty() {
                return Ok(total);
            }
            from = next;
        }
    }
}

/// {until, last ID, frontier, position to go on from, ids, index entries, JSONs}.
type PageReply = (
    u64,
    String,
    u64,
    String,
    Vec<String>,
    Vec<String>,
    Vec<String>,
);

/// Stream entries one page call reads at most (superseded versions
/// included), so a listing over a long history never blocks Redis long.
const PAGE_BUDGET: usize = 5000;

impl RedisStore {
    /// A listing page from as many short calls as it takes: each reads the
    /// three sources up to a frontier stamp, the next goes on from there.
    async fn page(&self, t: &Table, q: RecordsQuery) -> StoreResult<RecordsPage> {
        let mut c = self.conn.clone();
        let want = q.offset + q.limit.max(1);
        let (mut after, mut from) = (q.after.unwrap_or(q.above).max(q.above), String::new());
        let (mut until, mut last_id, mut records) = (q.until, None, Vec::new());
        loop {
            let (top, last, frontier, next, ids, idxs, datas): PageReply = self
                .reads(t, "page")
                .arg(until.map(|u| u.to_string()).unwrap_or_default())
                .arg(after)
                .arg(want - records.len())
                .arg(&from)
                .arg(PAGE_BUDGET)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            last_id.get_or_insert_with(|| last.parse().unwrap_or(StreamId::ZERO));
            until = Some(top);
            records.extend(
                ids.iter()
                    .zip(idxs)
                    .zip(datas)
                    .filter_map(|((id, idx), data)| decode_value(id, &idx, data)),
            );
            if records.len() >= want || next.is_empty() {
                break;
            }
            (after, from) = (frontier, next);
        }
        let until = until.unwrap_or_default();
        let count = match q.count {
            Some(n) => n,
            None => self.count(t, q.above, until).await?,
        };
        records.drain(..q.offset.min(records.len()));
        records.truncate(q.limit);
        Ok(RecordsPage {
            count,
            until,
            last_id: last_id.unwrap_or(StreamId::ZERO),
            records,
        })
    }
}

#[async_trait]
impl RecordStore for RedisStore {
    async fn read_back(
        &self,
        t: &Table,
        before: Option<StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let from = before.map_or_else(|| "+".to_string(), |b| format!("({b}"));
        self.range(t, ("XREVRANGE", from, "-"), limit).await
    }

    fn keep_records(&self, t: &Table, keep: bool) {
        self.keep.set(t, keep);
    }

    /// Drops the record store of a table that no longer keeps records, or
    /// completes its sets when they are not (the `kept` marker is missing:
    /// records were off until now).
    async fn ready_records(&self, t: &Table) -> StoreResult<()> {
        if !self.keep.first_use(t) {
            return Ok(());
        }
        let done = self.complete_or_drop(t).await;
        if done.is_err() {
            self.keep.not_ready(t);
        }
        done
    }

    async fn record(&self, t: &Table, id: &str) -> StoreResult<Option<StoredRecord>> {
        if !self.keep.keeps(t) {
            return Ok(None);
        }
        let mut c = self.conn.clone();
        let v: Option<(String, String)> = self
            .reads(t, "record")
            .arg(id)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(v.and_then(|(idx, data)| decode_value(id, &idx, data)))
    }

    async fn records(&self, t: &Table, q: RecordsQuery) -> StoreResult<RecordsPage> {
        self.page(t, q).await
    }

    async fn fill_previous(&self, t: &Table, events: &mut [Event]) -> StoreResult<()> {
        let wanted: Vec<(usize, u64, StreamId)> = (events.iter().enumerate())
            .filter_map(|(i, e)| replaced(e).map(|(stamp, at)| (i, stamp, at)))
            .collect();
        if wanted.is_empty() || !self.keep.keeps(t) {
            return Ok(());
        }
        let mut inv = self.reads(t, "versions");
        for &(i, stamp, at) in &wanted {
            inv.arg(&events[i].record).arg(stamp).arg(at.to_string());
        }
        let mut c = self.conn.clone();
        let found: Vec<Option<String>> = inv.invoke_async(&mut c).await.map_err(|e| self.err(e))?;
        for ((i, _, _), before) in wanted.into_iter().zip(found) {
            events[i].before = before;
        }
        Ok(())
    }
}
