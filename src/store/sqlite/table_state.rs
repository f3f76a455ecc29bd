//! The tables of the embedded store about a table besides its events:
//! `poll_status`, `loading`, `trimmed`, `epochs` and `reconcile_requests`, and retention's delete.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use crate::{
    events::StreamId,
    store::{PollStatus, StoreError, StoreResult, Table, TableState, decode_json},
};

#[async_trait]
impl TableState for SqliteStore {
    async fn trim(&self, t: &Table, first_kept: StreamId) -> StoreResult<u64> {
        let t = t.clone();
        let keep = self.keep.keeps(&t);
        self.with(move |c| {
            let tx = c.transaction()?;
            let (k_stamp, k_seq) = (first_kept.stamp as i64, first_kept.seq as i64);
            let last_removed = tx
                .query_row(
                    "SELECT stamp, seq FROM events WHERE source = ?1 AND resource = ?2
                     AND (stamp < ?3 OR (stamp = ?3 AND seq < ?4)) ORDER BY stamp DESC, seq DESC LIMIT 1",
                    params![t.source, t.resource, k_stamp, k_seq],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?;
            let Some((stamp, seq)) = last_removed else {
                return Ok(0);
            };
            super::records::keep_trimmed(&tx, &t, first_kept, keep)?;
            let removed = tx.execute(
                "DELETE FROM events WHERE source = ?1 AND resource = ?2
                 AND (stamp < ?3 OR (stamp = ?3 AND seq < ?4))",
                params![t.source, t.resource, k_stamp, k_seq],
            )?;
            tx.execute(
                "INSERT INTO trimmed (source, resource, stamp, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source, resource) DO UPDATE SET stamp = excluded.stamp, seq = excluded.seq
                 WHERE (excluded.stamp, excluded.seq) > (trimmed.stamp, trimmed.seq)",
                params![t.source, t.resource, stamp, seq],
            )?;
            // Pending entries of the removed events have nothing left to deliver.
            tx.execute(
                "DELETE FROM delivery_pending WHERE source = ?1 AND resource = ?2
                 AND (stamp < ?3 OR (stamp = ?3 AND seq < ?4))",
                params![t.source, t.resource, k_stamp, k_seq],
            )?;
            tx.commit()?;
            Ok(removed as u64)
        })
        .await
    }

    async fn set_loading(&self, t: &Table, loading: bool) -> StoreResult<()> {
        let t = t.clone();
        self.with(move |c| {
            let sql = if loading {
                "INSERT OR IGNORE INTO loading (source, resource) VALUES (?1, ?2)"
            } else {
                "DELETE FROM loading WHERE source = ?1 AND resource = ?2"
            };
            c.execute(sql, params![t.source, t.resource]).map(|_| ())
        })
        .await
    }

    async fn loading(&self, t: &Table) -> StoreResult<bool> {
        let t = t.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM loading WHERE source = ?1 AND resource = ?2",
                params![t.source, t.resource],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
        })
        .await
    }

    async fn epoch(&self, t: &Table) -> StoreResult<Option<String>> {
        let t = t.clone();
        self.with(move |c| super::epoch(c, &t)).await
    }

    async fn epochs(&self, ts: &[Table]) -> StoreResult<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(ts.len());
        for t in ts {
            out.push(self.epoch(t).await?);
        }
        Ok(out)
    }

    async fn init_epoch(&self, t: &Table, fresh: &str) -> StoreResult<String> {
        let (t, fresh) = (t.clone(), fresh.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO epochs (source, resource, epoch) VALUES (?1, ?2, ?3)",
                params![t.source, t.resource, fresh],
            )?;
            Ok(super::epoch(c, &t)?.unwrap_or(fresh))
        })
        .await
    }

    async fn request_reconcile(&self, t: &Table) -> StoreResult<()> {
        let t = t.clone();
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO reconcile_requests (source, resource) VALUES (?1, ?2)",
                params![t.source, t.resource],
            )
            .map(|_| ())
        })
        .await
    }

    async fn take_reconcile_request(&self, t: &Table) -> StoreResult<bool> {
        let t = t.clone();
        self.with(move |c| {
            c.execute(
                "DELETE FROM reconcile_requests WHERE source = ?1 AND resource = ?2",
                params![t.source, t.resource],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn trimmed_through(&self, t: &Table) -> StoreResult<StreamId> {
        let t = t.clone();
        self.with(move |c| trimmed(c, &t)).await
    }

    async fn put_poll_status(&self, t: &Table, s: &PollStatus) -> StoreResult<()> {
        let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let t = t.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO poll_status (source, resource, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source, resource) DO UPDATE SET body = excluded.body",
                params![t.source, t.resource, json],
            )
            .map(|_| ())
        })
        .await
    }

    async fn poll_status(&self, t: &Table) -> StoreResult<Option<PollStatus>> {
        let t = t.clone();
        let json = self
            .with(move |c| {
                c.query_row(
                    "SELECT body FROM poll_status WHERE source = ?1 AND resource = ?2",
                    params![t.source, t.resource],
                    |r| r.get::<_, String>(0),
                )
                .optional()
            })
            .await?;
        json.map(|j| decode_json("poll status", &j)).transpose()
    }
}

/// The last event retention removed from `t` (`0-0` for none).
pub(super) fn trimmed(c: &Connection, t: &Table) -> rusqlite::Result<StreamId> {
    c.query_row(
        "SELECT stamp, seq FROM trimmed WHERE source = ?1 AND resource = ?2",
        params![t.source, t.resource],
        |r| super::id_at(r, 0),
    )
    .optional()
    .map(Option::unwrap_or_default)
}
