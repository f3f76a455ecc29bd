//! Subscriptions and their delivery state: the contract both backends keep
//! (`DeliveryStore`), the compare-and-set loop every subscription update
//! goes through, and how stored subscription documents decode.

use async_trait::async_trait;

use super::{Refusal, StoreError, StoreResult, Table, UPDATE_TRIES};
use crate::{
    events::{Event, StreamId},
    subscription::{
        Subscription,
        state::{Attempt, DeadLetter, RetryState},
    },
};

/// Subscriptions and their delivery state, kept by the same backends.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Stores a new subscription (or overwrites one unconditionally).
    async fn put_subscription(&self, s: &Subscription) -> StoreResult<()>;

    /// Stores `s` only if the stored document still has version `expected`:
    /// false when another write came first or the subscription is gone.
    /// Use [`update_subscription`], which retries.
    async fn replace_subscription(&self, s: &Subscription, expected: u64) -> StoreResult<bool>;

    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>>;

    /// Every subscription, ordered by creation.
    async fn subscriptions(&self) -> StoreResult<Vec<Subscription>>;

    /// Returns false when there was no such subscription.
    async fn delete_subscription(&self, id: &str) -> StoreResult<bool>;

    /// A number that moves with every write of a subscription (put,
    /// replace, delete), so a reader lists them only when it moved. Any
    /// change, also down (a store that lost it), means "list again".
    async fn subscriptions_version(&self) -> StoreResult<u64>;

    // Delivery state of subscription `sub` on table `t`. Entries
    // move from the stream, past the subscription's position, into its
    // pending set; they leave it when delivered, filtered out, or dead.

    /// Moves up to `count` entries after the position into the pending set
    /// (no attempts yet, due now) and returns them; the position starts at
    /// `start` when the subscription has none (or the store lost it).
    async fn claim(
        &self,
        sub_id: &str,
        t: &Table,
        start: StreamId,
        count: usize,
    ) -> StoreResult<Vec<Event>>;

    /// The pending set with retry states, in stream order (after a restart).
    async fn pending(&self, sub_id: &str, t: &Table) -> StoreResult<Vec<(Event, RetryState)>>;

    async fn retry_later(
        &self,
        sub_id: &str,
        t: &Table,
        id: StreamId,
        state: RetryState,
    ) -> StoreResult<()>;

    /// Makes every entry waiting for a retry due by `now_ms`: each retry
    /// time moves back by one shift, the latest landing on `now_ms`, so
    /// entries that failed together keep sharing a retry state (a batch
    /// stays one batch) and none loses its count of attempts. Answers how
    /// many entries were not due yet.
    async fn retry_now(&self, sub_id: &str, t: &Table, now_ms: u64) -> StoreResult<u64>;

    /// How many pending entries wait for a retry (failed at least once).
    async fn waiting_retries(&self, sub_id: &str, t: &Table) -> StoreResult<u64>;

    /// Removes entries from the pending set.
    async fn settle(&self, sub_id: &str, t: &Table, ids: &[StreamId]) -> StoreResult<()>;

    /// Puts entries (back) into the pending set, due now: a redrive.
    async fn add_pending(&self, sub_id: &str, t: &Table, ids: &[StreamId]) -> StoreResult<()>;

    /// Moves the position: the next claim returns entries after `after`.
    async fn reposition(&self, sub_id: &str, t: &Table, after: StreamId) -> StoreResult<()>;

    /// The position: the last entry claimed, none before the first claim.
    async fn position(&self, sub_id: &str, t: &Table) -> StoreResult<Option<StreamId>>;

    /// Removes what a deleted subscription left: its position and pending
    /// set on each of `tables`, its delivery leases there, its dead
    /// letters and its attempt log. Idempotent.
    async fn forget_subscription(&self, sub_id: &str, tables: &[Table]) -> StoreResult<()>;

    async fn dead_letter(&self, sub_id: &str, d: &DeadLetter) -> StoreResult<()>;

    async fn dead_letters(&self, sub_id: &str) -> StoreResult<Vec<DeadLetter>>;

    /// Removes and returns every dead letter (for a redrive).
    async fn take_dead_letters(&self, sub_id: &str) -> StoreResult<Vec<DeadLetter>>;

    /// Removes the one dead letter of `key` ([`DeadLetter::key`]), leaving
    /// the others; false when there was none.
    async fn remove_dead_letter(&self, sub_id: &str, key: &str) -> StoreResult<bool>;

    /// Records attempts, oldest first; the newest [`ATTEMPTS_KEPT`] are kept.
    async fn log_attempts(&self, sub_id: &str, attempts: &[Attempt]) -> StoreResult<()>;

    /// The newest attempts first.
    async fn attempts(&self, sub_id: &str, limit: usize) -> StoreResult<Vec<Attempt>>;
}

/// Reads a subscription, applies `change` and writes it back with its
/// version raised, if no other write came in between; otherwise starts
/// over from the newer document, so concurrent updates of different fields
/// (PATCH, rotate-secret, delivery's disable) never lose one another.
/// `Ok(None)` when there is no such subscription; `change` may refuse.
pub async fn update_subscription<S, E>(
    store: &S,
    id: &str,
    mut change: impl FnMut(&mut Subscription) -> Result<(), E>,
) -> Result<Option<Subscription>, E>
where
    S: DeliveryStore + ?Sized,
    E: From<StoreError>,
{
    for _ in 0..UPDATE_TRIES {
        let Some(mut s) = store.subscription(id).await? else {
            return Ok(None);
        };
        let expected = s.version;
        change(&mut s)?;
        s.version = expected + 1;
        if store.replace_subscription(&s, expected).await? {
            return Ok(Some(s));
        }
    }
    Err(StoreError::refused(format!("subscription {id}"), Refusal::Raced).into())
}

/// Attempts kept per subscription.
pub const ATTEMPTS_KEPT: usize = 1000;

/// Subscriptions are stored as JSON documents in both backends.
pub(crate) fn decode_subscription(json: &str) -> StoreResult<Subscription> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("stored subscription is unreadable: {e}")))
}

/// Decodes stored documents, oldest subscription first. One that does not
/// decode (edited by hand, or from a newer build) is left out with an error
/// log naming its id, so it cannot stop every other subscription; the log
/// carries no part of the document, which holds a secret and a URL.
pub(crate) fn decode_subscriptions(docs: &[String]) -> StoreResult<Vec<Subscription>> {
    let mut v: Vec<Subscription> = docs
        .iter()
        .filter_map(|d| match serde_json::from_str(d) {
            Ok(s) => Some(s),
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(d)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "(no id)".into());
                tracing::error!(subscription = %id, line = e.line(), column = e.column(), "a stored subscription document does not decode; it is skipped until it is fixed or deleted (DELETE /v1/subscriptions/{id})");
                None
            }
        })
        .collect();
    v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unreadable_subscription_document_is_skipped_not_fatal() {
        let good = r#"{"id":"a","url":"https://example.com/h","resources":["*"],"ops":[],"start":{},"headers":{},"batch_size":1,"rate_limit":null,"enabled":true,"description":"","secret":"whsec_x","previous_secret":null,"created_ms":1,"updated_ms":1}"#;
        let bad = good.replace("https://example.com/h", "ftp://example.com/h");
        let v = super::decode_subscriptions(&[bad, good.to_string()]).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].id, "a");
    }
}
