//! The Redis backend: the public layout docs/redis-layout.md documents, on one Redis or a Redis Cluster (`connection.rs`).
//!
//! Every key of a table carries the hash tag `{source:resource}`, so a
//! table's stream, index, rejects and lease live in one cluster slot and
//! one Lua script can touch them all atomically.

use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script, streams::StreamRangeReply};

use self::connection::RedisConn;
use self::entries::{field, parse_entries, parse_id};
pub use self::keys::Keys;
use super::records::RecordStore;
use super::{AppendBatch, PollStart, Refusal, Store, StoreError, StoreResult, Table};
use crate::config::StoreConfig;
use crate::events::{AppendOutcome, Event, IndexEntry, Rejected, StreamId};

/// Returns 2 when the lease was free and is now taken, 1 when extended.
const LEASE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
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

/// The layout version this build reads and writes (docs/redis-layout.md).
const LAYOUT: u32 = 1;

pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    shown_url: String,
    lease: Script,
    release: Script,
    heartbeat: Script,
    begin: Script,
    claim: Script,
    trim: Script,
    /// Per table, the highest ID this process appended (or saw appended) and
    /// the epoch it was under: the append finds a tail a failover lost by
    /// it (see [`super::highest`]).
    highest: super::highest::Highest,
    /// Which tables keep the latest-record store (`records.rs`).
    keep: super::records::KeepSet,
    /// Per table, the stream as a bulk load's last chunk left it
    /// (`append.rs`).
    fresh: append::FreshTables,
}

impl RedisStore {
    /// Connects to the Redis or Redis Cluster the configuration names.
    pub async fn connect(cfg: &StoreConfig) -> anyhow::Result<RedisStore> {
        let key = connection::config_key(cfg);
        let urls = connection::node_urls(cfg)?;
        let shown_url = urls
            .iter()
            .map(|u| connection::redact(u))
            .collect::<Vec<_>>()
            .join(", ");
        let conn = connection::open(cfg, urls).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach Redis at {shown_url} ({key}): {e}; start Redis or fix {key}"
            )
        })?;
        let prefix = &cfg.key_prefix;
        let store = RedisStore {
            conn,
            prefix: prefix.to_string(),
            shown_url,
            lease: Script::new(LEASE_LUA),
            release: Script::new(RELEASE_LUA),
            heartbeat: Script::new(instances::HEARTBEAT_LUA),
            begin: Script::new(include_str!("begin.lua")),
            claim: Script::new(include_str!("claim.lua")),
            trim: lua::with_lib(include_str!("trim.lua")),
            highest: Default::default(),
            keep: Default::default(),
            fresh: Default::default(),
        };
        store.ping().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        store.check_layout().await?;
        store.warn_about_risky_settings().await;
        Ok(store)
    }

    pub fn keys(&self, t: &Table) -> Keys {
        Keys::new(&self.prefix, t)
    }

    /// The layout marker `P:layout` (docs/redis-layout.md), checked at open:
    /// written on a store without one (a new store, or one from before the
    /// marker: that is layout 1), refused when a newer build wrote a higher
    /// one. A later layout migrates here, at open, never inside a read.
    async fn check_layout(&self) -> anyhow::Result<()> {
        let key = format!("{}:layout", self.prefix);
        let mut c = self.conn.clone();
        let _: bool = c
            .set_nx(&key, LAYOUT)
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.err(e)))?;
        let have: String = c
            .get(&key)
            .await
            .map_err(|e| anyhow::anyhow!("{}", self.err(e)))?;
        match have.parse::<u32>() {
            Ok(v) if v <= LAYOUT => Ok(()),
            _ => anyhow::bail!(
                "the Redis at {} holds layout {have:?} under key prefix {:?}, newer than this build's {LAYOUT}; \
                 run a newer build, or another store.key_prefix",
                self.shown_url,
                self.prefix
            ),
        }
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
        StoreError::Unavailable(format!("redis at {}: {e}", self.shown_url))
    }
}

/// The refusal a script's error reply carries: its code (`LEASELOST`,
/// `EPOCHCHANGED`, `RACED`), mapped here and nowhere else. (A lost tail,
/// `Refusal::Failover`, is found by the append's plan in Rust.)
fn refusal(e: &redis::RedisError) -> Option<Refusal> {
    match e.code()? {
        "LEASELOST" => Some(Refusal::LeaseLost),
        "EPOCHCHANGED" => Some(Refusal::EpochChanged),
        "RACED" => Some(Refusal::Raced),
        _ => None,
    }
}

impl RedisStore {
    /// `XRANGE` or `XREVRANGE` (`cmd`) of `t`'s events from `from` to
    /// `to`, at most `limit`.
    async fn range(
        &self,
        t: &Table,
        (cmd, from, to): (&str, String, &str),
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let mut c = self.conn.clone();
        let reply: redis::Value = redis::cmd(cmd)
            .arg(self.keys(t).events)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        parse_entries(reply)
    }
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

