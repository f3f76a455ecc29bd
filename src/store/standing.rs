//! Where a subscription stands on a target, read from its delivery state:
//! what retention must keep and what the status surfaces call lag.

use crate::{
    events::StreamId,
    store::{Store, StoreResult, Target},
    subscription::Subscription,
};

/// Where a subscription stands on a target.
pub enum Standing {
    /// Its oldest event claimed but not yet delivered.
    Pending(StreamId),
    /// Nothing pending: it claims next after this ID (its position, or its
    /// start point before its first claim).
    After(StreamId),
}

/// Where a subscription claims next on a target: after its position, or
/// after its start point before its first claim.
pub async fn position_or_start(
    store: &dyn Store,
    sub: &Subscription,
    t: &Target,
) -> StoreResult<StreamId> {
    Ok(match store.position(&sub.id, t).await? {
        Some(p) => p,
        None => sub.start_of(t),
    })
}

pub async fn standing(store: &dyn Store, sub: &Subscription, t: &Target) -> StoreResult<Standing> {
    // The position first: a claim landing between the two reads moves
    // entries after it into pending, so they are never missed between reads.
    let position = position_or_start(store, sub, t).await?;
    Ok(match store.pending(&sub.id, t).await?.first() {
        Some((oldest, _)) if oldest.id <= position => Standing::Pending(oldest.id),
        _ => Standing::After(position),
    })
}

/// How far a subscription trails a target, in stamps: from its oldest
/// undelivered event to the target's last stamp; 0 when it has everything.
/// Also right for a disabled subscription or one that has not started: its
/// backlog is what it lacks.
pub async fn lag(store: &dyn Store, sub: &Subscription, t: &Target) -> StoreResult<u64> {
    let top = store.last_id(t).await?;
    Ok(match standing(store, sub, t).await? {
        Standing::Pending(oldest) => top.stamp.saturating_sub(oldest.stamp) + 1,
        Standing::After(p) if p < top => top.stamp.saturating_sub(p.stamp).max(1),
        Standing::After(_) => 0,
    })
}
