//! A worker's claim window and its sends: what is loaded and claimed from
//! the store, and which requests may start now under the window, the rate
//! limit, the fence and per-record order.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    queue::Queue,
    worker::{IDLE_WAIT, Now, TICK, WINDOW, Worker, WorkerState, flush, monotonic},
};
use crate::{
    events::{Event, StreamId},
    filter::EventView,
    store::StoreResult,
    subscription::{Subscription, state::RetryState},
};

/// What filling the window came to.
pub(super) enum Fill {
    /// Loaded and claimed: requests may start.
    Ready,
    /// The subscription was deleted meanwhile.
    Gone,
    /// The stored subscription is another version than the one the step
    /// holds: take it, then fill again.
    Changed(Box<Subscription>),
}

impl Worker {
    /// Loads the pending set if needed, claims new entries while the window
    /// has room, and settles entries of ops the subscription does not want.
    pub(super) async fn fill(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
    ) -> StoreResult<Fill> {
        let mut fresh = Vec::new();
        if st.queue.is_none() {
            debug_assert!(st.sends.is_empty(), "a reload while requests are out");
            // The store is authoritative: load after a (re)start or takeover,
            // once every settle sent to the writer has landed.
            flush(&st.log).await;
            let mut q = Queue::default();
            let (mut events, states): (Vec<_>, Vec<_>) = self
                .store
                .pending(&subscription.id, &self.table)
                .await?
                .into_iter()
                .unzip();
            self.with_previous(subscription, &mut events).await?;
            for (e, state) in events.into_iter().zip(states) {
                fresh.push(e.id);
                q.insert(e, state);
            }
            st.queue = Some(q);
            st.last_reload = monotonic();
        }
        let counts = st.queue.as_ref().expect("loaded above").counts();
        st.paused = counts.waiting >= self.schedule.max_waiting;
        if counts.sendable <= WINDOW / 2 && !st.paused {
            let room = WINDOW - counts.sendable;
            if let Some(other) = self.claim(st, subscription, room, &mut fresh).await? {
                st.unchecked.append(&mut fresh);
                return Ok(other);
            }
        }
        let q = st.queue.as_mut().expect("loaded above");
        if !subscription.ops.is_empty() {
            let skip: Vec<StreamId> = q
                .values()
                .filter(|p| !subscription.ops.contains(&p.event.op) && !q.is_in_flight(&p.event.id))
                .map(|p| p.event.id)
                .collect();
            if !skip.is_empty() {
                self.store
                    .settle(&subscription.id, &self.table, &skip)
                    .await?;
                for id in skip {
                    q.remove(&id);
                }
            }
        }
        if std::mem::take(&mut st.recheck) {
            fresh = q.values().map(|p| p.event.id).collect();
        } else {
            fresh.append(&mut st.unchecked);
        }
        self.pass_over(st, subscription, fresh).await?;
        Ok(Fill::Ready)
    }

    /// Claims up to `room` entries into the queue (their ids into `fresh`),
    /// unless the stored subscription is gone or is no longer the version
    /// `sub` is: then that, for the step to take before claiming again.
    async fn claim(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
        room: usize,
        fresh: &mut Vec<StreamId>,
    ) -> StoreResult<Option<Fill>> {
        // A claim makes the consumer group when it is missing: one of a
        // subscription deleted since the supervisor last looked would
        // start over from the start point and send to a removed receiver.
        if let Some(other) = self.changed(subscription).await? {
            return Ok(Some(other));
        }
        let mut claimed = self
            .store
            .claim(
                &subscription.id,
                &self.table,
                subscription.start_of(&self.table),
                room,
            )
            .await?;
        if claimed.is_empty() {
            return Ok(None);
        }
        self.with_previous(subscription, &mut claimed).await?;
        let q = st.queue.as_mut().expect("loaded before claiming");
        for e in claimed {
            fresh.push(e.id);
            q.insert(e, RetryState::default());
        }
        // Read again after the claim: a PATCH answered before any of these
        // events was appended is seen, so none goes out under the filters,
        // fields or URL it replaced.
        self.changed(subscription).await
    }

    /// The stored subscription when it differs from `sub` in version, or
    /// `Gone`; None while `sub` is current.
    async fn changed(&self, subscription: &Subscription) -> StoreResult<Option<Fill>> {
        Ok(match self.store.subscription(&subscription.id).await? {
            None => Some(Fill::Gone),
            Some(stored) if stored.version != subscription.version => {
                Some(Fill::Changed(Box::new(stored)))
            }
            Some(_) => None,
        })
    }

