//! Documents in the embedded store: the `documents` table (kind, name,
//! version, body) and `document_versions`, the per-kind write counter.
//! Also the purge of a table's rows.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{
    StoreResult, Table,
    documents::{Document, Documents},
};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS document_versions (
    kind TEXT PRIMARY KEY NOT NULL, version INTEGER NOT NULL) WITHOUT ROWID;
";

const RAISE: &str = "INSERT INTO document_versions (kind, version) VALUES (?1, 1)
     ON CONFLICT (kind) DO UPDATE SET version = version + 1";

/// The tables keyed by (source, resource) that hold a table's rows.
const TABLE_ROWS: [&str; 11] = [
    "events",
    "record_index",
    "rejects",
    "records",
    "loading",
    "trimmed",
    "poll_status",
    "reconcile_requests",
    "epochs",
    "delivery_pending",
    "delivery_position",
];

#[async_trait]
impl Documents for SqliteStore {
    async fn document(&self, kind: &str, name: &str) -> StoreResult<Option<Document>> {
        let (kind, name) = (kind.to_string(), name.to_string());
        self.with(move |c| {
            c.query_row(
                "SELECT version, body FROM documents WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |r| {
                    Ok(Document {
                        name: name.clone(),
                        version: r.get::<_, i64>(0)? as u64,
                        json: r.get(1)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn put_document(
        &self,
        kind: &str,
        name: &str,
        json: &str,
        expected: u64,
    ) -> StoreResult<Option<u64>> {
        let (kind, name, json) = (kind.to_string(), name.to_string(), json.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let have: u64 = tx
                .query_row(
                    "SELECT version FROM documents WHERE kind = ?1 AND name = ?2",
                    params![kind, name],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .unwrap_or(0) as u64;
            if have != expected {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO documents (kind, name, version, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, name) DO UPDATE SET version = excluded.version, body = excluded.body",
                params![kind, name, (have + 1) as i64, json],
            )?;
            tx.execute(RAISE, params![kind])?;
            tx.commit()?;
            Ok(Some(have + 1))
        })
        .await
    }

    async fn delete_document(&self, kind: &str, name: &str) -> StoreResult<bool> {
        let (kind, name) = (kind.to_string(), name.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM documents WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )?;
            if n > 0 {
                tx.execute(RAISE, params![kind])?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn documents(&self, kind: &str) -> StoreResult<Vec<Document>> {
        let kind = kind.to_string();
        self.with(move |c| {
            let mut q = c.prepare_cached(
                "SELECT name, version, body FROM documents WHERE kind = ?1 ORDER BY name",
            )?;
            q.query_map(params![kind], |r| {
                Ok(Document {
                    name: r.get(0)?,
                    version: r.get::<_, i64>(1)? as u64,
                    json: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn documents_version(&self, kind: &str) -> StoreResult<u64> {
        let kind = kind.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT version FROM document_versions WHERE kind = ?1",
                params![kind],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
        })
        .await
    }

    async fn purge_table(&self, t: &Table, _subscriptions: &[String]) -> StoreResult<()> {
        let t = t.clone();
        self.with(move |c| {
            let tx = c.transaction()?;
            for table in TABLE_ROWS {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE source = ?1 AND resource = ?2"),
                    params![t.source, t.resource],
                )?;
            }
            // The poll lease and every delivery lease on the table.
            tx.execute(
                "DELETE FROM leases WHERE source = ?1 AND (resource = ?2 OR resource LIKE ?3)",
                params![t.source, t.resource, format!("{}:sub:%", t.resource)],
            )?;
            tx.commit()
        })
        .await
    }
}
