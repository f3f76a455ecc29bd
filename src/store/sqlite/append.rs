//! The embedded store's append: checks the fences, reads the chunk's index
//! entries and plans the append (`store/plan.rs`, the rules both stores
//! share) before it writes anything, then inserts the events and moves the
//! index entries to point at them.
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
//!
//! All or nothing per chunk. A refused append (fences, a lost tail) is
//! refused before it writes, so the other appends of the transaction stay
//! and are committed. An append whose writes fail or panic part way rolls
//! back the whole transaction, every table's uncommitted appends, as a
//! failed commit does, rather than undo only its own writes. Undoing only
//! its own would take a savepoint per append, which copies every page the
//! append changes before changing it: a third of the append's cost, paid
//! on every append for a failure that should not come (docs/benchmarks.md).
//! The pollers of the tables rolled back notice (poller/idle.rs) and their
//! next appends are refused as a lost tail.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Failed, Open, Table, check_fences, last_id, records};
use crate::events::{AppendOutcome, IndexEntry, StreamId};
use crate::store::StoreError;
use crate::store::plan::{self, Held, Keep, PlannedEvent, Rules};

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
    // Checked and planned before anything is written: a refusal leaves
    // the other appends of the transaction as they were.
    let out = match checked(&open.conn, t, batch) {
        Ok(plan) => Writes::new(open).apply(t, batch, &plan),
        Err(e) => Err(e),
    };
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

/// The fences and the plan of the batch, read in the open transaction;
/// writes nothing.
fn checked(c: &Connection, t: &Table, batch: &Batch) -> Result<plan::Plan, Failed> {
    check_fences(c, t, &batch.holder, &batch.epoch)?;
    let found = index_entries(c, t, &batch.records)?;
    let index: Vec<Option<IndexEntry>> = batch
        .records
        .iter()
        .map(|r| found.get(r.id.as_str()).copied())
        .collect();
    let held = Held {
        index: &index,
        top: last_id(c, t)?,
        issued: batch.issued.unwrap_or_default(),
        trimmed: super::table_state::trimmed(c, t)?,
    };
    let rules = Rules {
        highest: batch.highest,
        rebase: batch.rebase,
        keep: batch.keep,
    };
    plan::plan(&batch.records, held, rules)
        .map_err(|lost| Failed::Store(StoreError::refused(t, lost.refusal())))
}

/// One append's writes into the open transaction. They have no savepoint
/// of their own: its undo copy of every page it changes cost more than a
/// third of an append (docs/benchmarks.md). Instead, writes that fail or
/// panic part way roll back the whole transaction, as a failed commit does
/// (see "Deferred commits" above), so no part of a chunk is ever committed.
struct Writes<'o> {
    open: &'o mut Open,
    done: bool,
}

impl<'o> Writes<'o> {
    fn new(open: &'o mut Open) -> Writes<'o> {
        Writes { open, done: false }
    }

    /// Writes what `plan` decided: the events, the index entries, the kept
    /// copies; on an error the transaction is rolled back.
    fn apply(
        mut self,
        t: &Table,
        batch: &Batch,
        plan: &plan::Plan,
    ) -> Result<(AppendOutcome, StreamId), Failed> {
        let c = &self.open.conn;
        let written = if batch.first {
            records::fill_or_drop(c, t, batch.keep).map_err(Failed::from)
        } else {
            Ok(())
        }
        .and_then(|()| write_plan(c, t, batch, plan));
        match written {
            Ok(()) => {
                self.done = true;
                Ok((plan.outcome, plan.last))
            }
            Err(e) => {
                let why = match &e {
                    Failed::Sql(e) => format!("an append's writes failed part way: {e}"),
                    Failed::Store(e) => format!("an append's writes failed part way: {e}"),
                };
                roll_back(self.open, &why);
                self.done = true;
                Err(e)
            }
        }
    }
}

impl Drop for Writes<'_> {
    /// Writes that never finished: a panic part way.
    fn drop(&mut self) {
        if !self.done {
            roll_back(self.open, "an append panicked part way");
        }
    }
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
    if open.deferred.is_none() {
        return Ok(());
    }
    let committed = open.conn.execute_batch("COMMIT");
    match &committed {
        Ok(()) => open.deferred = None,
        Err(e) => roll_back(open, &format!("the commit failed: {e}")),
    }
    committed
}

/// Rolls back the appends the open transaction holds, if any. Their
/// tables' next appends are then refused as a lost tail
/// (`Refusal::Failover`, from `highest`), and their pollers fetch them again.
fn roll_back(open: &mut Open, why: &str) {
    let Some(deferred) = open.deferred.take() else {
        return;
    };
    let _ = open.conn.execute_batch("ROLLBACK");
    if !open.conn.is_autocommit() {
        tracing::error!(
            "the embedded store could not roll back its open transaction; restart the relay"
        );
    }
    tracing::error!(
        records = deferred.records,
        why,
        "the embedded store rolled back its latest appends; they are fetched again"
    );
}

