//! One request of a worker, from its signed body to what its answer
//! changes: the entries settle, wait for a retry or go to the dead letters,
//! the attempt is logged, and the subscription may be disabled.
//!
//! Requests run as tasks of their own, so a worker keeps several out at
//! once; each is cut off at the end of the lease it was fenced with.

use std::{collections::HashMap, sync::Arc, time::Instant};

use tokio::task::JoinError;

use super::{
    sender::{Endpoint, Sent, WebhookClient},
    worker::{Now, Worker, WorkerState},
    writer::Write,
};
use crate::{
    cloudevents::EventSource,
    events::{Event, StreamId, now_ms},
    filter::Selection,
    store::StoreResult,
    subscription::{
        Subscription,
        state::{Attempt, DeadLetter, Outcome, RetryState},
    },
};

/// A request about to go out.
pub struct Request {
    pub subscription: Arc<Subscription>,
    pub source: Arc<EventSource>,
    pub sender: Arc<WebhookClient>,
    /// The subscription's URL, headers and signing keys, made once.
    pub endpoint: Arc<Endpoint>,
    /// The subscription's filters and fields: the events are shaped by its
    /// fields (they passed its filters when claimed).
    pub selection: Arc<Selection>,
    pub ids: Vec<StreamId>,
    pub events: Vec<Arc<Event>>,
    /// The end of the delivery lease: the request is abandoned then.
    pub until: Instant,
}

/// A request that came back (or was cut off).
pub struct Done {
    pub ids: Vec<StreamId>,
    pub sent: Sent,
}

/// What the answers applied in one step came to.
pub struct Applied {
    pub answers: usize,
    pub disabled: bool,
}

impl Request {
    pub async fn send(self) -> Done {
        let started = tokio::time::Instant::now();
        let (body, content_type, id) = self.body();
        // The attempt's log lines carry the event (or first event of a batch)
        // and its trace: a child of the append span of that event's poll.
        let traces: Vec<_> = self.events.iter().map(|e| self.source.trace(e)).collect();
        let trace_id = traces.first().map(|t| t.trace_hex()).unwrap_or_default();
        let span =
            tracing::info_span!("attempt", event_id = %id, events = self.events.len(), %trace_id);
        crate::telemetry::follow(&span, &traces);
        let sending = self.sender.send_to(&self.endpoint, &id, body, content_type);
        let derived = traces
            .first()
            .map(|t| t.append_parent())
            .unwrap_or_default();
        let sending = crate::telemetry::scoped(derived, sending);
        let sending = tracing::Instrument::instrument(sending, span.clone());
        let deadline = tokio::time::Instant::from_std(self.until);
        let sent = match tokio::time::timeout_at(deadline, sending).await {
            Ok(sent) => sent,
            Err(_) => Sent {
                outcome: Outcome::Failed,
                status: None,
                retry_after: None,
                latency: started.elapsed(),
                response: String::new(),
                error: Some("cut off: the delivery lease was running out".into()),
            },
        };
        span.in_scope(|| {
            tracing::debug!(outcome = ?sent.outcome, status = sent.status, latency_ms = sent.latency.as_millis() as u64, "delivery attempt");
        });
        Done {
            ids: self.ids,
            sent,
        }
    }

    /// The body, its content type and its `webhook-id`: the records
    /// projected as the subscription's fields ask, or with previous values.
    fn body(&self) -> (Vec<u8>, &'static str, String) {
        let shape = Selection {
            filter: None,
            fields: self.selection.fields.clone(),
        };
        let previous = self.subscription.previous;
        crate::cloudevents::webhook_body(
            &self.source,
            &self.events,
            self.subscription.batch_size > 1,
            |w, out, e| {
                shape.write(w, out, e, previous);
            },
        )
    }
}

impl Worker {
    /// Applies every answer that came back since the last step, at `now`:
    /// the time retries are scheduled from (the clock seam the retry tests
    /// move, tests/it/delivery/retries.rs).
    pub(super) async fn apply_finished(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
        now: Now,
    ) -> StoreResult<Applied> {
        let mut applied = Applied {
            answers: 0,
            disabled: false,
        };
        while let Some(done) = st.finished.pop() {
            applied.answers += 1;
            match done {
                Ok(done) => {
                    applied.disabled |= self.apply(st, subscription, done, now.wall_ms).await?
                }
                Err(e) => {
                    // A send task that panicked: its entries stay pending in
                    // the store and are sent again after the next reload,
                    // once nothing else is in flight.
                    tracing::error!(error = %e, "a delivery request failed unexpectedly");
                    st.stale = true;
                }
            }
        }
        Ok(applied)
    }

