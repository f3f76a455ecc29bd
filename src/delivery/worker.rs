//! One delivery worker per (subscription, target): it claims entries from
//! the stream into the subscription's pending set, sends due ones in stream
//! order, and keeps every later event of a record behind that record's
//! waiting retry, while other records keep flowing.
//!
//! Invariant: every state change goes to the store before the next send,
//! so a crash or a takeover by another instance resumes from the store's
//! pending set (at-least-once: a request in flight at a crash is sent again).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Schedule,
    model::{Attempt, DeadLetter, Outcome, RetryState},
    queue::{Pending, due_batch},
    sender::{Message, Sender},
    writer::{Write, writer},
};
use crate::{
    cloudevents::EventSource,
    events::{Event, StreamId, now_ms},
    metrics::{OutcomeLabels, SubLabels, SubTargetLabels},
    store::{Store, StoreResult, Target},
    subscription::Subscription,
};

/// Entries a worker holds pending at most; more wait in the stream.
pub const WINDOW: usize = 500;
/// How often an idle worker looks for new entries and redriven ones.
pub const TICK: Duration = Duration::from_millis(250);

pub struct Worker {
    pub sub: watch::Receiver<Subscription>,
    pub target: Target,
    pub source: Arc<EventSource>,
    pub store: Arc<dyn Store>,
    pub sender: Arc<Sender>,
    pub schedule: Arc<Schedule>,
    pub holder: String,
    pub lease_ttl: Duration,
    pub wake: Arc<Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set while running: the ordered writer of settles and attempts.
    pub log: Option<tokio::sync::mpsc::UnboundedSender<Write>>,
}

/// The lease of a delivery worker: a name of its own beside the target's poll lease.
pub fn lease_target(t: &Target, sub: &str) -> Target {
    Target::new(&t.source, format!("{}:sub:{sub}", t.resource))
}

