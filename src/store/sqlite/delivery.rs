//! Subscriptions and delivery state in the embedded store.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{EVENT_COLUMNS, SqliteStore, event_row, id_at, read_after};
use crate::{
    events::{Event, StreamId},
    store::{
        ATTEMPTS_KEPT, DeliveryStore, StoreError, StoreResult, Table, decode_json,
        decode_subscription, decode_subscriptions,
    },
    subscription::Subscription,
    subscription::state::{Attempt, DeadLetter, RetryState},
};

/// A subscription's delivery position on a table, none before its first claim.
fn position(c: &Connection, sub_id: &str, t: &Table) -> rusqlite::Result<Option<StreamId>> {
    c.query_row(
        "SELECT stamp, seq FROM delivery_position WHERE sub = ?1 AND source = ?2 AND resource = ?3",
        params![sub_id, t.source, t.resource],
        |r| id_at(r, 0),
    )
    .optional()
}

/// Moves up to `count` entries after the position into the pending set,
/// and the position past them, in one transaction.
fn claim(
    c: &mut Connection,
    sub_id: &str,
    t: &Table,
    start: StreamId,
    count: usize,
) -> rusqlite::Result<Vec<Event>> {
    let tx = c.transaction()?;
    let pos = position(&tx, sub_id, t)?.unwrap_or(start);
    let events = read_after(&tx, t, pos, count)?;
    let last = events.last().map(|e| e.id).unwrap_or(pos);
    tx.execute(
        "INSERT INTO delivery_position (sub, source, resource, stamp, seq) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sub, source, resource) DO UPDATE SET stamp = excluded.stamp, seq = excluded.seq",
        params![sub_id, t.source, t.resource, last.stamp as i64, last.seq as i64],
    )?;
    for e in &events {
        add_pending(&tx, sub_id, t, e.id)?;
    }
    tx.commit()?;
    Ok(events)
}

