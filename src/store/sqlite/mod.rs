//! The embedded backend: one SQLite file (WAL mode) holding the same
//! contract as the Redis layout, for a single instance with nothing installed.
//! [`SqliteStore::in_memory`] is the same engine over SQLite's in-memory
//! database (same schema, migrations and code, no file): the engine the
//! store contract suite runs on in unit tests (`store::contract`).
//!
//! `synchronous = NORMAL` survives a process crash completely; after a power
//! loss the commits since the last checkpoint (at most 64 MiB of log, see
//! `open.rs`) may vanish, but since the cursor lives in the same file it
//! rolls back with them and the relay simply fetches them again
//! (docs/operations.md, "The embedded store").

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{AppendBatch, Store, StoreError, StoreResult, Table};
use crate::events::{self, AppendOutcome, Event, IndexEntry, Rejected, StreamId};

pub struct SqliteStore {
    conn: Arc<Mutex<Open>>,
    /// The file; none for the in-memory engine, which has no file to check.
    path: Option<PathBuf>,
    /// Which tables keep the latest-record store (`records.rs`).
    keep: super::records::KeepSet,
    /// The highest ID this process appended per table, and after a lost
    /// tail the highest it issued (see `append.rs`).
    highest: super::highest::Highest,
    issued: super::highest::Highest,
}

impl SqliteStore {
    pub fn open(dir: &Path) -> anyhow::Result<SqliteStore> {
        open::create_private_dir(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create data directory {} (store.data_dir): {e}; choose a writable folder",
                dir.display()
            )
        })?;
        let path = dir.join("stamp-relay.sqlite3");
        let bad = |e: rusqlite::Error| {
            anyhow::anyhow!(
                "cannot use the embedded store {} (store.data_dir): {e}; \
                 fix the file's permissions, or move a damaged file away to start afresh",
                path.display()
            )
        };
        let conn = connect(&path).map_err(bad)?;
        Ok(Self::over(conn, Some(path)))
    }

    /// The same store over a private in-memory database: the schema and its
    /// migrations as a file gets them, every rule the same code, and nothing
    /// kept after it is dropped. Not a store to configure (it would lose
    /// every event at a restart); tests run the store's promises on it.
    pub fn in_memory() -> anyhow::Result<SqliteStore> {
        let conn = connect_in_memory()
            .map_err(|e| anyhow::anyhow!("cannot open an in-memory store: {e}"))?;
        Ok(Self::over(conn, None))
    }

    fn over(conn: Open, path: Option<PathBuf>) -> SqliteStore {
        let conn = Arc::new(Mutex::new(conn));
        append::commit_when_due(&conn);
        SqliteStore {
            conn,
            path,
            keep: Default::default(),
            highest: Default::default(),
            issued: Default::default(),
        }
    }

    /// Runs blocking SQLite work off the async threads.
    async fn with<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run(move |c| f(c).map_err(Failed::Sql)).await
    }

    /// [`Self::with`] for work that fails with SQLite's error, or with a
    /// [`StoreError`] of its own (a refusal), returned as it is.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failed> + Send + 'static,
    {
        self.run_open(move |open| {
            append::commit_deferred(open)?;
            f(&mut open.conn)
        })
        .await
    }

    /// [`Self::run`] given the open file itself: only the append, which may
    /// leave its transaction open (`append.rs`), calls it directly.
    async fn run_open<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Open) -> Result<T, Failed> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.clone();
        let file = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut open = conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(file) = &file {
                let now = file_id(file);
                if open.closed || now != open.file {
                    reopen(&mut open, file, now)?;
                }
            }
            f(&mut open)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
        .map_err(|e| match e {
            Failed::Store(e) => e,
            Failed::Sql(e) => StoreError::Unavailable(format!("{}: {e}", named(path.as_deref()))),
        })
    }
}

/// Why work on the embedded file failed: SQLite's error, or the store's
/// own answer (a refusal), returned as it is.
pub(super) enum Failed {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failed {
    fn from(e: rusqlite::Error) -> Failed {
        Failed::Sql(e)
    }
}

/// The store as logs and errors name it: its file, or "in memory".
fn named(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("embedded store {}", path.display()),
        None => "embedded store in memory".into(),
    }
}

