//! A subscription's consumer group and pending set on a table's stream,
//! beside the delivery store (`delivery.rs`): the scripts that read and
//! drop a group (a missing stream checked in the script, never told apart
//! by an error's text), the reading of one pending field, and the upkeep
//! retention does: entries whose events it removed leave the pending sets
//! at trim time, so `pending()` only reads.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::RedisStore;
use crate::{
    events::StreamId,
    store::{StoreError, StoreResult, Table},
    subscription::state::RetryState,
};

/// Removes a pending set's entries before ARGV[1] (their events are gone).
static DROP_TRIMMED: LazyLock<Script> = LazyLock::new(|| {
    super::lua::with_lib(
        r"
local gone = 0
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  if parts(id) and above(ARGV[1], id) then
    gone = gone + redis.call('HDEL', KEYS[1], id)
  end
end
return gone
",
    )
});

impl RedisStore {
    /// After a trim: each subscription's pending entries on `t` before
    /// `first_kept`, whose events are gone, leave its pending set.
    pub(super) async fn drop_trimmed_pending(
        &self,
        t: &Table,
        first_kept: StreamId,
    ) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let subs: Vec<String> = c
            .hkeys(super::delivery::subscriptions_key(&self.prefix))
            .await
            .map_err(|e| self.err(e))?;
        for sub_id in subs {
            let _: i64 = DROP_TRIMMED
                .key(self.keys(t).pending(&sub_id))
                .arg(first_kept.to_string())
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

/// The last ID a subscription's group claimed, none without the stream or
/// the group (no stream yet: nothing claimed). The script checks that the
/// stream exists, so no error's text is told apart.
pub(super) static GROUP_POSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return false end \
         for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do \
           local name, last \
           for i = 1, #g, 2 do \
             if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end \
           end \
           if name == ARGV[1] then return last end \
         end \
         return false",
    )
});

/// Removes a subscription's group; no stream yet means no group either.
pub(super) static DESTROY_GROUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then \
           return redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1]) end \
         return 0",
    )
});

/// One field of a pending hash: the entry's stream ID and its retry state.
/// A field that does not read is an error naming it, never dropped or reset.
pub(super) fn pending_entry(
    sub_id: &str,
    t: &Table,
    id: &str,
    st: &str,
) -> StoreResult<(StreamId, RetryState)> {
    let corrupt = |what: String| {
        StoreError::Corrupt(format!("pending entry {id:?} of {sub_id} on {t}: {what}"))
    };
    let id = id.parse().map_err(|_| corrupt("not a stream ID".into()))?;
    let st = RetryState::decode(st).map_err(|e| corrupt(e.to_string()))?;
    Ok((id, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_field_that_does_not_read_is_an_error_naming_it() {
        let t = Table::new("s", "patients");
        let (id, st) = pending_entry("sub", &t, "5-1", "2:900").unwrap();
        assert_eq!(id, StreamId { stamp: 5, seq: 1 });
        assert_eq!(
            st,
            RetryState {
                attempts: 2,
                next_at_ms: 900
            }
        );
        for (id, st) in [("5-1", "2"), ("x", "2:900")] {
            match pending_entry("sub", &t, id, st) {
                Err(StoreError::Corrupt(why)) => {
                    assert!(why.contains(&format!("{id:?}")), "{why}")
                }
                other => panic!("{id} {st}: {other:?}"),
            }
        }
    }
}
