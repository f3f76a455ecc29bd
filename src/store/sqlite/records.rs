//! The latest-record store in the embedded file. The index points at each
//! record's latest version (`record_index.at_stamp`/`at_seq`, the event's
//! ID; indexed by stamp for listings), which the `events` table holds, so
//! an append copies no record. The `records` table keeps each record's
//! last version whose event retention removed (`keep_trimmed`, in the
//! trim's transaction): lookups, listings and previous values read the
//! event, or that copy once the event is gone.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{EVENT_COLUMNS, SqliteStore, event_row};
use crate::events::{Event, IndexEntry, StreamId};
use crate::record::UpstreamRecord;
use crate::store::records::{RecordStore, RecordsPage, RecordsQuery, StoredRecord};
use crate::store::{StoreResult, Table};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    source TEXT NOT NULL, resource TEXT NOT NULL, record TEXT NOT NULL,
    stamp INTEGER NOT NULL, deleted INTEGER NOT NULL, data TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_id ON records (source, resource, record);
DROP INDEX IF EXISTS records_by_stamp;
CREATE INDEX IF NOT EXISTS record_index_by_stamp ON record_index (source, resource, stamp);
";

/// Columns added since the first schema: (table, column, type).
const ADDED: [(&str, &str, &str); 5] = [
    ("events", "before", "TEXT"),
    ("events", "prev_at_stamp", "INTEGER"),
    ("events", "prev_at_seq", "INTEGER"),
    ("record_index", "at_stamp", "INTEGER"),
    ("record_index", "at_seq", "INTEGER"),
];

/// Creates the table and the index by stamp, and the columns a file made
/// before them lacks.
pub(super) fn migrate(c: &Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in ADDED {
        let has: bool = c.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    c.execute_batch(SCHEMA)
}

/// Retention, before it removes the events before `first_kept`: each
/// record's last version among them goes into `records` (with the index's
/// deletion flag when it is the latest), over an older copy.
pub(super) fn keep_trimmed(
    c: &Connection,
    t: &Table,
    first_kept: StreamId,
    keep: bool,
) -> rusqlite::Result<()> {
    if !keep {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT INTO records (source, resource, record, stamp, deleted, data)
         SELECT e.source, e.resource, e.record, e.record_stamp,
                COALESCE(i.stamp = e.record_stamp AND i.deleted, 0), e.data
         FROM events e LEFT JOIN record_index i
           ON i.source = e.source AND i.resource = e.resource AND i.record = e.record
         WHERE e.source = ?1 AND e.resource = ?2 AND (e.stamp < ?3 OR (e.stamp = ?3 AND e.seq < ?4))
         ORDER BY e.stamp, e.seq
         ON CONFLICT (source, resource, record) DO UPDATE
         SET stamp = excluded.stamp, deleted = excluded.deleted, data = excluded.data
         WHERE excluded.stamp >= records.stamp",
    )?
    .execute(params![
        t.source,
        t.resource,
        first_kept.stamp as i64,
        first_kept.seq as i64
    ])
    .map(|_| ())
}

/// A duplicate of the version the index holds, `p`, whose event is gone
/// and that `records` lacks (retention removed it before records were
/// kept): a reconcile sweep fills it in (`plan::Keep::DuplicateOfTrimmed`).
pub(super) fn fill_duplicate(
    c: &Connection,
    t: &Table,
    r: &UpstreamRecord,
    p: IndexEntry,
) -> rusqlite::Result<()> {
    let at = p.event_id();
    c.prepare_cached(
        "INSERT INTO records (source, resource, record, stamp, deleted, data)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6
         WHERE NOT EXISTS (SELECT 1 FROM events WHERE source = ?1 AND resource = ?2 AND stamp = ?7 AND seq = ?8 AND record = ?3)
         ON CONFLICT (source, resource, record) DO UPDATE
         SET stamp = excluded.stamp, deleted = excluded.deleted, data = excluded.data
         WHERE excluded.stamp > records.stamp",
    )?
    .execute(params![
        t.source,
        t.resource,
        r.id,
        r.stamp as i64,
        p.deleted,
        r.raw.get(),
        at.stamp as i64,
        at.seq as i64
    ])
    .map(|_| ())
}

/// When a table is opened (or at the first append after a change of
/// setting): drops the kept copies of a table that no longer keeps records.
pub(super) fn fill_or_drop(c: &Connection, t: &Table, keep: bool) -> rusqlite::Result<()> {
    if !keep {
        c.execute(
            "DELETE FROM records WHERE source = ?1 AND resource = ?2",
            params![t.source, t.resource],
        )?;
    }
    Ok(())
}

/// Each index row with its version's JSON: the event the index points at
/// (`<stamp>-0` for rows written before the pointer), else the kept copy.
const LATEST: &str = "
    SELECT i.record, i.stamp, i.deleted, COALESCE(e.data, r.data)
    FROM record_index i
    LEFT JOIN events e ON e.source = i.source AND e.resource = i.resource
        AND e.stamp = COALESCE(i.at_stamp, i.stamp) AND e.seq = COALESCE(i.at_seq, 0) AND e.record = i.record
    LEFT JOIN records r ON r.source = i.source AND r.resource = i.resource
        AND r.record = i.record AND r.stamp = i.stamp
    WHERE i.source = ?1 AND i.resource = ?2 AND COALESCE(e.data, r.data) IS NOT NULL";

fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    Ok(StoredRecord {
        id: r.get(0)?,
        stamp: r.get::<_, i64>(1)? as u64,
        deleted: r.get(2)?,
        data: r.get(3)?,
    })
}

