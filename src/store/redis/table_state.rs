//! The Redis keys of a table besides its events: `P:{s:r}:status`,
//! `P:{s:r}:loading`, `P:{s:r}:trimmed`, `P:{s:r}:epoch` and `P:{s:r}:reconcile`, and the trim script.

use async_trait::async_trait;
use redis::AsyncCommands;

use super::{RedisConn, RedisStore, parse_id};
use crate::{
    events::StreamId,
    store::{PollStatus, StoreError, StoreResult, Table, TableState, decode_json},
};

/// Events trim.lua removes per call: a short script, so Redis serves
/// others between chunks of a large trim.
const TRIM_CHUNK: usize = 1000;

/// Epoch keys per MGET (`TableState::epochs`).
const EPOCHS_AT_ONCE: usize = 1000;

#[async_trait]
impl TableState for RedisStore {
    async fn trim(&self, t: &Table, first_kept: StreamId) -> StoreResult<u64> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        let mut total = 0;
        loop {
            let (removed, more): (u64, u8) = self
                .trim
                .key(&keys.events)
                .key(&keys.trimmed)
                .key(&keys.index)
                .key(&keys.records)
                .key(&keys.stamps)
                .key(&keys.late)
                .key(&keys.kept)
                .arg(first_kept.to_string())
                .arg(self.keep_arg(t))
                .arg(TRIM_CHUNK)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            total += removed;
            if more == 0 {
                if total > 0 {
                    self.drop_trimmed_pending(t, first_kept).await?;
                }
                return Ok(total);
            }
        }
    }

    async fn set_loading(&self, t: &Table, loading: bool) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let key = self.keys(t).loading;
        if loading {
            c.set(key, "1").await
        } else {
            c.del(key).await
        }
        .map_err(|e| self.err(e))
    }

    async fn loading(&self, t: &Table) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        c.exists(self.keys(t).loading)
            .await
            .map_err(|e| self.err(e))
    }

    async fn epoch(&self, t: &Table) -> StoreResult<Option<String>> {
        let mut c = self.conn.clone();
        c.get(self.keys(t).epoch).await.map_err(|e| self.err(e))
    }

    /// One MGET per [`EPOCHS_AT_ONCE`] tables on one node (a cluster
    /// spreads the keys over slots: one GET each there).
    async fn epochs(&self, ts: &[Table]) -> StoreResult<Vec<Option<String>>> {
        let mut c = self.conn.clone();
        if matches!(c, RedisConn::Cluster(_)) {
            let mut out = Vec::with_capacity(ts.len());
            for t in ts {
                out.push(c.get(self.keys(t).epoch).await.map_err(|e| self.err(e))?);
            }
            return Ok(out);
        }
        let mut out = Vec::with_capacity(ts.len());
        for chunk in ts.chunks(EPOCHS_AT_ONCE) {
            let keys: Vec<String> = chunk.iter().map(|t| self.keys(t).epoch).collect();
            let got: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            out.extend(got);
        }
        Ok(out)
    }

    async fn init_epoch(&self, t: &Table, fresh: &str) -> StoreResult<String> {
        let mut c = self.conn.clone();
        let key = self.keys(t).epoch;
        let (now,): (String,) = redis::pipe()
            .atomic()
            .set_nx(&key, fresh)
            .ignore()
            .get(&key)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(now)
    }

    async fn request_reconcile(&self, t: &Table) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.set(self.keys(t).reconcile, "1")
            .await
            .map_err(|e| self.err(e))
    }

    async fn take_reconcile_request(&self, t: &Table) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let v: Option<String> = c
            .get_del(self.keys(t).reconcile)
            .await
            .map_err(|e| self.err(e))?;
        Ok(v.is_some())
    }

    async fn trimmed_through(&self, t: &Table) -> StoreResult<StreamId> {
        let mut c = self.conn.clone();
        let v: Option<String> = c.get(self.keys(t).trimmed).await.map_err(|e| self.err(e))?;
        v.map_or(Ok(StreamId::ZERO), |v| parse_id(&v))
    }

    async fn put_poll_status(&self, t: &Table, s: &PollStatus) -> StoreResult<()> {
        let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.conn.clone();
        c.set(self.keys(t).status, json)
            .await
            .map_err(|e| self.err(e))
    }

    async fn poll_status(&self, t: &Table) -> StoreResult<Option<PollStatus>> {
        let mut c = self.conn.clone();
        let json: Option<String> = c.get(self.keys(t).status).await.map_err(|e| self.err(e))?;
        json.map(|j| decode_json("poll status", &j)).transpose()
    }
}