    async fn last_id(&self, t: &Table) -> StoreResult<StreamId> {
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

    async fn issued_id(&self, t: &Table) -> StoreResult<StreamId> {
        // A missing stream issued nothing: checked in the script rather
        // than told apart by the text of XINFO's error.
        static ISSUED: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
            Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end \
                 local info = redis.call('XINFO', 'STREAM', KEYS[1]) \
                 for i = 1, #info, 2 do if info[i] == 'last-generated-id' then return info[i + 1] end end \
                 return '0-0'",
            )
        });
        let mut c = self.conn.clone();
        let id: String = ISSUED
            .key(self.keys(t).events)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        parse_id(&id)
    }

    async fn append(&self, t: &Table, batch: AppendBatch<'_>) -> StoreResult<AppendOutcome> {
        if batch.records.is_empty() {
            return Ok(AppendOutcome::default());
        }
        self.ready_records(t).await?;
        self.append_planned(t, &batch).await
    }

    async fn reject(&self, t: &Table, raw: &str, reason: &str, observed: u64) -> StoreResult<()> {
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

    async fn read(&self, t: &Table, after: StreamId, limit: usize) -> StoreResult<Vec<Event>> {
        let range = ("XRANGE", format!("({after}"), "+");
        self.range(t, range, limit).await
    }

    async fn read_between_trims(
        &self,
        t: &Table,
        after: StreamId,
        limit: usize,
    ) -> StoreResult<(StreamId, Vec<Event>, StreamId)> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        let (before, reply, later): (Option<String>, redis::Value, Option<String>) = redis::pipe()
            .get(&keys.trimmed)
            .cmd("XRANGE")
            .arg(&keys.events)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .get(&keys.trimmed)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        let trimmed = |v: Option<String>| v.map_or(Ok(StreamId::ZERO), |v| parse_id(&v));
        Ok((trimmed(before)?, parse_entries(reply)?, trimmed(later)?))
    }

    async fn rejects(&self, t: &Table, limit: usize) -> StoreResult<Vec<Rejected>> {
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

    async fn stream_len(&self, t: &Table) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        c.xlen(self.keys(t).events).await.map_err(|e| self.err(e))
    }

    async fn index_len(&self, t: &Table) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        c.hlen(self.keys(t).index).await.map_err(|e| self.err(e))
    }

    async fn index_entry(&self, t: &Table, record: &str) -> StoreResult<Option<IndexEntry>> {
        let mut c = self.conn.clone();
        let v: Option<String> = c
            .hget(self.keys(t).index, record)
            .await
            .map_err(|e| self.err(e))?;
        Ok(v.as_deref().and_then(IndexEntry::decode))
    }

    async fn index_all(&self, t: &Table) -> StoreResult<Vec<(String, IndexEntry)>> {
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = c
            .hgetall(self.keys(t).index)
            .await
            .map_err(|e| self.err(e))?;
        Ok(all
            .into_iter()
            .filter_map(|(id, v)| Some((id, IndexEntry::decode(&v)?)))
            .collect())
    }

    async fn lease(&self, t: &Table, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let got: i64 = self
            .lease
            .key(self.keys(t).lease)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(got >= 1)
    }

    async fn begin_poll(&self, t: &Table, holder: &str, ttl: Duration) -> StoreResult<PollStart> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        let v: Vec<redis::Value> = self
            .begin
            .key(&keys.lease)
            .key(&keys.epoch)
            .key(&keys.events)
            .key(&keys.loading)
            .key(&keys.reconcile)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        let get = |i: usize| -> StoreResult<String> {
            match v.get(i) {
                Some(redis::Value::Int(n)) => Ok(n.to_string()),
                Some(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
                _ => Err(StoreError::Corrupt(format!("begin.lua answered {v:?}"))),
            }
        };
        if get(0)? != "1" {
            return Ok(PollStart::default());
        }
        let epoch = get(1)?;
        Ok(PollStart {
            leased: true,
            epoch: (!epoch.is_empty()).then_some(epoch),
            last: parse_id(&get(2)?)?,
            loading: get(3)? == "1",
            reconcile: get(4)? == "1",
        })
    }

    async fn release(&self, t: &Table, holder: &str) -> StoreResult<()> {
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

    async fn heartbeat(
        &self,
        instance: &str,
        nonce: &str,
        ttl: Duration,
    ) -> StoreResult<super::Heartbeat> {
        self.beat(&self.heartbeat, instance, nonce, ttl).await
    }
}

mod append;
mod connection;
mod delivery;
mod documents;
mod entries;
mod groups;
mod instances;
mod keys;
mod lua;
mod records;
mod table_state;
