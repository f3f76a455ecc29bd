//! Subscriptions and delivery state in Redis (the layout in docs/redis-layout.md).

use async_trait::async_trait;
use redis::AsyncCommands;

use super::groups::{DESTROY_GROUP, GROUP_POSITION, pending_entry};
use super::{Keys, RedisStore, entries::parse_packed, parse_entries};
use crate::{
    events::{Event, StreamId},
    store::{
        ATTEMPTS_KEPT, DeliveryStore, StoreError, StoreResult, Table, decode_json,
        decode_subscription, decode_subscriptions,
    },
    subscription::Subscription,
    subscription::state::{Attempt, DeadLetter, RetryState},
};

/// `P:sub:<id>:dead`, a hash of `source/resource/<stream id>` -> dead letter JSON.
fn dead_key(prefix: &str, sub_id: &str) -> String {
    format!("{prefix}:sub:{sub_id}:dead")
}

/// `P:sub:<id>:attempts`, a list of attempt JSON, newest first.
fn attempts_key(prefix: &str, sub_id: &str) -> String {
    format!("{prefix}:sub:{sub_id}:attempts")
}

/// `P:subscriptions`, a hash of subscription id -> JSON document.
pub(super) fn subscriptions_key(prefix: &str) -> String {
    format!("{prefix}:subscriptions")
}

/// `P:subscriptions:version`, a counter raised after every write of
/// `P:subscriptions` (a key of its own: a cluster may hold it elsewhere).
fn version_key(prefix: &str) -> String {
    format!("{prefix}:subscriptions:version")
}

impl RedisStore {
    /// Raises the subscriptions' version after a write of one of them.
    async fn subscriptions_changed(&self) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: u64 = c
            .incr(version_key(&self.prefix), 1)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// Compare-and-set of one subscription document on its `version`.
static REPLACE_SUBSCRIPTION: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("replace_subscription.lua")));

