//! The embedded store's append: a savepoint per chunk that checks the
//! fences, classifies each record against the index, inserts the events
//! and moves the index entries to point at them.
//!
//! Deferred commits. Most of an append's cost is its commit, which writes
//! every page the chunk dirtied to the log, and the record index's pages
//! are dirtied all over the file. So consecutive appends share one write
//! transaction: it is committed once it holds `DEFER_RECORDS` records or
//! is `DEFER_FOR` old, at an append that failed or first used its table,
//! and before any other call of the store runs (`SqliteStore::run`). No
//! reader, on this connection or another, ever sees an uncommitted event,
//! and the poll that appended always makes another call (its poll status)
//! after its last append, so no deferral outlives a poll; a task commits
//! what is `DEFER_FOR` old even when no call comes. A crash before
//! the commit rolls the appends back together with the cursor (the
//! stream's last event), and the poller fetches them again, as after a
//! power loss (docs/operations.md, "The embedded store"); a commit that
//! fails rolls them back likewise, and the next append to each table is
//! refused as a lost tail (`Refusal::Failover`), so its poller goes back
//! to the stream's last event rather than append past a gap.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Failed, Open, Table, check_fences, last_id, records};
use crate::events::{self, AppendOutcome, IndexEntry, StreamId};
use crate::store::{Refusal, StoreError};

/// An [`AppendBatch`] owned, to move into the blocking task.
pub(super) struct Batch {
    pub holder: String,
    pub epoch: String,
    pub snapshot: bool,
    pub observed: u64,
    pub records: Vec<crate::record::UpstreamRecord>,
    /// Whether the table keeps the latest-record store, and whether this
    /// is the process's first append to it (fill or drop it first).
    pub keep: bool,
    pub first: bool,
    /// The highest ID this process appended to the table (store/highest.rs),
    /// and the highest it issued that the file lost: no new ID goes at or
    /// below it, as a reader may hold it.
    pub highest: Option<StreamId>,
    pub issued: Option<StreamId>,
    pub rebase: bool,
}

/// Records the open transaction holds, at most, before it is committed.
const DEFER_RECORDS: usize = 50_000;
/// How long, at most, an append waits in the open transaction for its
/// commit while more appends follow.
const DEFER_FOR: Duration = Duration::from_millis(1000);

/// Appends in the open write transaction, not yet committed.
pub(super) struct Deferred {
    since: Instant,
    records: usize,
}

impl Deferred {
    /// Whether the transaction has waited `DEFER_FOR` for its commit.
    fn is_old(&self) -> bool {
        self.since.elapsed() >= DEFER_FOR
    }

    /// Counts an append of `records`; whether the transaction is due.
    fn add(&mut self, records: usize) -> bool {
        self.records += records;
        self.records >= DEFER_RECORDS || self.is_old()
    }
}

/// Appends the batch; returns what it did and the stream's last ID. The
/// commit may wait for more appends (see "Deferred commits" above).
pub(super) fn append(
    open: &mut Open,
    t: &Table,
    batch: &Batch,
) -> Result<(AppendOutcome, StreamId), Failed> {
    if open.deferred.is_none() {
        open.conn.execute_batch("BEGIN IMMEDIATE")?;
        open.deferred = Some(Deferred {
            since: Instant::now(),
            records: 0,
        });
    }
    let out = in_savepoint(&mut open.conn, t, batch);
    let due = open
        .deferred
        .as_mut()
        .is_none_or(|d| d.add(batch.records.len()));
    if out.is_err() || batch.first || due {
        let committed = commit_deferred(open);
        let out = out?;
        committed?;
        return Ok(out);
    }
    out
}

/// The append's own writes, undone alone when it fails (a refusal leaves
/// the other appends of the transaction as they were).
fn in_savepoint(
    c: &mut Connection,
    t: &Table,
    batch: &Batch,
) -> Result<(AppendOutcome, StreamId), Failed> {
    let sp = c.savepoint()?;
    if batch.first {
        records::fill_or_drop(&sp, t, batch.keep)?;
    }
    check_fences(&sp, t, &batch.holder, &batch.epoch)?;
    let out = append_records(&sp, t, batch)?;
    sp.commit()?;
    Ok(out)
}

/// Commits deferred appends once they are `DEFER_FOR` old even when no
/// other call of the store comes (a walk cancelled between chunks, a relay
/// gone quiet): a task that looks every `DEFER_FOR` while the store lives.
/// Without a runtime (a store opened outside one) the calls alone commit.
pub(super) fn commit_when_due(conn: &Arc<Mutex<Open>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let conn = Arc::downgrade(conn);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(DEFER_FOR);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(conn) = conn.upgrade() else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                let mut open = conn.lock().unwrap_or_else(|p| p.into_inner());
                if open.deferred.as_ref().is_some_and(Deferred::is_old) {
                    let _ = commit_deferred(&mut open);
                }
            })
            .await;
        }
    });
}