    /// Gives `events` the versions they replaced, for a subscription that
    /// wants previous values (looked up once, when loaded or claimed).
    async fn with_previous(
        &self,
        subscription: &Subscription,
        events: &mut [Event],
    ) -> StoreResult<()> {
        if subscription.previous {
            self.store.fill_previous(&self.table, events).await?;
        }
        Ok(())
    }

    /// Settles the entries among `fresh` (newly loaded or claimed, or all
    /// after the selection changed, or out when last checked) that the
    /// subscription's filters pass over, as for an unwanted op: its position
    /// moves past them and nothing is sent, retried or buried.
    async fn pass_over(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
        fresh: Vec<StreamId>,
    ) -> StoreResult<()> {
        if st.selection.filter.is_none() || fresh.is_empty() {
            return Ok(());
        }
        let q = st.queue.as_mut().expect("filled before filtering");
        // Entries out now are checked once answered, should they stay.
        let (out, fresh): (Vec<StreamId>, Vec<StreamId>) =
            fresh.into_iter().partition(|id| q.is_in_flight(id));
        st.unchecked = out;
        let skip: Vec<StreamId> = fresh
            .into_iter()
            .filter(|id| {
                q.get(id).is_some_and(|p| {
                    !st.selection
                        .matches(&EventView::new(&self.source, &p.event))
                })
            })
            .collect();
        if skip.is_empty() {
            return Ok(());
        }
        self.store
            .settle(&subscription.id, &self.table, &skip)
            .await?;
        for id in &skip {
            q.remove(id);
        }
        st.meters.filtered(skip.len());
        Ok(())
    }

    /// Starts requests while the window, the rate limit and per-record order
    /// allow; returns how many started and how long until one more might.
    pub(super) async fn start_sends(
        &self,
        st: &mut WorkerState,
        subscription: &Arc<Subscription>,
        now: Now,
    ) -> StoreResult<(usize, Duration)> {
        let free = (subscription.max_in_flight.max(1) as usize).saturating_sub(st.sends.len());
        let per_request = subscription.batch_size.max(1) as usize;
        if free == 0 || st.requeue {
            return Ok((0, TICK));
        }
        let q = st.queue.as_ref().expect("filled before sending");
        // One pass for every free slot: the entries are of distinct records,
        // so no batch holds two events of one record.
        let (due, next_due) = q.due_batches(now.wall_ms, free, per_request);
        if due.is_empty() {
            // Nothing due: the poller's wake, or the next retry's time.
            let wait = next_due.map_or(IDLE_WAIT, |due| {
                Duration::from_millis(due.saturating_sub(now.wall_ms)).min(IDLE_WAIT)
            });
            return Ok((0, wait));
        }
        let gap = subscription
            .rate_limit
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        let mut started = 0;
        for batch in due {
            let at = now.at.max(monotonic());
            if let Some(next) = st.next_send.filter(|n| *n > at) {
                return Ok((started, (next - at).min(TICK)));
            }
            // The fence, checked before every request.
            if !self.fence(st, at).await? {
                return Ok((started, self.lease_ttl / 2));
            }
            let until = st.lease_until.expect("fenced above");
            st.next_send = gap.map(|g| st.next_send.unwrap_or(at).max(at) + g);
            self.start_send(st, subscription, batch, until);
            started += 1;
        }
        Ok((started, TICK))
    }

    /// Spawns one request; its answer is applied by a later step.
    fn start_send(
        &self,
        st: &mut WorkerState,
        subscription: &Arc<Subscription>,
        batch: Vec<StreamId>,
        until: Instant,
    ) {
        let q = st.queue.as_mut().expect("filled before sending");
        let events = batch
            .iter()
            .map(|id| q.get(id).expect("batch ids are queued").event.clone())
            .collect();
        q.start(&batch);
        let request = super::attempt::Request {
            subscription: subscription.clone(),
            source: self.source.clone(),
            sender: self.sender.clone(),
            endpoint: st.endpoint.clone(),
            selection: st.selection.clone(),
            ids: batch,
            events,
            until,
        };
        // The request's log lines stay inside the worker's `deliver` span.
        let send = tracing::Instrument::in_current_span(request.send());
        st.sends.spawn(send);
    }
}
