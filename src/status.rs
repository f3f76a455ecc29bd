//! The status view, read once from the store for every surface that shows
//! it: `GET /v1/resources` (JSON), the status page at `/` (HTML) and
//! `stamp-relay status` (text) each format the same snapshot. Everything
//! here comes from the store, so every instance shows the same facts
//! whichever one polls a table or delivers to a subscription.

use crate::{
    delivery::Backlog,
    events::StreamId,
    store::{PollStatus, Standing, Store, StoreResult, Target, position_or_start},
    subscription::Subscription,
};

/// One table as the store has it.
pub struct TableView {
    pub target: Target,
    /// The stream's last ID; its stamp is the cursor.
    pub last_id: StreamId,
    pub stream_length: u64,
    /// Records in the index.
    pub records: u64,
    /// The last poll as its lease holder wrote it.
    pub poll: PollStatus,
}

/// One subscription with its delivery state over the tables it covers.
pub struct SubscriptionView {
    pub sub: Subscription,
    /// The most any covered table trails, in stamps (`store::lag`, from the
    /// same reads).
    pub lag: u64,
    /// Claimed but not yet delivered.
    pub pending: usize,
    /// Pending events held back by a waiting retry: failed events and the
    /// later events of their records, counted as the worker counts them.
    pub waiting_retries: usize,
    /// Tables where the waiting retries reached `delivery.max_waiting_retries`,
    /// so the worker claims nothing new there for now.
    pub paused: Vec<Target>,
    pub dead_letters: usize,
    /// The newest failed attempt among the recent ones, if any.
    pub last_failure: Option<Failure>,
    /// When the earliest waiting retry is due (unix ms).
    pub next_attempt_ms: Option<u64>,
}

impl SubscriptionView {
    /// The last failure and the next attempt in words, as the page and
    /// `stamp-relay status` show them at `now` (unix ms): "last failure 12 s
    /// ago on sim/patients: HTTP 503; next attempt in 4 s".
    pub fn delivery_note(&self, now: u64) -> Option<String> {
        let failed = self.last_failure.as_ref().map(|f| {
            let ago = now.saturating_sub(f.at_ms) / 1000;
            let on = match f.target.as_str() {
                "" => "a ping".to_string(),
                t => t.to_string(),
            };
            format!("last failure {ago} s ago on {on}: {}", f.reason)
        });
        let next = self.next_attempt_ms.map(|at| {
            format!(
                "next attempt in {} s",
                at.saturating_sub(now).div_ceil(1000)
            )
        });
        let parts: Vec<String> = failed.into_iter().chain(next).collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A failed attempt as the status surfaces show it.
pub struct Failure {
    pub at_ms: u64,
    /// `source/resource`, empty for a ping.
    pub target: String,
    pub reason: String,
}

/// Attempts read for the last failure: a failure older than these is history.
const RECENT_ATTEMPTS: usize = 100;

async fn last_failure(store: &dyn Store, sub: &str) -> StoreResult<Option<Failure>> {
    let recent = store.attempts(sub, RECENT_ATTEMPTS).await?;
    Ok(recent.into_iter().find_map(|a| {
        a.failure().map(|reason| Failure {
            at_ms: a.at_ms,
            target: a.target,
            reason,
        })
    }))
}

/// Everything the status surfaces show.
pub struct Snapshot {
    /// The store, described without secrets.
    pub store: String,
    /// `delivery.max_waiting_retries`, the limit `paused` is measured against.
    pub max_waiting_retries: usize,
    pub tables: Vec<TableView>,
    pub subscriptions: Vec<SubscriptionView>,
}

pub async fn tables(store: &dyn Store, targets: &[Target]) -> StoreResult<Vec<TableView>> {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        out.push(TableView {
            target: t.clone(),
            last_id: store.last_id(t).await?,
            stream_length: store.stream_len(t).await?,
            records: store.index_len(t).await?,
            poll: store.poll_status(t).await?.unwrap_or_default(),
        });
    }
    Ok(out)
}

pub async fn subscriptions(
    store: &dyn Store,
    targets: &[Target],
    max_waiting_retries: usize,
) -> StoreResult<Vec<SubscriptionView>> {
    let mut out = Vec::new();
    for sub in store.subscriptions().await? {
        let mut view = SubscriptionView {
            lag: 0,
            pending: 0,
            waiting_retries: 0,
            paused: Vec::new(),
            dead_letters: store.dead_letters(&sub.id).await?.len(),
            last_failure: last_failure(store, &sub.id).await?,
            next_attempt_ms: None,
            sub,
        };
        for t in targets.iter().filter(|t| view.sub.covers(t)) {
            // One read of the pending set serves the lag and the counts.
            let position = position_or_start(store, &view.sub, t).await?;
            let pending = store.pending(&view.sub.id, t).await?;
            let standing = Standing::of(position, pending.first().map(|(e, _)| e.id));
            let retries = pending.iter().filter(|(_, st)| st.attempts > 0);
            let next = retries.map(|(_, st)| st.next_at_ms).min();
            view.next_attempt_ms = view.next_attempt_ms.into_iter().chain(next).min();
            view.lag = view.lag.max(standing.lag(store.last_id(t).await?));
            let held = Backlog::of(pending);
            view.pending += held.pending;
            view.waiting_retries += held.waiting;
            if held.waiting >= max_waiting_retries {
                view.paused.push(t.clone());
            }
        }
        out.push(view);
    }
    Ok(out)
}

pub async fn snapshot(
    store: &dyn Store,
    targets: &[Target],
    max_waiting_retries: usize,
) -> StoreResult<Snapshot> {
    Ok(Snapshot {
        store: store.describe(),
        max_waiting_retries,
        tables: tables(store, targets).await?,
        subscriptions: subscriptions(store, targets, max_waiting_retries).await?,
    })
}