/// Commits the appends the open transaction holds, if any; when the commit
/// fails they are rolled back (see "Deferred commits" above).
pub(super) fn commit_deferred(open: &mut Open) -> rusqlite::Result<()> {
    let Some(deferred) = open.deferred.take() else {
        return Ok(());
    };
    open.conn.execute_batch("COMMIT").inspect_err(|e| {
        let _ = open.conn.execute_batch("ROLLBACK");
        tracing::error!(error = %e, records = deferred.records,
            "the embedded store could not commit its latest appends; they are rolled back and fetched again");
    })
}

/// Appends each record of the batch that changes its record (the rest count
/// as duplicates), inside the caller's transaction. Refuses when the file
/// lost events this process appended (an older copy put in its place),
/// like `append.lua` after a failover.
fn append_records(
    c: &Connection,
    t: &Table,
    batch: &Batch,
) -> Result<(AppendOutcome, StreamId), Failed> {
    let mut top = last_id(c, t)?;
    if let Some(highest) = batch.highest.filter(|h| *h > top) {
        return Err(Failed::Store(StoreError::refused(
            t,
            Refusal::Failover { top, highest },
        )));
    }
    let mut last = top;
    top = top.max(batch.issued.unwrap_or_default());
    let mut out = AppendOutcome::default();
    let mut index = index_entries(c, t, &batch.records)?;
    // The index entries to write, one per record and in key order: the
    // index's pages are then visited once each, in order, rather than once
    // per version in stamp order (random pages of the index B-tree).
    let mut writes: BTreeMap<&str, IndexEntry> = BTreeMap::new();
    for r in &batch.records {
        let prev = index.get(r.id.as_str()).copied();
        let op = if batch.rebase {
            events::reclassify(prev, r.stamp, r.deleted)
        } else {
            events::classify(prev, r.stamp, r.deleted)
        };
        let Some(op) = op else {
            // Not appended: the same version again, or an older one.
            match prev {
                Some(p) if r.stamp < p.stamp => out.regressions += 1,
                _ => out.duplicates += 1,
            }
            records::fill_duplicate(c, t, r, prev, batch.keep)?;
            continue;
        };
        let id = events::next_id(top, r.stamp);
        if id.seq > 0 {
            out.late += 1;
        }
        let event = NewEvent { id, op, prev };
        insert_event(c, t, batch, r, &event)?;
        // A later version of the record in this chunk finds this one.
        let entry = IndexEntry {
            stamp: r.stamp,
            deleted: r.deleted,
            at: Some(id),
        };
        index.insert(r.id.clone(), entry);
        writes.insert(r.id.as_str(), entry);
        (top, last) = (id, id);
        out.count(op);
    }
    for (record, entry) in writes {
        put_index(c, t, record, entry)?;
    }
    Ok((out, last))
}

/// The index entry of `record`: its latest stamp and whether it is deleted.
pub(super) fn index_entry(
    c: &Connection,
    t: &Table,
    record: &str,
) -> rusqlite::Result<Option<IndexEntry>> {
    c.prepare_cached(
        "SELECT stamp, deleted, at_stamp, at_seq FROM record_index WHERE source = ?1 AND resource = ?2 AND record = ?3",
    )?
    .query_row(params![t.source, t.resource, record], |row| entry_at(row, 0))
    .optional()
}

/// The index entry held in columns `i` (stamp), `i + 1` (deleted) and
/// `i + 2`, `i + 3` (where its event is).
fn entry_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<IndexEntry> {
    let at = match (
        row.get::<_, Option<i64>>(i + 2)?,
        row.get::<_, Option<i64>>(i + 3)?,
    ) {
        (Some(s), Some(q)) => Some(StreamId::new(s as u64, q as u64)),
        _ => None,
    };
    Ok(IndexEntry {
        stamp: row.get::<_, i64>(i)? as u64,
        deleted: row.get(i + 1)?,
        at,
    })
}

/// The index entries of the chunk's records, read in one statement rather
/// than one lookup per record (the ids go in as one JSON array).
fn index_entries(
    c: &Connection,
    t: &Table,
    records: &[crate::record::UpstreamRecord],
) -> rusqlite::Result<HashMap<String, IndexEntry>> {
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let ids = serde_json::to_string(&ids)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    let mut q = c.prepare_cached(
        "SELECT record, stamp, deleted, at_stamp, at_seq FROM record_index
         WHERE source = ?1 AND resource = ?2 AND record IN (SELECT value FROM json_each(?3))",
    )?;
    let mut found = HashMap::with_capacity(records.len());
    let mut rows = q.query(params![t.source, t.resource, ids])?;
    while let Some(row) = rows.next()? {
        found.insert(row.get(0)?, entry_at(row, 1)?);
    }
    Ok(found)
}

