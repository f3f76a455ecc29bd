//! The Redis backend: the public layout of DESIGN §3.
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

use super::{
    AppendBatch, Store, StoreError, StoreResult, Target, decode_subscription, decode_subscriptions,
};
use crate::{
    events::{AppendOutcome, Event, IndexEntry, Rejected, StreamId},
    subscription::Subscription,
};

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
}

impl Keys {
    pub fn new(prefix: &str, t: &Target) -> Keys {
        let base = format!("{prefix}:{{{}:{}}}", t.source, t.resource);
        Keys {
            events: format!("{base}:events"),
            index: format!("{base}:index"),
            rejects: format!("{base}:rejects"),
            lease: format!("{base}:lease"),
        }
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

/// `P:subscriptions`, a hash of subscription id -> JSON document.
fn subscriptions_key(prefix: &str) -> String {
    format!("{prefix}:subscriptions")
}

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    shown_url: String,
    append: Script,
    lease: Script,
    release: Script,
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
        inv.key(&keys.events).key(&keys.index).key(&keys.lease);
        inv.arg(batch.holder)
            .arg(if batch.snapshot { "1" } else { "0" })
            .arg(batch.observed);
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
        let reply: StreamRangeReply = c
            .xrange_count(self.keys(t).events, format!("({after}"), "+", limit)
            .await
            .map_err(|e| self.err(e))?;
        reply
            .ids
            .iter()
            .map(|e| {
                let op: String = field(e, "op")?;
                let prev: String = field(e, "prev")?;
                let snapshot: String = field(e, "snapshot")?;
                Ok(Event {
                    id: parse_id(&e.id)?,
                    op: op.parse().map_err(StoreError::Corrupt)?,
                    record: field(e, "record")?,
                    stamp: field(e, "stamp")?,
                    prev: prev.parse().ok(),
                    snapshot: snapshot == "1",
                    observed: field(e, "observed")?,
                    data: field(e, "data")?,
                })
            })
            .collect()
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

    async fn put_subscription(&self, s: &Subscription) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let _: i64 = c
            .hset(subscriptions_key(&self.prefix), &s.id, json)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>> {
        let mut c = self.conn.clone();
        let v: Option<String> = c
            .hget(subscriptions_key(&self.prefix), id)
            .await
            .map_err(|e| self.err(e))?;
        v.as_deref().map(decode_subscription).transpose()
    }

    async fn subscriptions(&self) -> StoreResult<Vec<Subscription>> {
        let mut c = self.conn.clone();
        let all: Vec<String> = c
            .hvals(subscriptions_key(&self.prefix))
            .await
            .map_err(|e| self.err(e))?;
        decode_subscriptions(&all)
    }

    async fn delete_subscription(&self, id: &str) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = c
            .hdel(subscriptions_key(&self.prefix), id)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }
}
