//! Where a subscription stands on a table, read from its delivery state:
//! what retention must keep and what the status surfaces call lag.

use crate::{
    events::StreamId,
    store::{Store, StoreResult, Table},
    subscription::Subscription,
};

/// Where a subscription stands on a table.
pub enum Standing {
    /// Its oldest event claimed but not yet delivered.
    Pending(StreamId),
    /// Nothing pending: it claims next after this ID (its position, or its
    /// start point before its first claim).
    After(StreamId),
}

/// Where a subscription claims next on a table: after its position, or
/// after its start point before its first claim.
pub async fn position_or_start(
    store: &dyn Store,
    subscription: &Subscription,
    t: &Table,
) -> StoreResult<StreamId> {
    Ok(match store.position(&subscription.id, t).await? {
        Some(p) => p,
        None => subscription.start_of(t),
    })
}

impl Standing {
    /// From the position (read first) and the oldest pending entry (read
    /// after it): a claim landing between the two reads moves entries after
    /// the position into pending, so they are never missed between reads.
    pub fn of(position: StreamId, oldest_pending: Option<StreamId>) -> Standing {
        match oldest_pending {
            Some(oldest) if oldest <= position => Standing::Pending(oldest),
            _ => Standing::After(position),
        }
    }

    /// How far this trails a table whose last ID is `top`, in stamps (see
    /// [`lag`]).
    pub fn lag(&self, top: StreamId) -> u64 {
        match *self {
            Standing::Pending(oldest) => top.stamp.saturating_sub(oldest.stamp) + 1,
            Standing::After(p) if p < top => top.stamp.saturating_sub(p.stamp).max(1),
            Standing::After(_) => 0,
        }
    }
}

pub async fn standing(
    store: &dyn Store,
    subscription: &Subscription,
    t: &Table,
) -> StoreResult<Standing> {
    let position = position_or_start(store, subscription, t).await?;
    let oldest = store
        .pending(&subscription.id, t)
        .await?
        .first()
        .map(|(e, _)| e.id);
    Ok(Standing::of(position, oldest))
}

/// How far a subscription trails a table, in stamps: from its oldest
/// undelivered event to the table's last stamp; 0 when it has everything.
/// Also right for a disabled subscription or one that has not started: its
/// backlog is what it lacks.
pub async fn lag(store: &dyn Store, subscription: &Subscription, t: &Table) -> StoreResult<u64> {
    let top = store.last_id(t).await?;
    Ok(standing(store, subscription, t).await?.lag(top))
}