fn page(c: &mut Connection, t: &Table, q: RecordsQuery) -> rusqlite::Result<RecordsPage> {
    let tx = c.transaction()?;
    let last_id: StreamId = super::last_id(&tx, t)?;
    let until = q.until.unwrap_or(last_id.stamp);
    let count = match q.count {
        Some(n) => n as i64,
        // What the listing can serve: a record whose version is lost (its
        // event removed while records were not kept) is not counted.
        None => tx.query_row(
            &format!("SELECT COUNT(*) FROM ({LATEST} AND i.stamp > ?3 AND i.stamp <= ?4)"),
            params![t.source, t.resource, q.above as i64, until as i64],
            |r| r.get(0),
        )?,
    };
    let after = q.after.unwrap_or(q.above).max(q.above);
    let records = tx
        .prepare_cached(&format!(
            "{LATEST} AND i.stamp > ?3 AND i.stamp <= ?4
             ORDER BY i.stamp LIMIT ?5 OFFSET ?6"
        ))?
        .query_map(
            params![
                t.source,
                t.resource,
                after as i64,
                until as i64,
                q.limit as i64,
                q.offset as i64
            ],
            stored,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(RecordsPage {
        count: count as u64,
        until,
        last_id,
        records,
    })
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn read_back(
        &self,
        t: &Table,
        before: Option<StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let t = t.clone();
        let before = before.unwrap_or(StreamId::new(i64::MAX as u64, i64::MAX as u64));
        self.with(move |c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE source = ?1 AND resource = ?2 AND (stamp < ?3 OR (stamp = ?3 AND seq < ?4))
                 ORDER BY stamp DESC, seq DESC LIMIT ?5"
            ))?;
            let (stamp, seq) = (
                before.stamp.min(i64::MAX as u64),
                before.seq.min(i64::MAX as u64),
            );
            q.query_map(
                params![t.source, t.resource, stamp as i64, seq as i64, limit as i64],
                event_row,
            )?
            .collect()
        })
        .await
    }

    fn keep_records(&self, t: &Table, keep: bool) {
        self.keep.set(t, keep);
    }

    async fn ready_records(&self, t: &Table) -> StoreResult<()> {
        if !self.keep.first_use(t) {
            return Ok(());
        }
        let (table, keep) = (t.clone(), self.keep.keeps(t));
        let done = self.with(move |c| fill_or_drop(c, &table, keep)).await;
        if done.is_err() {
            self.keep.not_ready(t);
        }
        done
    }

    async fn record(&self, t: &Table, id: &str) -> StoreResult<Option<StoredRecord>> {
        if !self.keep.keeps(t) {
            return Ok(None);
        }
        let (t, id) = (t.clone(), id.to_string());
        self.with(move |c| {
            c.query_row(
                &format!("{LATEST} AND i.record = ?3"),
                params![t.source, t.resource, id],
                stored,
            )
            .optional()
        })
        .await
    }

    async fn records(&self, t: &Table, q: RecordsQuery) -> StoreResult<RecordsPage> {
        let t = t.clone();
        self.with(move |c| page(c, &t, q)).await
    }

    async fn fill_previous(&self, t: &Table, events: &mut [Event]) -> StoreResult<()> {
        let wanted: Vec<(usize, String, u64, StreamId)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let (stamp, at) = crate::store::records::replaced(e)?;
                Some((i, e.record.clone(), stamp, at))
            })
            .collect();
        if wanted.is_empty() || !self.keep.keeps(t) {
            return Ok(());
        }
        let t = t.clone();
        let found = self
            .with(move |c| {
                wanted
                    .into_iter()
                    .map(|(i, record, prev, at)| Ok((i, version(c, &t, &record, prev, at)?)))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        for (i, before) in found {
            events[i].before = before;
        }
        Ok(())
    }
}

/// The JSON of `record`'s version `stamp`, whose event is `at`: the event,
/// or the kept copy once retention removed it.
fn version(
    c: &Connection,
    t: &Table,
    record: &str,
    stamp: u64,
    at: StreamId,
) -> rusqlite::Result<Option<String>> {
    c.prepare_cached(
        "SELECT data FROM events WHERE source = ?1 AND resource = ?2 AND stamp = ?3 AND seq = ?4 AND record = ?5
         UNION ALL
         SELECT data FROM records WHERE source = ?1 AND resource = ?2 AND record = ?5 AND stamp = ?6
         LIMIT 1",
    )?
    .query_row(
        params![
            t.source,
            t.resource,
            at.stamp as i64,
            at.seq as i64,
            record,
            stamp as i64
        ],
        |r| r.get(0),
    )
    .optional()
}