/// Every entry of the table's index, with its record id.
pub(super) fn index_all(c: &Connection, t: &Table) -> rusqlite::Result<Vec<(String, IndexEntry)>> {
    let mut q = c.prepare_cached(
        "SELECT record, stamp, deleted FROM record_index WHERE source = ?1 AND resource = ?2",
    )?;
    q.query_map(params![t.source, t.resource], |row| {
        let entry = IndexEntry::new(row.get::<_, i64>(1)? as u64, row.get(2)?);
        Ok((row.get(0)?, entry))
    })?
    .collect()
}

/// What [`append_records`] decided for one record, to write as an event.
struct NewEvent {
    id: StreamId,
    op: events::Op,
    prev: Option<IndexEntry>,
}

fn insert_event(
    c: &Connection,
    t: &Table,
    batch: &Batch,
    r: &crate::record::UpstreamRecord,
    e: &NewEvent,
) -> rusqlite::Result<()> {
    // Where the replaced version's event is, when it is not `<prev>-0`.
    let prev_at = e.prev.and_then(|p| p.at).filter(|a| a.seq > 0);
    c.prepare_cached(
        "INSERT INTO events (source, resource, stamp, seq, op, record, record_stamp, prev, snapshot, observed, data, prev_at_stamp, prev_at_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        t.source,
        t.resource,
        e.id.stamp as i64,
        e.id.seq as i64,
        e.op.as_str(),
        r.id,
        r.stamp as i64,
        e.prev.map(|p| p.stamp as i64),
        batch.snapshot,
        batch.observed as i64,
        r.raw.get(),
        prev_at.map(|a| a.stamp as i64),
        prev_at.map(|a| a.seq as i64),
    ])?;
    Ok(())
}

fn put_index(c: &Connection, t: &Table, record: &str, e: IndexEntry) -> rusqlite::Result<()> {
    let at = e.event_id();
    c.prepare_cached(
        "INSERT INTO record_index (source, resource, record, stamp, deleted, at_stamp, at_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (source, resource, record) DO UPDATE
         SET stamp = excluded.stamp, deleted = excluded.deleted, at_stamp = excluded.at_stamp, at_seq = excluded.at_seq",
    )?
    .execute(params![
        t.source,
        t.resource,
        record,
        e.stamp as i64,
        e.deleted,
        at.stamp as i64,
        at.seq as i64
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::{
        Store,
        contract::{append_as, leased_table, record},
        sqlite::SqliteStore,
    };

    /// Events another connection to the file sees: what is committed.
    fn committed(dir: &std::path::Path) -> i64 {
        let c = rusqlite::Connection::open(dir.join("stamp-relay.sqlite3")).unwrap();
        c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    /// An append after a table's first waits in the open transaction; any
    /// other call of the store commits it first, so no reader sees an event
    /// before it is in the file. A refused append undoes only its own
    /// writes, a deferral `DEFER_FOR` old is committed with no call, and a
    /// store let go commits what it deferred.
    #[tokio::test]
    async fn deferred_appends_are_committed_before_any_other_call() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let (t, epoch) = leased_table(&store, "s", "r").await;
        let append = |holder: &'static str, id: &'static str, stamp: u64| {
            let (store, t, epoch) = (&store, t.clone(), epoch.clone());
            async move { append_as(store, &t, holder, &epoch, &[record(id, stamp)]).await }
        };
        append("me", "a", 1).await.unwrap();
        assert_eq!(committed(dir.path()), 1, "a table's first append commits");
        append("me", "b", 2).await.unwrap();
        assert_eq!(committed(dir.path()), 1, "the next one waits for more");
        assert!(
            append("other", "c", 3)
                .await
                .unwrap_err()
                .refusal()
                .is_some()
        );
        assert_eq!(
            committed(dir.path()),
            2,
            "a refused append commits the rest"
        );
        append("me", "d", 4).await.unwrap();
        assert_eq!(committed(dir.path()), 2);
        assert_eq!(store.last_id(&t).await.unwrap().stamp, 4);
        assert_eq!(committed(dir.path()), 3, "a read commits first");
        append("me", "e", 5).await.unwrap();
        assert_eq!(committed(dir.path()), 3);
        tokio::time::sleep(super::DEFER_FOR * 2 + std::time::Duration::from_millis(500)).await;
        assert_eq!(
            committed(dir.path()),
            4,
            "what is old enough commits with no call"
        );
        append("me", "f", 6).await.unwrap();
        drop(store);
        assert_eq!(committed(dir.path()), 5, "a store let go commits");
    }
}
