//! Documents in Redis: `P:<kind>`, a hash of name -> `<version> <JSON>`,
//! whose field `#version` counts the kind's writes (a name never starts
//! with `#`). One key, so every script runs on a Redis Cluster too.
//! Also the purge of a table's keys.

use async_trait::async_trait;
use redis::AsyncCommands;

use super::{Keys, RedisStore};
use crate::store::{
    StoreError, StoreResult, Table,
    documents::{Document, Documents},
};

/// The counter field of a kind's hash.
const VERSION_FIELD: &str = "#version";

/// Compare-and-set of one document; -1 on a conflict, else the new version.
const PUT_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local v = 0
if cur then v = tonumber(string.match(cur, '^(%d+) ')) or 0 end
if v ~= tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], (v + 1) .. ' ' .. ARGV[3])
redis.call('HINCRBY', KEYS[1], '#version', 1)
return v + 1
"#;

const DELETE_LUA: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], '#version', 1)
  return 1
end
return 0
"#;

static PUT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PUT_LUA));
static DELETE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(DELETE_LUA));

fn parse(kind: &str, name: &str, stored: &str) -> StoreResult<Document> {
    let (v, json) = stored
        .split_once(' ')
        .and_then(|(v, json)| Some((v.parse().ok()?, json)))
        .ok_or_else(|| {
            StoreError::Corrupt(format!("stored {kind} document {name} is unreadable"))
        })?;
    Ok(Document {
        name: name.to_string(),
        version: v,
        json: json.to_string(),
    })
}

impl RedisStore {
    fn kind_key(&self, kind: &str) -> String {
        format!("{}:{kind}", self.prefix)
    }
}

#[async_trait]
impl Documents for RedisStore {
    async fn document(&self, kind: &str, name: &str) -> StoreResult<Option<Document>> {
        let mut c = self.conn.clone();
        let v: Option<String> = c
            .hget(self.kind_key(kind), name)
            .await
            .map_err(|e| self.err(e))?;
        v.map(|s| parse(kind, name, &s)).transpose()
    }

    async fn put_document(
        &self,
        kind: &str,
        name: &str,
        json: &str,
        expected: u64,
    ) -> StoreResult<Option<u64>> {
        let mut c = self.conn.clone();
        let v: i64 = PUT
            .key(self.kind_key(kind))
            .arg(name)
            .arg(expected)
            .arg(json)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(v).ok())
    }

    async fn delete_document(&self, kind: &str, name: &str) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = DELETE
            .key(self.kind_key(kind))
            .arg(name)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    async fn documents(&self, kind: &str) -> StoreResult<Vec<Document>> {
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = c
            .hgetall(self.kind_key(kind))
            .await
            .map_err(|e| self.err(e))?;
        let mut docs = all
            .iter()
            .filter(|(name, _)| name != VERSION_FIELD)
            .map(|(name, s)| parse(kind, name, s))
            .collect::<StoreResult<Vec<_>>>()?;
        docs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(docs)
    }

    async fn documents_version(&self, kind: &str) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c
            .hget(self.kind_key(kind), VERSION_FIELD)
            .await
            .map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0))
    }

    async fn purge_table(&self, t: &Table, subscriptions: &[String]) -> StoreResult<()> {
        let k = self.keys(t);
        let mut c = self.conn.clone();
        // One hash tag: one DEL (the consumer groups go with the stream).
        let mut table = vec![
            k.events.clone(),
            k.index.clone(),
            k.rejects.clone(),
            k.lease.clone(),
            k.status.clone(),
            k.trimmed.clone(),
            k.loading.clone(),
            k.epoch.clone(),
            k.reconcile.clone(),
            k.records.clone(),
            k.stamps.clone(),
            k.late.clone(),
            k.kept.clone(),
        ];
        table.extend(subscriptions.iter().map(|s| k.pending(s)));
        let _: i64 = c.del(table).await.map_err(|e| self.err(e))?;
        for s in subscriptions {
            // Each delivery lease has a hash tag of its own.
            let lease = Keys::new(&self.prefix, &t.delivery_lease(s)).lease;
            let _: i64 = c.del(lease).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}