/// Writes what the planner decided (`store::plan`: each version's op and
/// stream ID, the index entries, the kept copies).
fn write_plan(c: &Connection, t: &Table, batch: &Batch, plan: &plan::Plan) -> Result<(), Failed> {
    let mut insert = c.prepare_cached(INSERT_EVENT)?;
    for e in &plan.events {
        insert_event(&mut insert, t, batch, &batch.records[e.record], e)?;
    }
    // The index entries in key order: the index's pages are then visited
    // once each, in order, rather than once per version in stamp order
    // (random pages of the index B-tree).
    let mut writes: Vec<(&str, IndexEntry)> = plan
        .index
        .iter()
        .map(|&(i, e)| (batch.records[i].id.as_str(), e))
        .collect();
    writes.sort_unstable_by_key(|&(record, _)| record);
    let mut put = c.prepare_cached(PUT_INDEX)?;
    for (record, entry) in writes {
        put_index(&mut put, t, record, entry)?;
    }
    // The embedded store lists latest versions through the index, so of
    // the bookkeeping only the copies of trimmed versions are its own.
    for fact in &plan.keep {
        if let Keep::DuplicateOfTrimmed { record, entry } = *fact {
            records::fill_duplicate(c, t, &batch.records[record], entry)?;
        }
    }
    Ok(())
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

const INSERT_EVENT: &str = "INSERT INTO events (source, resource, stamp, seq, op, record, record_stamp, prev, snapshot, observed, data, prev_at_stamp, prev_at_seq)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

fn insert_event(
    insert: &mut rusqlite::CachedStatement<'_>,
    t: &Table,
    batch: &Batch,
    r: &crate::record::UpstreamRecord,
    e: &PlannedEvent,
) -> rusqlite::Result<()> {
    let prev_at = e.prev_id();
    insert.execute(params![
        t.source,
        t.resource,
        e.id.stamp as i64,
        e.id.seq as i64,
        e.op.as_str(),
        r.id,
        r.stamp as i64,
        e.prev_stamp().map(|p| p as i64),
        batch.snapshot,
        batch.observed as i64,
        r.raw.get(),
        prev_at.map(|a| a.stamp as i64),
        prev_at.map(|a| a.seq as i64),
    ])?;
    Ok(())
}

const PUT_INDEX: &str = "INSERT INTO record_index (source, resource, record, stamp, deleted, at_stamp, at_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (source, resource, record) DO UPDATE
     SET stamp = excluded.stamp, deleted = excluded.deleted, at_stamp = excluded.at_stamp, at_seq = excluded.at_seq";

fn put_index(
    put: &mut rusqlite::CachedStatement<'_>,
    t: &Table,
    record: &str,
    e: IndexEntry,
) -> rusqlite::Result<()> {
    let at = e.event_id();
    put.execute(params![
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
    /// before it is in the file. A refused append writes nothing and the
    /// others are committed, a deferral `DEFER_FOR` old is committed with no
    /// call, and a store let go commits what it deferred.
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

    /// An append whose writes fail part way (here a trigger refuses its
    /// second index entry, after its events and its first entry went in)
    /// leaves nothing of itself and rolls back the appends deferred with
    /// it, another table's too; each table's next append is refused as a
    /// lost tail, and the poller's append again from the stream's last
    /// event lands every version once.
    #[tokio::test]
    async fn writes_failing_part_way_roll_back_the_whole_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let (t, epoch) = leased_table(&store, "s", "r").await;
        let (t2, epoch2) = leased_table(&store, "s", "r2").await;
        let other = rusqlite::Connection::open(dir.path().join("stamp-relay.sqlite3")).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON record_index WHEN NEW.record = 'zboom'
                 BEGIN SELECT RAISE(ABORT, 'injected'); END;",
            )
            .unwrap();
        let append = |records: Vec<crate::record::UpstreamRecord>| {
            let (store, t, epoch) = (&store, t.clone(), epoch.clone());
            async move { append_as(store, &t, "me", &epoch, &records).await }
        };
        append(vec![record("a", 1)]).await.unwrap();
        append_as(&store, &t2, "me", &epoch2, &[record("x", 1)])
            .await
            .unwrap();
        append(vec![record("b", 2)]).await.unwrap();
        append_as(&store, &t2, "me", &epoch2, &[record("y", 2)])
            .await
            .unwrap();
        assert_eq!(committed(dir.path()), 2, "b and y wait in the transaction");
        let failed = append(vec![record("c", 3), record("zboom", 4)]).await;
        assert!(
            failed.unwrap_err().refusal().is_none(),
            "a failure, not a refusal"
        );
        assert_eq!(committed(dir.path()), 2, "neither b, y nor c is committed");
        other.execute_batch("DROP TRIGGER boom").unwrap();
        assert_eq!(store.last_id(&t).await.unwrap().stamp, 1);
        let lost = append(vec![record("d", 5)]).await.unwrap_err();
        assert!(
            matches!(lost.refusal(), Some(crate::store::Refusal::Failover { .. })),
            "b's append was lost: {lost}"
        );
        let again = [
            record("b", 2),
            record("c", 3),
            record("zboom", 4),
            record("d", 5),
        ];
        let out = append(again.to_vec()).await.unwrap();
        assert_eq!(out.appended(), 4);
        assert_eq!(store.last_id(&t).await.unwrap().stamp, 5);
        assert_eq!(committed(dir.path()), 6, "every version once");
        // The other table's deferred append went too: refused the same way.
        let lost = append_as(&store, &t2, "me", &epoch2, &[record("z", 3)]).await;
        assert!(matches!(
            lost.unwrap_err().refusal(),
            Some(crate::store::Refusal::Failover { .. })
        ));
        assert_eq!(store.last_id(&t2).await.unwrap().stamp, 1);
    }
}