fn add_pending(c: &Connection, sub_id: &str, t: &Table, id: StreamId) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO delivery_pending (sub, source, resource, stamp, seq, attempts, next_at) VALUES (?1, ?2, ?3, ?4, ?5, 0, 0)
         ON CONFLICT (sub, source, resource, stamp, seq) DO UPDATE SET attempts = 0, next_at = 0",
    )?
    .execute(params![sub_id, t.source, t.resource, id.stamp as i64, id.seq as i64])
    .map(|_| ())
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn put_subscription(&self, s: &Subscription) -> StoreResult<()> {
        let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id = s.id.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO subscriptions (id, body) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                params![id, json],
            )
            .map(|_| ())
        })
        .await
    }

    async fn replace_subscription(&self, s: &Subscription, expected: u64) -> StoreResult<bool> {
        let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id = s.id.clone();
        let expected = i64::try_from(expected).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.with(move |c| {
            // Documents written before versions existed count as version 0.
            c.execute(
                "UPDATE subscriptions SET body = ?2
                 WHERE id = ?1 AND coalesce(json_extract(body, '$.version'), 0) = ?3",
                params![id, json, expected],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>> {
        let id = id.to_string();
        let json = self
            .with(move |c| {
                c.query_row(
                    "SELECT body FROM subscriptions WHERE id = ?1",
                    params![id],
                    |r| r.get::<_, String>(0),
                )
                .optional()
            })
            .await?;
        json.as_deref().map(decode_subscription).transpose()
    }

    async fn subscriptions(&self) -> StoreResult<Vec<Subscription>> {
        let all = self
            .with(|c| {
                let mut q = c.prepare_cached("SELECT body FROM subscriptions")?;
                q.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        decode_subscriptions(&all)
    }

    async fn delete_subscription(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_string();
        self.with(move |c| {
            c.execute("DELETE FROM subscriptions WHERE id = ?1", params![id])
                .map(|n| n == 1)
        })
        .await
    }

    async fn subscriptions_version(&self) -> StoreResult<u64> {
        self.with(|c| {
            c.query_row(
                "SELECT coalesce(max(version), 0) FROM subscriptions_version",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|v| v as u64)
    }

    async fn claim(
        &self,
        sub_id: &str,
        t: &Table,
        start: StreamId,
        count: usize,
    ) -> StoreResult<Vec<Event>> {
        let (sub_id, t) = (sub_id.to_string(), t.clone());
        self.with(move |c| claim(c, &sub_id, &t, start, count))
            .await
    }

    async fn pending(&self, sub_id: &str, t: &Table) -> StoreResult<Vec<(Event, RetryState)>> {
        let (sub_id, t) = (sub_id.to_string(), t.clone());
        self.with(move |c| {
            let cols: Vec<String> = EVENT_COLUMNS.split(", ").map(|col| format!("e.{col}")).collect();
            let mut q = c.prepare_cached(&format!(
                "SELECT {}, p.attempts, p.next_at FROM delivery_pending p
                 JOIN events e ON e.source = p.source AND e.resource = p.resource AND e.stamp = p.stamp AND e.seq = p.seq
                 WHERE p.sub = ?1 AND p.source = ?2 AND p.resource = ?3 ORDER BY p.stamp, p.seq",
                cols.join(", ")
            ))?;
            // Attempts and next_at follow the event's columns.
            let n = cols.len();
            q.query_map(params![sub_id, t.source, t.resource], |r| {
                let state = RetryState {
                    attempts: r.get::<_, i64>(n)? as u32,
                    next_at_ms: r.get::<_, i64>(n + 1)? as u64,
                };
                Ok((event_row(r)?, state))
            })?
            .collect()
        })
        .await
    }

    async fn retry_later(
        &self,
        sub_id: &str,
        t: &Table,
        id: StreamId,
        state: RetryState,
    ) -> StoreResult<()> {
        let (sub_id, t) = (sub_id.to_string(), t.clone());
        self.with(move |c| {
            c.execute(
                "UPDATE delivery_pending SET attempts = ?6, next_at = ?7
                 WHERE sub = ?1 AND source = ?2 AND resource = ?3 AND stamp = ?4 AND seq = ?5",
                params![
                    sub_id,
                    t.source,
                    t.resource,
                    id.stamp as i64,
                    id.seq as i64,
                    state.attempts as i64,
                    state.next_at_ms as i64
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn retry_now(&self, sub_id: &str, t: &Table, now_ms: u64) -> StoreResult<u64> {
        let (sub_id, t) = (sub_id.to_string(), t.clone());
        self.with(move |c| {
            let tx = c.transaction()?;
            let (waiting, latest): (i64, Option<i64>) = tx.query_row(
                "SELECT COUNT(*), MAX(next_at) FROM delivery_pending
                 WHERE sub = ?1 AND source = ?2 AND resource = ?3 AND attempts > 0 AND next_at > ?4",
                params![sub_id, t.source, t.resource, now_ms as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if let Some(latest) = latest {
                tx.execute(
                    "UPDATE delivery_pending SET next_at = MAX(next_at - ?4, 0)
                     WHERE sub = ?1 AND source = ?2 AND resource = ?3 AND attempts > 0",
                    params![sub_id, t.source, t.resource, latest - now_ms as i64],
                )?;
            }
            tx.commit()?;
            Ok(waiting as u64)
        })
        .await
    }

    async fn waiting_retries(&self, sub_id: &str, t: &Table) -> StoreResult<u64> {
        let (sub_id, t) = (sub_id.to_string(), t.clone());
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM delivery_pending
                 WHERE sub = ?1 AND source = ?2 AND resource = ?3 AND attempts > 0",
                params![sub_id, t.source, t.resource],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn settle(&self, sub_id: &str, t: &Table, ids: &[StreamId]) -> StoreResult<()> {
        let (sub_id, t, ids) = (sub_id.to_string(), t.clone(), ids.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut q = tx.prepare_cached(
                    "DELETE FROM delivery_pending WHERE sub = ?1 AND source = ?2 AND resource = ?3 AND stamp = ?4 AND seq = ?5",
                )?;
                for id in &ids {
                    q.execute(params![sub_id, t.source, t.resource, id.stamp as i64, id.seq as i64])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn add_pending(&self, sub_id: &str, t: &Table, ids: &[StreamId]) -> StoreResult<()> {
        let (sub_id, t, ids) = (sub_id.to_string(), t.clone(), ids.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            for id in &ids {
                add_pending(&tx, &sub_id, &t, *id)?;
            }
            tx.commit()
        })
        .await
    }

    async fn reposition(&self, sub_id: &str, t: &Table, after: StreamId) -> StoreResult<()> {
        let (sub_id, t) = (sub_id.to_string(), t.clone());
        self.with(move |c| {
            c.execute(
                "INSERT INTO delivery_position (sub, source, resource, stamp, seq) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sub, source, resource) DO UPDATE SET stamp = excluded.stamp, seq = excluded.seq",
                params![sub_id, t.source, t.resource, after.stamp as i64, after.seq as i64],
            )
            .map(|_| ())
        })
        .await
    }

    async fn position(&self, sub_id: &str, t: &Table) -> StoreResult<Option<StreamId>> {
        let (sub_id, t) = (sub_id.to_string(), t.clone());
        self.with(move |c| position(c, &sub_id, &t)).await
    }

    async fn forget_subscription(&self, sub_id: &str, tables: &[Table]) -> StoreResult<()> {
        let (sub_id, tables) = (sub_id.to_string(), tables.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            for table in [
                "delivery_position",
                "delivery_pending",
                "dead_letters",
                "attempts",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE sub = ?1"),
                    params![sub_id],
                )?;
            }
            for t in tables.iter().map(|t| t.delivery_lease(&sub_id)) {
                tx.execute(
                    "DELETE FROM leases WHERE source = ?1 AND resource = ?2",
                    params![t.source, t.resource],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn dead_letter(&self, sub_id: &str, d: &DeadLetter) -> StoreResult<()> {
        let json = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (sub_id, key, at) = (sub_id.to_string(), d.key(), d.at_ms as i64);
        self.with(move |c| {
            c.execute(
                "INSERT INTO dead_letters (sub, key, at_ms, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sub, key) DO UPDATE SET at_ms = excluded.at_ms, body = excluded.body",
                params![sub_id, key, at, json],
            )
            .map(|_| ())
        })
        .await
    }

    async fn dead_letters(&self, sub_id: &str) -> StoreResult<Vec<DeadLetter>> {
        let sub_id = sub_id.to_string();
        let all = self
            .with(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT body FROM dead_letters WHERE sub = ?1 ORDER BY at_ms",
                )?;
                q.query_map(params![sub_id], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        all.iter().map(|j| decode_json("dead letter", j)).collect()
    }

    async fn remove_dead_letter(&self, sub_id: &str, key: &str) -> StoreResult<bool> {
        let (sub_id, key) = (sub_id.to_string(), key.to_string());
        self.with(move |c| {
            c.execute(
                "DELETE FROM dead_letters WHERE sub = ?1 AND key = ?2",
                params![sub_id, key],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn take_dead_letters(&self, sub_id: &str) -> StoreResult<Vec<DeadLetter>> {
        let sub_id = sub_id.to_string();
        let all = self
            .with(move |c| {
                let tx = c.transaction()?;
                let all = {
                    let mut q = tx.prepare_cached(
                        "SELECT body FROM dead_letters WHERE sub = ?1 ORDER BY at_ms",
                    )?;
                    q.query_map(params![sub_id], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                };
                tx.execute("DELETE FROM dead_letters WHERE sub = ?1", params![sub_id])?;
                tx.commit()?;
                Ok(all)
            })
            .await?;
        all.iter().map(|j| decode_json("dead letter", j)).collect()
    }

    async fn log_attempts(&self, sub_id: &str, attempts: &[Attempt]) -> StoreResult<()> {
        let json = attempts
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sub_id = sub_id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            for body in &json {
                tx.prepare_cached("INSERT INTO attempts (sub, body) VALUES (?1, ?2)")?
                    .execute(params![sub_id, body])?;
            }
            let id = tx.last_insert_rowid();
            tx.execute(
                "DELETE FROM attempts WHERE sub = ?1 AND id <= ?2",
                params![sub_id, id - ATTEMPTS_KEPT as i64],
            )?;
            tx.commit()
        })
        .await
    }

    async fn attempts(&self, sub_id: &str, limit: usize) -> StoreResult<Vec<Attempt>> {
        let sub_id = sub_id.to_string();
        let all = self
            .with(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT body FROM attempts WHERE sub = ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                q.query_map(params![sub_id, limit as i64], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        all.iter().map(|j| decode_json("attempt", j)).collect()
    }
}
