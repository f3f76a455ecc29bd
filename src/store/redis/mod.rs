//! The Redis backend: the public layout of README.md ("The Redis layout").
//!
//! Every key of a target carries the hash tag `{source:resource}`, so a
//! target's stream, index, rejects and lease live in one cluster slot and
//! one Lua script can touch them all atomically.

use std::time::Duration;

use async_trait::async_trait;
use redis::{
    AsyncCommands, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::StreamRangeReply,
};

use super::{AppendBatch, Store, StoreError, StoreResult, Target};
use crate::events::{AppendOutcome, Event, IndexEntry, Rejected, StreamId};

/// The key names of one target, defined in one place.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `P:{s:r}:events`, a stream with one entry per change.
    pub events: String,
    /// `P:{s:r}:index`, a hash of record id -> `<stamp>` or `<stamp>:deleted`.
    pub index: String,
    /// `P:{s:r}:rejects`, a stream of records that could not become events.
    pub rejects: String,
    /// `P:{s:r}:lease`, the holder polling this target, with a TTL.
    pub lease: String,
    /// `P:{s:r}:status`, the last poll (JSON), written by the lease holder.
    pub status: String,
    /// `P:{s:r}:trimmed`, the ID of the last event retention removed.
    pub trimmed: String,
    /// `P:{s:r}:loading`, present while the initial load has not completed.
    pub loading: String,
    /// `P:{s:r}:epoch`, a random value written at the table's first use; a
    /// store that lost its data has none, or another one.
    pub epoch: String,
    /// `P:{s:r}:reconcile`, present while a reconcile sweep is requested.
    pub reconcile: String,
    base: String,
}

impl Keys {
    pub fn new(prefix: &str, t: &Target) -> Keys {
        let base = format!("{prefix}:{{{}:{}}}", t.source, t.resource);
        Keys {
            events: format!("{base}:events"),
            index: format!("{base}:index"),
            rejects: format!("{base}:rejects"),
            lease: format!("{base}:lease"),
            status: format!("{base}:status"),
            trimmed: format!("{base}:trimmed"),
            loading: format!("{base}:loading"),
            epoch: format!("{base}:epoch"),
            reconcile: format!("{base}:reconcile"),
            base,
        }
    }

    /// `P:{s:r}:pending:<sub>`, a hash of stream ID -> `<attempts>:<next attempt ms>`.
    pub fn pending(&self, sub: &str) -> String {
        format!("{}:pending:{sub}", self.base)
    }

    /// The consumer group of a subscription on the events stream.
    pub fn group(sub: &str) -> String {
        format!("sub:{sub}")
    }
}

const LEASE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    shown_url: String,
    append: Script,
    lease: Script,
    release: Script,
    claim: Script,
    trim: Script,
}

/// The URL with any password replaced, safe for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable redis url>".into(),
    }
}

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<RedisStore> {
        let shown_url = redact(url);
        let fail = |e: redis::RedisError| {
            anyhow::anyhow!(
                "cannot reach Redis at {shown_url} (store.redis_url): {e}; \
                 start Redis or fix store.redis_url"
            )
        };
        let client = redis::Client::open(url).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(fail)?;
        let store = RedisStore {
            conn,
            prefix: prefix.to_string(),
            shown_url,
            append: Script::new(include_str!("append.lua")),
            lease: Script::new(LEASE_LUA),
            release: Script::new(RELEASE_LUA),
            claim: Script::new(include_str!("claim.lua")),
            trim: Script::new(include_str!("trim.lua")),
        };
        store.ping().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        store.warn_about_risky_settings().await;
        Ok(store)
    }

    pub fn keys(&self, t: &Target) -> Keys {
        Keys::new(&self.prefix, t)
    }

    /// A relay that loses writes silently breaks exactly-once, so say so
    /// loudly when Redis may evict keys or keeps nothing on disk.
    async fn warn_about_risky_settings(&self) {
        let get = |name: &'static str| {
            let mut c = self.conn.clone();
            async move {
                let v: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut c)
                    .await;
                v.ok().and_then(|v| v.get(1).cloned())
            }
        };
        if let Some(policy) = get("maxmemory-policy").await
            && policy != "noeviction"
        {
            tracing::warn!(%policy, "Redis may evict keys (maxmemory-policy); set it to noeviction or events can be lost");
        }
        let aof = get("appendonly").await;
        let save = get("save").await;
        if aof.as_deref() == Some("no") && save.as_deref().is_some_and(str::is_empty) {
            tracing::warn!(
                "Redis has no persistence (appendonly no, no save points); a Redis restart loses every stream"
            );
        }
    }

    fn err(&self, e: redis::RedisError) -> StoreError {
        if e.to_string().contains("LEASELOST") {
            return StoreError::LeaseLost("target".into());
        }
        if e.to_string().contains("EPOCHCHANGED") {
            return StoreError::Reset("target".into());
        }
        StoreError::Unavailable(format!("redis at {}: {e}", self.shown_url))
    }
}

fn field<T: redis::FromRedisValue>(e: &redis::streams::StreamId, name: &str) -> StoreResult<T> {
    e.get(name).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "stream entry {} has no readable field {name:?}",
            e.id
        ))
    })
}