impl Worker {
    pub async fn run(mut self, cancel: CancellationToken) {
        let lease = lease_target(&self.target, &self.sub.borrow().id);
        let mut queue: Option<BTreeMap<StreamId, Pending>> = None;
        let mut failing_since: Option<u64> = None;
        let mut last_send = Instant::now() - Duration::from_secs(3600);
        let mut last_reload = Instant::now();
        let mut leased_at: Option<Instant> = None;
        let (log, writes) = tokio::sync::mpsc::unbounded_channel::<Write>();
        let logger = tokio::spawn(writer(self.store.clone(), self.target.clone(), writes));
        self.log = Some(log);
        while !cancel.is_cancelled() {
            // Renew at a third of the lease time, not on every request.
            if leased_at.is_some_and(|at| at.elapsed() < self.lease_ttl / 3) {
                // still ours
            } else {
                match self.store.lease(&lease, &self.holder, self.lease_ttl).await {
                    Ok(true) => leased_at = Some(Instant::now()),
                    Ok(false) => {
                        queue = None;
                        leased_at = None;
                        if sleep_or_cancel(&cancel, self.lease_ttl / 2).await {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(target = %self.target, error = %e, "delivery cannot reach the store");
                        queue = None;
                        leased_at = None;
                        if sleep_or_cancel(&cancel, Duration::from_secs(1)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let step = self
                .step(
                    &mut queue,
                    &mut failing_since,
                    &mut last_send,
                    &mut last_reload,
                )
                .await;
            match step {
                Ok(Step::Sent) => {}
                Ok(Step::Idle(wait)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Ok(Step::Disabled) => break,
                Err(e) => {
                    tracing::warn!(target = %self.target, subscription = %self.sub.borrow().id, error = %e, "delivery step failed; retrying");
                    queue = None;
                    if sleep_or_cancel(&cancel, Duration::from_secs(1)).await {
                        break;
                    }
                }
            }
        }
        self.log = None;
        let _ = logger.await;
        let _ = self.store.release(&lease, &self.holder).await;
    }

    /// Loads, claims, sends one request. Public in spirit: one unit of work.
    async fn step(
        &mut self,
        queue: &mut Option<BTreeMap<StreamId, Pending>>,
        failing_since: &mut Option<u64>,
        last_send: &mut Instant,
        last_reload: &mut Instant,
    ) -> StoreResult<Step> {
        let sub = self.sub.borrow().clone();
        if queue.is_none() {
            // The store is authoritative: load after a (re)start or takeover,
            // once every settle sent to the writer has landed.
            self.flush().await;
            let loaded = self.store.pending(&sub.id, &self.target).await?;
            *queue = Some(
                loaded
                    .into_iter()
                    .map(|(e, state)| {
                        (
                            e.id,
                            Pending {
                                event: Arc::new(e),
                                state,
                            },
                        )
                    })
                    .collect(),
            );
            *last_reload = Instant::now();
        }
        let q = queue.as_mut().expect("loaded above");
        if q.len() <= WINDOW / 2 {
            let start = sub.start_of(&self.target);
            for e in self
                .store
                .claim(&sub.id, &self.target, start, WINDOW - q.len())
                .await?
            {
                q.insert(
                    e.id,
                    Pending {
                        event: Arc::new(e),
                        state: RetryState::default(),
                    },
                );
            }
        }
        // Events of ops the subscription does not want are settled unsent.
        if !sub.ops.is_empty() {
            let skip: Vec<StreamId> = q
                .values()
                .filter(|p| !sub.ops.contains(&p.event.op))
                .map(|p| p.event.id)
                .collect();
            if !skip.is_empty() {
                self.store.settle(&sub.id, &self.target, &skip).await?;
                for id in skip {
                    q.remove(&id);
                }
            }
        }
        let now = now_ms();
        let labels = SubTargetLabels {
            subscription: sub.id.clone(),
            source: self.target.source.clone(),
            resource: self.target.resource.clone(),
        };
        self.metrics
            .pending
            .get_or_create(&labels)
            .set(q.len() as i64);
        let waiting = q.values().filter(|p| p.state.attempts > 0).count();
        self.metrics
            .waiting_retry
            .get_or_create(&labels)
            .set(waiting as i64);
        let (batch, next_due) = due_batch(q, now, sub.batch_size as usize);
        if batch.is_empty() {
            if last_reload.elapsed() > Duration::from_secs(2) {
                // Idle: reload now and then to pick up redriven dead letters.
                *queue = None;
            }
            let wait = next_due.map_or(TICK, |at| {
                Duration::from_millis(at.saturating_sub(now)).min(TICK)
            });
            return Ok(Step::Idle(wait.max(Duration::from_millis(5))));
        }
        if let Some(rate) = sub.rate_limit {
            let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
            let since = last_send.elapsed();
            if since < gap {
                tokio::time::sleep(gap - since).await;
            }
        }
        *last_send = Instant::now();
        let events: Vec<Arc<Event>> = batch.iter().map(|id| q[id].event.clone()).collect();
        let sent = self.send(&sub, &events).await;
        let attempt = Attempt {
            at_ms: now_ms(),
            target: self.target.to_string(),
            event_ids: events.iter().map(|e| self.source.event(e).id).collect(),
            outcome: sent.outcome,
            status: sent.status,
            latency_ms: sent.latency.as_millis() as u64,
            response: sent.response.clone(),
            error: sent.error.clone(),
        };
        self.write(Write::Attempt(sub.id.clone(), attempt));
        let outcome = serde_json::to_value(sent.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let m = &self.metrics;
        m.attempts
            .get_or_create(&OutcomeLabels {
                subscription: sub.id.clone(),
                outcome,
            })
            .inc();
        m.delivery_latency
            .get_or_create(&SubLabels {
                subscription: sub.id.clone(),
            })
            .observe(sent.latency.as_secs_f64());
        match sent.outcome {
            Outcome::Delivered => {
                // Off the delivery path: a crash before it lands re-sends
                // these events (at-least-once), nothing is lost.
                self.write(Write::Settle(sub.id.clone(), batch.clone()));
                for id in &batch {
                    q.remove(id);
                }
                *failing_since = None;
                Ok(Step::Sent)
            }
            Outcome::Gone => {
                tracing::warn!(subscription = %sub.id, url = %crate::subscription::url_for_logs(&sub.url), "receiver answered 410 Gone; disabling the subscription");
                self.disable(&sub, "the receiver answered 410 Gone").await?;
                Ok(Step::Disabled)
            }
            _ => {
                let why = sent
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {}", sent.status.unwrap_or(0)));
                for id in &batch {
                    let p = q.get_mut(id).expect("batch ids are queued");
                    p.state.attempts += 1;
                    match self.schedule.delay(p.state.attempts, sent.retry_after) {
                        Some(d) => {
                            p.state.next_at_ms = now_ms() + d.as_millis() as u64;
                            self.store
                                .retry_later(&sub.id, &self.target, *id, p.state)
                                .await?;
                        }
                        None => {
                            let dead = DeadLetter {
                                target: self.target.to_string(),
                                id: id.to_string(),
                                event_id: self.source.event(&p.event).id,
                                attempts: p.state.attempts,
                                last_error: why.clone(),
                                at_ms: now_ms(),
                            };
                            self.store.dead_letter(&sub.id, &dead).await?;
                            self.store.settle(&sub.id, &self.target, &[*id]).await?;
                            q.remove(id);
                        }
                    }
                }
                let since = *failing_since.get_or_insert(now);
                if now.saturating_sub(since) > self.schedule.disable_after.as_millis() as u64 {
                    self.disable(
                        &sub,
                        "every delivery failed for longer than delivery.disable_after",
                    )
                    .await?;
                    return Ok(Step::Disabled);
                }
                Ok(Step::Sent)
            }
        }
    }

    fn write(&self, w: Write) {
        if let Some(log) = &self.log {
            let _ = log.send(w);
        }
    }

    /// Waits until the writer has stored everything sent to it so far.
    async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(Write::Flush(tx));
        let _ = rx.await;
    }

    async fn send(&self, sub: &Subscription, events: &[Arc<Event>]) -> super::sender::Sent {
        let (body, content_type, id) = if events.len() == 1 && sub.batch_size == 1 {
            let ce = self.source.event(&events[0]);
            let id = ce.id.clone();
            (
                serde_json::to_vec(&ce).unwrap_or_default(),
                "application/cloudevents+json",
                id,
            )
        } else {
            let all: Vec<_> = events.iter().map(|e| self.source.event(e)).collect();
            let id = format!("{}+{}", all[0].id, all.len() - 1);
            (
                serde_json::to_vec(&all).unwrap_or_default(),
                "application/cloudevents-batch+json",
                id,
            )
        };
        let mut secrets = vec![sub.secret.as_str()];
        if let Some((old, until)) = &sub.previous_secret
            && *until > now_ms()
        {
            secrets.push(old);
        }
        // The attempt's log lines carry the event (or first event of a batch).
        let span = tracing::debug_span!("attempt", event_id = %id, events = events.len());
        let sent = tracing::Instrument::instrument(
            self.sender.send(Message {
                url: &sub.url,
                headers: &sub.headers,
                id: &id,
                body,
                content_type,
                secrets,
            }),
            span.clone(),
        )
        .await;
        span.in_scope(|| {
            tracing::debug!(outcome = ?sent.outcome, status = sent.status, latency_ms = sent.latency.as_millis() as u64, "delivery attempt");
        });
        sent
    }

    async fn disable(&self, sub: &Subscription, why: &str) -> StoreResult<()> {
        crate::store::update_subscription(self.store.as_ref(), &sub.id, |current| {
            current.enabled = false;
            current.disabled_reason = Some(why.to_string());
            current.updated_ms = now_ms();
            Ok::<_, crate::store::StoreError>(())
        })
        .await?;
        Ok(())
    }
}

enum Step {
    Sent,
    Idle(Duration),
    Disabled,
}

async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