#[async_trait]
impl DeliveryStore for RedisStore {
    async fn put_subscription(&self, s: &Subscription) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let _: i64 = c
            .hset(subscriptions_key(&self.prefix), &s.id, json)
            .await
            .map_err(|e| self.err(e))?;
        self.subscriptions_changed().await
    }

    async fn replace_subscription(&self, s: &Subscription, expected: u64) -> StoreResult<bool> {
        let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.conn.clone();
        let replaced: i64 = REPLACE_SUBSCRIPTION
            .key(subscriptions_key(&self.prefix))
            .arg(&s.id)
            .arg(expected)
            .arg(json)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        if replaced == 1 {
            self.subscriptions_changed().await?;
        }
        Ok(replaced == 1)
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
        if n == 1 {
            self.subscriptions_changed().await?;
        }
        Ok(n == 1)
    }

    async fn subscriptions_version(&self) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c
            .get(version_key(&self.prefix))
            .await
            .map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0))
    }

    async fn claim(
        &self,
        sub_id: &str,
        t: &Table,
        start: StreamId,
        count: usize,
    ) -> StoreResult<Vec<Event>> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        let reply: redis::Value = self
            .claim
            .key(&keys.events)
            .key(keys.pending(sub_id))
            .arg(Keys::group(sub_id))
            .arg(start.to_string())
            .arg(count)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        parse_packed(reply)
    }

    async fn pending(&self, sub_id: &str, t: &Table) -> StoreResult<Vec<(Event, RetryState)>> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = c
            .hgetall(keys.pending(sub_id))
            .await
            .map_err(|e| self.err(e))?;
        let mut states = all
            .iter()
            .map(|(id, st)| pending_entry(sub_id, t, id, st))
            .collect::<StoreResult<Vec<(StreamId, RetryState)>>>()?;
        states.sort_by_key(|(id, _)| *id);
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &states {
            pipe.cmd("XRANGE")
                .arg(&keys.events)
                .arg(id.to_string())
                .arg(id.to_string());
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut c).await.map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for ((_, st), reply) in states.into_iter().zip(replies) {
            // An entry whose event retention removed has nothing left to
            // deliver: left out here, removed by the trim (a read writes nothing).
            if let Some(e) = parse_entries(reply)?.pop() {
                out.push((e, st));
            }
        }
        Ok(out)
    }

    async fn retry_later(
        &self,
        sub_id: &str,
        t: &Table,
        id: StreamId,
        state: RetryState,
    ) -> StoreResult<()> {
        // Only while still pending: an answer applied after another instance
        // settled the entry must not bring it back.
        let script = redis::Script::new(
            "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then \
             redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 0",
        );
        let mut c = self.conn.clone();
        let _: i64 = script
            .key(self.keys(t).pending(sub_id))
            .arg(id.to_string())
            .arg(state.encode())
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn retry_now(&self, sub_id: &str, t: &Table, now_ms: u64) -> StoreResult<u64> {
        // One script, so an entry settled meanwhile is never written back.
        let script = redis::Script::new(
            "local all = redis.call('HGETALL', KEYS[1]) local now = tonumber(ARGV[1]) \
             local latest, waiting = now, 0 \
             for i = 2, #all, 2 do local a, n = string.match(all[i], '^(%d+):(%d+)$') \
               if a and tonumber(a) > 0 and tonumber(n) > now then \
                 waiting = waiting + 1 if tonumber(n) > latest then latest = tonumber(n) end end end \
             local shift = latest - now if shift == 0 then return waiting end \
             for i = 2, #all, 2 do local a, n = string.match(all[i], '^(%d+):(%d+)$') \
               if a and tonumber(a) > 0 then \
                 redis.call('HSET', KEYS[1], all[i-1], string.format('%d:%d', tonumber(a), math.max(tonumber(n) - shift, 0))) end end \
             return waiting",
        );
        let mut c = self.conn.clone();
        let waiting: i64 = script
            .key(self.keys(t).pending(sub_id))
            .arg(now_ms)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(waiting as u64)
    }

    async fn waiting_retries(&self, sub_id: &str, t: &Table) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = c
            .hgetall(self.keys(t).pending(sub_id))
            .await
            .map_err(|e| self.err(e))?;
        let mut waiting = 0;
        for (id, st) in &all {
            let (_, st) = pending_entry(sub_id, t, id, st)?;
            waiting += u64::from(st.attempts > 0);
        }
        Ok(waiting)
    }

    async fn settle(&self, sub_id: &str, t: &Table, ids: &[StreamId]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let fields: Vec<String> = ids.iter().map(StreamId::to_string).collect();
        let _: i64 = c
            .hdel(self.keys(t).pending(sub_id), fields)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn add_pending(&self, sub_id: &str, t: &Table, ids: &[StreamId]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let items: Vec<(String, String)> = ids
            .iter()
            .map(|id| (id.to_string(), RetryState::default().encode()))
            .collect();
        // HSET or HMSET by version: an integer or OK, either is success.
        let _: redis::Value = c
            .hset_multiple(self.keys(t).pending(sub_id), &items)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn reposition(&self, sub_id: &str, t: &Table, after: StreamId) -> StoreResult<()> {
        let keys = self.keys(t);
        let mut c = self.conn.clone();
        let group = Keys::group(sub_id);
        let set: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&keys.events)
            .arg(&group)
            .arg(after.to_string())
            .query_async(&mut c)
            .await;
        if set.is_err() {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&keys.events)
                .arg(&group)
                .arg(after.to_string())
                .arg("MKSTREAM")
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn position(&self, sub_id: &str, t: &Table) -> StoreResult<Option<StreamId>> {
        let mut c = self.conn.clone();
        let group = Keys::group(sub_id);
        let last: Option<String> = GROUP_POSITION
            .key(self.keys(t).events)
            .arg(&group)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        last.map(|id| {
            id.parse()
                .map_err(|e| StoreError::Corrupt(format!("group {group}: {e}")))
        })
        .transpose()
    }

    async fn forget_subscription(&self, sub_id: &str, targets: &[Table]) -> StoreResult<()> {
        let mut c = self.conn.clone();
        // One key per command: on a cluster they live in different slots.
        for t in targets {
            let keys = self.keys(t);
            let _: i64 = DESTROY_GROUP
                .key(&keys.events)
                .arg(Keys::group(sub_id))
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
            let _: i64 = c.del(keys.pending(sub_id)).await.map_err(|e| self.err(e))?;
            let lease = self.keys(&t.delivery_lease(sub_id)).lease;
            let _: i64 = c.del(lease).await.map_err(|e| self.err(e))?;
        }
        for key in [
            dead_key(&self.prefix, sub_id),
            attempts_key(&self.prefix, sub_id),
        ] {
            let _: i64 = c.del(key).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    async fn dead_letter(&self, sub_id: &str, d: &DeadLetter) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let _: i64 = c
            .hset(dead_key(&self.prefix, sub_id), d.key(), json)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn dead_letters(&self, sub_id: &str) -> StoreResult<Vec<DeadLetter>> {
        let mut c = self.conn.clone();
        let all: Vec<String> = c
            .hvals(dead_key(&self.prefix, sub_id))
            .await
            .map_err(|e| self.err(e))?;
        let mut v = all
            .iter()
            .map(|j| decode_json("dead letter", j))
            .collect::<StoreResult<Vec<DeadLetter>>>()?;
        v.sort_by_key(|d| d.at_ms);
        Ok(v)
    }

    async fn take_dead_letters(&self, sub_id: &str) -> StoreResult<Vec<DeadLetter>> {
        let key = dead_key(&self.prefix, sub_id);
        let mut c = self.conn.clone();
        let (all, _): (Vec<String>, i64) = redis::pipe()
            .atomic()
            .hvals(&key)
            .del(&key)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        all.iter().map(|j| decode_json("dead letter", j)).collect()
    }

    async fn remove_dead_letter(&self, sub_id: &str, key: &str) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let removed: i64 = c
            .hdel(dead_key(&self.prefix, sub_id), key)
            .await
            .map_err(|e| self.err(e))?;
        Ok(removed > 0)
    }

    async fn log_attempts(&self, sub_id: &str, attempts: &[Attempt]) -> StoreResult<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let key = attempts_key(&self.prefix, sub_id);
        let json = attempts
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.conn.clone();
        // LPUSH of several values leaves the last one first: newest first.
        let _: () = redis::pipe()
            .lpush(&key, json)
            .ignore()
            .ltrim(&key, 0, ATTEMPTS_KEPT as isize - 1)
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn attempts(&self, sub_id: &str, limit: usize) -> StoreResult<Vec<Attempt>> {
        let mut c = self.conn.clone();
        let all: Vec<String> = c
            .lrange(attempts_key(&self.prefix, sub_id), 0, limit as isize - 1)
            .await
            .map_err(|e| self.err(e))?;
        all.iter().map(|j| decode_json("attempt", j)).collect()
    }
}
