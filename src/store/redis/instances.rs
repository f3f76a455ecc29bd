//! `P:instances`: a hash of instance id -> `<expires ms> <nonce>`, one
//! heartbeat per live instance (docs/redis-layout.md). Outside every
//! table's hash tag; one key, so the script runs on a Redis Cluster too.

use std::time::Duration;

use redis::Script;

use super::RedisStore;
use crate::{
    events::now_ms,
    store::{Heartbeat, StoreResult},
};

/// Writes the heartbeat, drops expired ones; returns the previous value of
/// this instance's field and every live instance.
pub(super) const HEARTBEAT_LUA: &str = r#"
local now = tonumber(ARGV[1])
local prev = redis.call('HGET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[3], (now + tonumber(ARGV[2])) .. ' ' .. ARGV[4])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local expires = tonumber(string.match(all[i + 1], '^(%d+)'))
  if expires == nil or expires <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(live, all[i])
  end
end
return {prev or '', live}
"#;

pub(super) fn key(prefix: &str) -> String {
    format!("{prefix}:instances")
}

impl RedisStore {
    pub(super) async fn beat(
        &self,
        script: &Script,
        instance: &str,
        nonce: &str,
        ttl: Duration,
    ) -> StoreResult<Heartbeat> {
        let mut c = self.conn.clone();
        let (prev, live): (String, Vec<String>) = script
            .key(key(&self.prefix))
            .arg(now_ms())
            .arg(ttl.as_millis() as u64)
            .arg(instance)
            .arg(nonce)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        // `prev` is `<expires ms> <nonce>`; an expired one is not a peer.
        let previous = prev
            .split_once(' ')
            .filter(|(expires, _)| expires.parse::<u64>().is_ok_and(|e| e > now_ms()))
            .map(|(_, nonce)| nonce.to_string());
        Ok(Heartbeat { live, previous })
    }
}