    /// Applies one answer at `now` (unix ms); true when it disabled the
    /// subscription.
    async fn apply(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
        done: Done,
        now: u64,
    ) -> StoreResult<bool> {
        let Some(q) = st.queue.as_mut() else {
            return Ok(false);
        };
        q.finish(&done.ids);
        let events: Vec<Arc<Event>> = done
            .ids
            .iter()
            .filter_map(|id| q.get(id).map(|p| p.event.clone()))
            .collect();
        self.record(st, subscription, &events, &done.sent, now);
        let q = st.queue.as_mut().expect("checked above");
        match done.sent.outcome {
            Outcome::Delivered => {
                // Off the delivery path: a crash before it lands re-sends
                // these events (at-least-once), nothing is lost.
                let _ = st
                    .log
                    .send(Write::Settle(subscription.id.clone(), done.ids.clone()));
                for id in &done.ids {
                    q.remove(id);
                }
                st.failing_since = None;
                self.recovered(st, subscription, now).await?;
                Ok(false)
            }
            Outcome::Gone => {
                tracing::warn!(subscription = %subscription.id, url = %subscription.url.for_logs(), "receiver answered 410 Gone; disabling the subscription");
                self.disable(subscription, "the receiver answered 410 Gone")
                    .await?;
                Ok(true)
            }
            _ => {
                let records = events.iter().map(|e| e.record.as_str());
                if let Some(said) = st.streak.failed(now, records, &reason(&done.sent)) {
                    tracing::warn!(subscription = %subscription.id, table = %self.table, url = %subscription.url.for_logs(), reason = %said.reason, unsaid_since_last = said.unsaid, "delivery failing; retrying on the schedule");
                }
                self.retry_or_bury(st, subscription, &done, now).await?;
                let since = *st.failing_since.get_or_insert(now);
                if now.saturating_sub(since) > self.schedule.disable_after.as_millis() as u64 {
                    self.disable(
                        subscription,
                        "every delivery failed for longer than delivery.disable_after",
                    )
                    .await?;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    /// A success at `now` (unix ms) ends a streak of failures: says so, and
    /// makes the waiting retries due now when the receiver was down
    /// (`Streak` says when), in memory and in the store.
    async fn recovered(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
        now: u64,
    ) -> StoreResult<()> {
        let back = st.streak.delivered(now);
        if back.say {
            tracing::warn!(subscription = %subscription.id, table = %self.table, url = %subscription.url.for_logs(), "delivery recovered");
        }
        let Some(q) = st.queue.as_mut().filter(|_| back.pull_forward) else {
            return Ok(());
        };
        let due = q.retry_now(now);
        if due > 0 {
            self.store
                .retry_now(&subscription.id, &self.table, now)
                .await?;
            tracing::info!(subscription = %subscription.id, table = %self.table, due, "the receiver answers again: its waiting retries are due now");
        }
        Ok(())
    }

    /// After a failure at `now` (unix ms): each entry waits for its next
    /// retry, or goes to the dead letters when the schedule is exhausted.
    async fn retry_or_bury(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
        done: &Done,
        now: u64,
    ) -> StoreResult<()> {
        let q = st.queue.as_mut().expect("checked by the caller");
        let why = reason(&done.sent);
        // One retry state for the whole request, shared with no other entry:
        // its entries are retried together as the same batch (same `webhook-id`).
        let mut states: HashMap<u32, Option<RetryState>> = HashMap::new();
        for id in &done.ids {
            let Some(attempts) = q.get(id).map(|p| p.state.attempts + 1) else {
                continue;
            };
            let next = *states.entry(attempts).or_insert_with(|| {
                let d = self.schedule.delay(attempts, done.sent.retry_after)?;
                let next_at_ms = now + d.as_millis() as u64;
                Some(q.unshared(
                    RetryState {
                        attempts,
                        next_at_ms,
                    },
                    &done.ids,
                ))
            });
            let p = q.get_mut(id).expect("looked up above");
            p.state.attempts = attempts;
            match next {
                Some(state) => {
                    p.state = state;
                    self.store
                        .retry_later(&subscription.id, &self.table, *id, p.state)
                        .await?;
                }
                None => {
                    let dead = DeadLetter {
                        table: self.table.to_string(),
                        id: id.to_string(),
                        event_id: self.source.id(&p.event),
                        attempts: p.state.attempts,
                        last_error: why.clone(),
                        at_ms: now,
                    };
                    self.store.dead_letter(&subscription.id, &dead).await?;
                    self.store
                        .settle(&subscription.id, &self.table, &[*id])
                        .await?;
                    q.remove(id);
                }
            }
        }
        Ok(())
    }

    /// Logs the attempt made at `at_ms` (off the delivery path) and counts it.
    fn record(
        &self,
        st: &mut WorkerState,
        subscription: &Subscription,
        events: &[Arc<Event>],
        sent: &Sent,
        at_ms: u64,
    ) {
        let attempt = Attempt {
            at_ms,
            table: self.table.to_string(),
            ping: false,
            event_ids: events.iter().map(|e| self.source.id(e)).collect(),
            outcome: sent.outcome,
            status: sent.status,
            latency_ms: sent.latency.as_millis() as u64,
            response: sent.response.clone(),
            error: sent.error.clone(),
        };
        let _ = st
            .log
            .send(Write::Attempt(subscription.id.clone(), attempt));
        st.meters.attempt(sent.outcome, sent.latency);
    }

    pub(super) async fn disable(&self, subscription: &Subscription, why: &str) -> StoreResult<()> {
        crate::store::update_subscription(self.store.as_ref(), &subscription.id, |current| {
            current.enabled = false;
            current.disabled_reason = Some(why.to_string());
            current.updated_ms = now_ms();
            Ok::<_, crate::store::StoreError>(())
        })
        .await?;
        Ok(())
    }
}

/// Why a request failed (`state::failure_reason`).
pub fn reason(sent: &Sent) -> String {
    crate::subscription::state::failure_reason(sent.outcome, sent.status, sent.error.as_deref())
}

/// A send task's result as the worker keeps it until the next step.
pub type Finished = Result<Done, JoinError>;
