//! The status view, read once from the store for every surface that shows
//! it: `GET /v1/resources` (JSON), the status page at `/` (HTML) and
//! `stamp-relay status` (text) each format the same snapshot. Everything
//! here comes from the store, so every instance shows the same facts
//! whichever one polls a table or delivers to a subscription.

use futures_util::future::try_join_all;

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

/// Reads at once per table and subscription: on Redis they share the
/// connection's pipeline, so 10,000 tables take about 160 round trips'
/// time, not 40,000 in a row.
const AT_ONCE: usize = 64;

pub async fn tables(store: &dyn Store, targets: &[Target]) -> StoreResult<Vec<TableView>> {
    let mut out = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(AT_ONCE) {
        out.extend(try_join_all(chunk.iter().map(|t| table(store, t))).await?);
    }
    Ok(out)
}

async fn table(store: &dyn Store, t: &Target) -> StoreResult<TableView> {
    let (last_id, stream_length, records, poll) = futures_util::try_join!(
        store.last_id(t),
        store.stream_len(t),
        store.index_len(t),
        store.poll_status(t)
    )?;
    Ok(TableView {
        target: t.clone(),
        last_id,
        stream_length,
        records,
        poll: poll.unwrap_or_default(),
    })
}

/// What a subscription holds on one table: (lag, next retry, backlog).
async fn standing_on(
    store: &dyn Store,
    sub: &Subscription,
    t: &Target,
) -> StoreResult<(u64, Option<u64>, Backlog)> {
    // One read of the pending set serves the lag and the counts.
    let (position, pending, last) = futures_util::try_join!(
        position_or_start(store, sub, t),
        store.pending(&sub.id, t),
        store.last_id(t)
    )?;
    let standing = Standing::of(position, pending.first().map(|(e, _)| e.id));
    let retries = pending.iter().filter(|(_, st)| st.attempts > 0);
    let next = retries.map(|(_, st)| st.next_at_ms).min();
    Ok((standing.lag(last), next, Backlog::of(pending)))
}

pub async fn subscriptions(
    store: &dyn Store,
    targets: &[Target],
    max_waiting_retries: usize,
) -> StoreResult<Vec<SubscriptionView>> {
    let mut out = Vec::new();
    for sub in store.subscriptions().await? {
        let (dead, last_failure) =
            futures_util::try_join!(store.dead_letters(&sub.id), last_failure(store, &sub.id))?;
        let mut view = SubscriptionView {
            lag: 0,
            pending: 0,
            waiting_retries: 0,
            paused: Vec::new(),
            dead_letters: dead.len(),
            last_failure,
            next_attempt_ms: None,
            sub,
        };
        let covered: Vec<&Target> = targets.iter().filter(|t| view.sub.covers(t)).collect();
        let mut each = Vec::with_capacity(covered.len());
        for chunk in covered.chunks(AT_ONCE) {
            let sub = &view.sub;
            each.extend(try_join_all(chunk.iter().map(|t| standing_on(store, sub, t))).await?);
        }
        for (t, (lag, next, held)) in covered.into_iter().zip(each) {
            view.next_attempt_ms = view.next_attempt_ms.into_iter().chain(next).min();
            view.lag = view.lag.max(lag);
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