fn last_id(c: &Connection, t: &Table) -> rusqlite::Result<StreamId> {
    c.query_row(
        "SELECT stamp, seq FROM events WHERE source = ?1 AND resource = ?2
         ORDER BY stamp DESC, seq DESC LIMIT 1",
        params![t.source, t.resource],
        |r| id_at(r, 0),
    )
    .optional()
    .map(Option::unwrap_or_default)
}

pub(super) const EVENT_COLUMNS: &str = "stamp, seq, op, record, record_stamp, prev, snapshot, observed, data, before, prev_at_stamp, prev_at_seq";

fn read_after(
    c: &Connection,
    t: &Table,
    after: StreamId,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    let mut q = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE source = ?1 AND resource = ?2 AND (stamp > ?3 OR (stamp = ?3 AND seq > ?4))
         ORDER BY stamp, seq LIMIT ?5"
    ))?;
    q.query_map(
        params![
            t.source,
            t.resource,
            after.stamp as i64,
            after.seq as i64,
            limit as i64
        ],
        event_row,
    )?
    .collect()
}

/// The stream ID held in columns `i` (stamp) and `i + 1` (seq).
fn id_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<StreamId> {
    Ok(StreamId::new(
        r.get::<_, i64>(i)? as u64,
        r.get::<_, i64>(i + 1)? as u64,
    ))
}

