//! The embedded store's append: one transaction per chunk that checks the
//! fences, classifies each record against the index, inserts the events
//! and moves the index entries to point at them.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Failed, Target, check_fences, last_id, records};
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

/// Appends the batch; returns what it did and the stream's last ID.
pub(super) fn append(
    c: &mut Connection,
    t: &Target,
    batch: &Batch,
) -> Result<(AppendOutcome, StreamId), Failed> {
    let tx = c.transaction()?;
    if batch.first {
        records::fill_or_drop(&tx, t, batch.keep)?;
    }
    check_fences(&tx, t, &batch.holder, &batch.epoch)?;
    let out = append_records(&tx, t, batch)?;
    tx.commit()?;
    Ok(out)
}

/// Appends each record of the batch that changes its record (the rest count
/// as duplicates), inside the caller's transaction. Refuses when the file
/// lost events this process appended (an older copy put in its place),
/// like `append.lua` after a failover.
fn append_records(
    c: &Connection,
    t: &Target,
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
        put_index(c, t, r, id)?;
        // A later version of the record in this chunk finds this one.
        let entry = IndexEntry {
            stamp: r.stamp,
            deleted: r.deleted,
            at: Some(id),
        };
        index.insert(r.id.clone(), entry);
        (top, last) = (id, id);
        out.count(op);
    }
    Ok((out, last))
}

/// The index entry of `record`: its latest stamp and whether it is deleted.
pub(super) fn index_entry(
    c: &Connection,
    t: &Target,
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
    t: &Target,
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
pub(super) fn index_all(c: &Connection, t: &Target) -> rusqlite::Result<Vec<(String, IndexEntry)>> {
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
    t: &Target,
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

fn put_index(
    c: &Connection,
    t: &Target,
    r: &crate::record::UpstreamRecord,
    at: StreamId,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO record_index (source, resource, record, stamp, deleted, at_stamp, at_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (source, resource, record) DO UPDATE
         SET stamp = excluded.stamp, deleted = excluded.deleted, at_stamp = excluded.at_stamp, at_seq = excluded.at_seq",
    )?
    .execute(params![
        t.source,
        t.resource,
        r.id,
        r.stamp as i64,
        r.deleted,
        at.stamp as i64,
        at.seq as i64
    ])?;
    Ok(())
}