/// Parses an `XRANGE` reply straight from the wire values, moving each
/// field's bytes into the event instead of going through a map per entry
/// (the replay path reads thousands of entries per request).
fn parse_entries(reply: redis::Value) -> StoreResult<Vec<Event>> {
    use redis::Value;
    let corrupt = |what: &str| StoreError::Corrupt(format!("unexpected XRANGE reply: {what}"));
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| corrupt("field is not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(corrupt("field is not a string")),
    };
    let Value::Array(entries) = reply else {
        return Err(corrupt("not an array"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(corrupt("entry is not an array"));
        };
        let (Some(Value::Array(fields)), Some(id)) = (parts.pop(), parts.pop()) else {
            return Err(corrupt("entry has no fields"));
        };
        let id = parse_id(&text(id)?)?;
        let (mut op, mut record, mut stamp, mut prev, mut snapshot, mut observed, mut data) =
            (None, None, None, None, false, 0, None);
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let v = text(v)?;
            match text(k)?.as_str() {
                "op" => op = Some(v.parse().map_err(StoreError::Corrupt)?),
                "record" => record = Some(v),
                "stamp" => stamp = v.parse().ok(),
                "prev" => prev = v.parse().ok(),
                "snapshot" => snapshot = v == "1",
                "observed" => observed = v.parse().unwrap_or(0),
                "data" => data = Some(v),
                _ => {}
            }
        }
        let missing =
            || StoreError::Corrupt(format!("stream entry {id} lacks op, record, stamp or data"));
        out.push(Event {
            id,
            op: op.ok_or_else(missing)?,
            record: record.ok_or_else(missing)?,
            stamp: stamp.ok_or_else(missing)?,
            prev,
            snapshot,
            observed,
            data: data.ok_or_else(missing)?,
        });
    }
    Ok(out)
}

fn parse_id(s: &str) -> StoreResult<StreamId> {
    s.parse().map_err(StoreError::Corrupt)
}

#[async_trait]
impl Store for RedisStore {
    fn describe(&self) -> String {
        format!("redis {} (key prefix {:?})", self.shown_url, self.prefix)
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    async fn last_id(&self, t: &Target) -> StoreResult<StreamId> {
        let mut c = self.conn.clone();
        let reply: StreamRangeReply = c
            .xrevrange_count(self.keys(t).events, "+", "-", 1)
            .await
            .map_err(|e| self.err(e))?;
        match reply.ids.first() {
            Some(e) => parse_id(&e.id),
            None => Ok(StreamId::ZERO),
        }
    }

    async fn append(&self, t: &Target, batch: AppendBatch<'_>) -> StoreResult<AppendOutcome> {
        if batch.records.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let keys = self.keys(t);
        let mut inv = self.append.prepare_invoke();
        inv.key(&keys.events)
            .key(&keys.index)
            .key(&keys.lease)
            .key(&keys.epoch);
        inv.arg(batch.holder)
            .arg(if batch.snapshot { "1" } else { "0" })
            .arg(batch.observed)
            .arg(batch.epoch);
        for r in batch.records {
            inv.arg(&r.id)
                .arg(r.stamp)
                .arg(if r.deleted { "1" } else { "0" })
                .arg(r.raw.get());
        }
        let mut c = self.conn.clone();
        let n: Vec<u64> = inv
            .invoke_async(&mut c)
            .await
            .map_err(|e| match self.err(e) {
                StoreError::LeaseLost(_) => StoreError::LeaseLost(t.to_string()),
                StoreError::Reset(_) => StoreError::Reset(t.to_string()),
                other => other,
            })?;
        let [created, updated, deleted, restored, duplicates, late] = n[..] else {
            return Err(StoreError::Corrupt(format!("append script returned {n:?}")));
        };
        Ok(AppendOutcome {
            created,
            updated,
            deleted,
            restored,
            duplicates,
            late,
        })
    }

    async fn reject(&self, t: &Target, raw: &str, reason: &str, observed: u64) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: String = c
            .xadd(
                self.keys(t).rejects,
                "*",
                &[
                    ("raw", raw),
                    ("reason", reason),
                    ("observed", &observed.to_string()),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn read(&self, t: &Target, after: StreamId, limit: usize) -> StoreResult<Vec<Event>> {
        let mut c = self.conn.clone();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys(t).events)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        parse_entries(reply)
    }

    async fn rejects(&self, t: &Target, limit: usize) -> StoreResult<Vec<Rejected>> {
        let mut c = self.conn.clone();
        let reply: StreamRangeReply = c
            .xrange_count(self.keys(t).rejects, "-", "+", limit)
            .await
            .map_err(|e| self.err(e))?;
        reply
            .ids
            .iter()
            .map(|e| {
                Ok(Rejected {
                    raw: field(e, "raw")?,
                    reason: field(e, "reason")?,
                    observed: field(e, "observed")?,
                })
            })
            .collect()
    }

    async fn stream_len(&self, t: &Target) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        c.xlen(self.keys(t).events).await.map_err(|e| self.err(e))
    }

    async fn index_len(&self, t: &Target) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        c.hlen(self.keys(t).index).await.map_err(|e| self.err(e))
    }

    async fn index_entry(&self, t: &Target, record: &str) -> StoreResult<Option<IndexEntry>> {
        let mut c = self.conn.clone();
        let v: Option<String> = c
            .hget(self.keys(t).index, record)
            .await
            .map_err(|e| self.err(e))?;
        Ok(v.as_deref().and_then(IndexEntry::decode))
    }

    async fn lease(&self, t: &Target, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let got: i64 = self
            .lease
            .key(self.keys(t).lease)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(got == 1)
    }

    async fn release(&self, t: &Target, holder: &str) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .release
            .key(self.keys(t).lease)
            .arg(holder)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

mod delivery;
mod table_state;