pub(super) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let op: String = r.get(2)?;
    Ok(Event {
        id: id_at(r, 0)?,
        op: op.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
        })?,
        record: r.get(3)?,
        stamp: r.get::<_, i64>(4)? as u64,
        prev: r.get::<_, Option<i64>>(5)?.map(|p| p as u64),
        snapshot: r.get(6)?,
        observed: r.get::<_, i64>(7)? as u64,
        data: r.get(8)?,
        before: r.get(9)?,
        prev_id: match (r.get::<_, Option<i64>>(10)?, r.get::<_, Option<i64>>(11)?) {
            (Some(s), Some(q)) => Some(StreamId::new(s as u64, q as u64)),
            _ => None,
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        named(self.path.as_deref())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn last_id(&self, t: &Table) -> StoreResult<StreamId> {
        let t = t.clone();
        self.with(move |c| last_id(c, &t)).await
    }

    async fn append(&self, t: &Table, batch: AppendBatch<'_>) -> StoreResult<AppendOutcome> {
        let (t, table) = (t.clone(), t.clone());
        let batch = Batch {
            holder: batch.holder.to_string(),
            epoch: batch.epoch.to_string(),
            snapshot: batch.snapshot,
            observed: batch.observed,
            records: batch.records.to_vec(),
            keep: self.keep.keeps(&table),
            first: self.keep.first_use(&table),
            highest: self.highest.get(&table, batch.epoch),
            issued: self.issued.get(&table, batch.epoch),
            rebase: batch.rebase,
        };
        let (first, keep, epoch) = (batch.first, &self.keep, batch.epoch.clone());
        let out = self.run_open(move |open| append(open, &t, &batch)).await;
        if first && out.is_err() {
            keep.not_ready(&table);
        }
        match out {
            Ok((out, last)) => {
                self.highest.raise(&table, &epoch, last);
                Ok(out)
            }
            Err(e) => {
                if let Some(super::Refusal::Failover { top, highest }) = e.refusal() {
                    // No ID up to `highest` is issued again; from now on the
                    // file's last entry is what this process appended.
                    self.issued.raise(&table, &epoch, highest);
                    self.highest.set(&table, &epoch, top);
                }
                Err(e)
            }
        }
    }

    /// A transaction's cost is mostly the pages it changes, and the index's
    /// pages are all over the file: a chunk of 2,000 shares them between
    /// four times the records of Redis's 500 and still commits in tens of
    /// milliseconds, which the store's other callers wait for.
    fn append_chunk(&self) -> usize {
        2000
    }

    async fn reject(&self, t: &Table, raw: &str, reason: &str, observed: u64) -> StoreResult<()> {
        let (t, raw, reason) = (t.clone(), raw.to_string(), reason.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO rejects (source, resource, raw, reason, observed) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.source, t.resource, raw, reason, observed as i64],
            )
            .map(|_| ())
        })
        .await
    }

    async fn read(&self, t: &Table, after: StreamId, limit: usize) -> StoreResult<Vec<Event>> {
        let t = t.clone();
        self.with(move |c| read_after(c, &t, after, limit)).await
    }

    async fn rejects(&self, t: &Table, limit: usize) -> StoreResult<Vec<Rejected>> {
        let t = t.clone();
        self.with(move |c| {
            let mut q = c.prepare_cached(
                "SELECT raw, reason, observed FROM rejects WHERE source = ?1 AND resource = ?2 ORDER BY id LIMIT ?3",
            )?;
            q.query_map(params![t.source, t.resource, limit as i64], |r| {
                Ok(Rejected {
                    raw: r.get(0)?,
                    reason: r.get(1)?,
                    observed: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect()
        })
        .await
    }

    async fn stream_len(&self, t: &Table) -> StoreResult<u64> {
        let t = t.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM events WHERE source = ?1 AND resource = ?2",
                params![t.source, t.resource],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )
        })
        .await
    }

    async fn index_len(&self, t: &Table) -> StoreResult<u64> {
        let t = t.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM record_index WHERE source = ?1 AND resource = ?2",
                params![t.source, t.resource],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )
        })
        .await
    }

    async fn index_entry(&self, t: &Table, record: &str) -> StoreResult<Option<IndexEntry>> {
        let (t, record) = (t.clone(), record.to_string());
        self.with(move |c| index_entry(c, &t, &record)).await
    }

    async fn index_all(&self, t: &Table) -> StoreResult<Vec<(String, IndexEntry)>> {
        let t = t.clone();
        self.with(move |c| append::index_all(c, &t)).await
    }

    async fn lease(&self, t: &Table, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let (t, holder) = (t.clone(), holder.to_string());
        self.with(move |c| {
            let now = events::now_ms() as i64;
            let n = c.execute(
                "INSERT INTO leases (source, resource, holder, expires_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source, resource) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                 WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?5",
                params![t.source, t.resource, holder, now + ttl.as_millis() as i64, now],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, t: &Table, holder: &str) -> StoreResult<()> {
        let (t, holder) = (t.clone(), holder.to_string());
        self.with(move |c| {
            c.execute(
                "DELETE FROM leases WHERE source = ?1 AND resource = ?2 AND holder = ?3",
                params![t.source, t.resource, holder],
            )
            .map(|_| ())
        })
        .await
    }

    async fn heartbeat(
        &self,
        instance: &str,
        nonce: &str,
        ttl: Duration,
    ) -> StoreResult<super::Heartbeat> {
        let (instance, nonce) = (instance.to_string(), nonce.to_string());
        self.with(move |c| {
            let now = events::now_ms() as i64;
            let tx = c.transaction()?;
            tx.execute("DELETE FROM instances WHERE expires_ms <= ?1", params![now])?;
            let previous = tx
                .query_row(
                    "SELECT nonce FROM instances WHERE id = ?1",
                    params![instance],
                    |r| r.get::<_, String>(0),
                )
                .optional()?;
            tx.execute(
                "INSERT INTO instances (id, nonce, expires_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET nonce = excluded.nonce, expires_ms = excluded.expires_ms",
                params![instance, nonce, now + ttl.as_millis() as i64],
            )?;
            let live = {
                let mut q = tx.prepare("SELECT id FROM instances ORDER BY id")?;
                q.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(super::Heartbeat { live, previous })
        })
        .await
    }
}

mod append;
mod delivery;
mod documents;
mod fences;
mod open;
mod records;
mod table_state;

use append::{Batch, append, index_entry};
use fences::{check_fences, epoch};
use open::{Open, connect, connect_in_memory, file_id, reopen};
