//! The latest-record store in the embedded file: the `records` table
//! (latest version per record, indexed by id and by stamp; a rowid table,
//! so its large rows land in insertion order rather than in a B-tree keyed
//! by random ids), written in the append's
//! transaction, and the `before` column of `events` (the version an event
//! replaced; previous values).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use crate::events::{IndexEntry, StreamId};
use crate::record::UpstreamRecord;
use crate::store::records::{RecordStore, RecordsPage, RecordsQuery, StoredRecord};
use crate::store::{StoreResult, Target};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    source TEXT NOT NULL, resource TEXT NOT NULL, record TEXT NOT NULL,
    stamp INTEGER NOT NULL, deleted INTEGER NOT NULL, data TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_id ON records (source, resource, record);
CREATE INDEX IF NOT EXISTS records_by_stamp ON records (source, resource, stamp);
";

/// Creates the table, and the `before` column in a file made before it.
pub(super) fn migrate(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(SCHEMA)?;
    let has_before: bool = c.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'before'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_before {
        c.execute_batch("ALTER TABLE events ADD COLUMN before TEXT")?;
    }
    Ok(())
}

/// The kept version of a record, which an event replacing it carries
/// (none unless `kept`: the table keeps records and had this one).
pub(super) fn before(
    c: &Connection,
    t: &Target,
    id: &str,
    kept: bool,
) -> rusqlite::Result<Option<String>> {
    if !kept {
        return Ok(None);
    }
    c.prepare_cached(
        "SELECT data FROM records WHERE source = ?1 AND resource = ?2 AND record = ?3",
    )?
    .query_row(params![t.source, t.resource, id], |r| r.get(0))
    .optional()
}

/// Keeps `r` as its record's latest version, when the table keeps records.
pub(super) fn put(
    c: &Connection,
    t: &Target,
    r: &UpstreamRecord,
    keep: bool,
) -> rusqlite::Result<()> {
    if !keep {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT INTO records (source, resource, record, stamp, deleted, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (source, resource, record) DO UPDATE
         SET stamp = excluded.stamp, deleted = excluded.deleted, data = excluded.data",
    )?
    .execute(params![t.source, t.resource, r.id, r.stamp as i64, r.deleted, r.raw.get()])
    .map(|_| ())
}

/// A duplicate whose version the index holds but the records lack (its
/// events were trimmed before records were kept): a reconcile fills it in.
pub(super) fn fill_duplicate(
    c: &Connection,
    t: &Target,
    r: &UpstreamRecord,
    prev: Option<IndexEntry>,
    keep: bool,
) -> rusqlite::Result<()> {
    if !keep || prev.is_none_or(|p| p.stamp != r.stamp) {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT OR IGNORE INTO records (source, resource, record, stamp, deleted, data)
         SELECT ?1, ?2, ?3, ?4, deleted, ?5 FROM record_index
         WHERE source = ?1 AND resource = ?2 AND record = ?3 AND stamp = ?4",
    )?
    .execute(params![
        t.source,
        t.resource,
        r.id,
        r.stamp as i64,
        r.raw.get()
    ])
    .map(|_| ())
}

/// Before the first append of this process: drops the records of a table
/// that no longer keeps them, or fills them from the events when the table
/// has fewer records than index entries (events older than the store).
pub(super) fn fill_or_drop(c: &Connection, t: &Target, keep: bool) -> rusqlite::Result<()> {
    if !keep {
        c.execute(
            "DELETE FROM records WHERE source = ?1 AND resource = ?2",
            params![t.source, t.resource],
        )?;
        return Ok(());
    }
    let count = |table: &str| -> rusqlite::Result<i64> {
        c.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE source = ?1 AND resource = ?2"),
            params![t.source, t.resource],
            |r| r.get(0),
        )
    };
    if count("records")? >= count("record_index")? {
        return Ok(());
    }
    let filled = c.execute(
        "INSERT OR IGNORE INTO records (source, resource, record, stamp, deleted, data)
         SELECT e.source, e.resource, e.record, e.record_stamp, i.deleted, e.data
         FROM events e JOIN record_index i
           ON i.source = e.source AND i.resource = e.resource AND i.record = e.record
         WHERE e.source = ?1 AND e.resource = ?2 AND i.stamp = e.record_stamp",
        params![t.source, t.resource],
    )?;
    tracing::info!(target = %t, filled, "filled the latest-record store from the events");
    Ok(())
}

fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    Ok(StoredRecord {
        id: r.get(0)?,
        stamp: r.get::<_, i64>(1)? as u64,
        deleted: r.get(2)?,
        data: r.get(3)?,
    })
}

fn page(c: &mut Connection, t: &Target, q: RecordsQuery) -> rusqlite::Result<RecordsPage> {
    let tx = c.transaction()?;
    let last_id: StreamId = super::last_id(&tx, t)?;
    let until = q.until.unwrap_or(last_id.stamp);
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM records WHERE source = ?1 AND resource = ?2 AND stamp > ?3 AND stamp <= ?4",
        params![t.source, t.resource, q.above as i64, until as i64],
        |r| r.get(0),
    )?;
    let after = q.after.unwrap_or(q.above).max(q.above);
    let records = tx
        .prepare_cached(
            "SELECT record, stamp, deleted, data FROM records
             WHERE source = ?1 AND resource = ?2 AND stamp > ?3 AND stamp <= ?4
             ORDER BY stamp LIMIT ?5 OFFSET ?6",
        )?
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
    fn keep_records(&self, t: &Target, keep: bool) {
        self.keep.set(t, keep);
    }

    async fn record(&self, t: &Target, id: &str) -> StoreResult<Option<StoredRecord>> {
        let (t, id) = (t.clone(), id.to_string());
        self.with(move |c| {
            c.query_row(
                "SELECT record, stamp, deleted, data FROM records
                 WHERE source = ?1 AND resource = ?2 AND record = ?3",
                params![t.source, t.resource, id],
                stored,
            )
            .optional()
        })
        .await
    }

    async fn records(&self, t: &Target, q: RecordsQuery) -> StoreResult<RecordsPage> {
        let t = t.clone();
        self.with(move |c| page(c, &t, q)).await
    }
}
