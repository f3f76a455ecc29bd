//! One delivery worker per (subscription, target): it claims entries from
//! the stream into the subscription's pending set and keeps up to the
//! subscription's `max_in_flight` requests out at once, never two of one
//! record, so each record's events still arrive in stamp order while slow
//! receivers are served at their pace.
//!
//! Invariants:
//! - Every state change goes to the store before the entry can be sent
//!   again, so a crash or a takeover by another instance resumes from the
//!   store's pending set (at-least-once: only what was in flight, or
//!   delivered but not yet settled, is sent again).
//! - Sends are fenced: one starts only while the worker's delivery lease has
//!   at least `request_timeout` left, and is cut off when the lease would
//!   run out, so another instance never takes over a request still in flight.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{
    Schedule,
    attempt::{Done, Finished},
    queue::{Counts, Queue},
    sender::Sender,
    writer::{Write, writer},
};
use crate::{
    cloudevents::EventSource,
    events::{StreamId, now_ms},
    metrics::SubTargetLabels,
    store::{Store, StoreResult, Target},
    subscription::{Subscription, state::RetryState},
};

/// Sendable entries a worker holds pending at most; more wait in the stream.
pub const WINDOW: usize = 500;
/// Entries held back behind a waiting retry at most; while this many wait,
/// the worker claims nothing new (and says so in the metrics).
pub const WAITING_LIMIT: usize = 5000;
/// How often a worker publishes its queue figures at most.
const SHOW_EVERY: Duration = Duration::from_millis(250);
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
}

/// The time a step runs at: the wall clock for retry times (stored), the
/// monotonic one for the lease. Tests pass times of their own.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub wall_ms: u64,
    pub at: Instant,
}

impl Now {
    pub fn current() -> Now {
        Now {
            wall_ms: now_ms(),
            at: Instant::now(),
        }
    }
}

/// What one step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Requests started or answers applied: step again at once.
    Busy,
    /// Nothing to do until an answer comes back, a wake, or this long.
    Idle(Duration),
    /// The subscription was disabled (410 Gone, or failing too long).
    Disabled,
    /// Another instance holds the delivery lease: nothing was claimed or sent.
    LeaseLost,
}

/// A worker's state between steps.
pub struct State {
    /// The pending set as loaded from the store, none until (re)loaded.
    /// Invariant: none only while nothing is in flight.
    pub(super) queue: Option<Queue>,
    pub(super) failing_since: Option<u64>,
    /// The rate limit: no request starts before this.
    next_send: Option<Instant>,
    last_reload: Instant,
    /// Until when the delivery lease is surely ours (renewal time + TTL).
    lease_until: Option<Instant>,
    sends: JoinSet<Done>,
    pub(super) finished: Vec<Finished>,
    /// Reload the queue from the store as soon as nothing is in flight.
    pub(super) stale: bool,
    /// The subscription as last seen, shared with the requests out.
    sub: Arc<Subscription>,
    changes: watch::Receiver<Subscription>,
    /// When the queue figures were last published.
    shown_at: Option<Instant>,
    /// The ordered writer of settles and attempts.
    pub(super) log: mpsc::UnboundedSender<Write>,
    logger: tokio::task::JoinHandle<()>,
}

impl State {
    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.sends.len()
    }

    /// Waits for the next answer of a request in flight (forever if none).
    async fn next_answer(&mut self) {
        match self.sends.join_next().await {
            Some(done) => self.finished.push(done),
            None => std::future::pending().await,
        }
    }
}

impl Worker {
    fn lease(&self) -> Target {
        self.target.delivery_lease(&self.sub.borrow().id)
    }

    /// A fresh state with its writer running; `close` it when done.
    pub fn state(&self) -> State {
        let (log, writes) = mpsc::unbounded_channel::<Write>();
        State {
            queue: None,
            failing_since: None,
            next_send: None,
            last_reload: Instant::now(),
            lease_until: None,
            sends: JoinSet::new(),
            finished: Vec::new(),
            stale: false,
            sub: Arc::new(self.sub.borrow().clone()),
            changes: self.sub.clone(),
            shown_at: None,
            log,
            logger: tokio::spawn(writer(self.store.clone(), self.target.clone(), writes)),
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut st = self.state();
        while !cancel.is_cancelled() {
            let pause = match self.step(&mut st, Now::current()).await {
                Ok(Step::Busy) => continue,
                Ok(Step::Idle(wait)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = st.next_answer() => {}
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                Ok(Step::Disabled) => break,
                Ok(Step::LeaseLost) => self.lease_ttl / 2,
                Err(e) => {
                    tracing::warn!(target = %self.target, subscription = %self.sub.borrow().id, error = %e, "delivery step failed; retrying");
                    Duration::from_secs(1)
                }
            };
            // Start again from the store, once the answers still out are in.
            self.drain(&mut st).await;
            st.queue = None;
            if sleep_or_cancel(&cancel, pause).await {
                break;
            }
        }
        self.drain(&mut st).await;
        self.close(st).await;
        let _ = self.store.release(&self.lease(), &self.holder).await;
    }

    /// Waits for every request in flight and applies its answer.
    pub async fn drain(&self, st: &mut State) {
        while !st.sends.is_empty() {
            st.next_answer().await;
        }
        let sub = self.sub.borrow().clone();
        if let Err(e) = self.apply_finished(st, &sub).await {
            tracing::warn!(target = %self.target, subscription = %sub.id, error = %e, "cannot record delivery answers; those events will be sent again");
        }
    }

    /// Stops the state's writer once everything sent to it is stored.
    pub async fn close(&self, st: State) {
        drop(st.log);
        let _ = st.logger.await;
    }

    /// One unit of work: applies the answers that came back, makes sure of
    /// the lease, (re)loads and claims, and starts every request the window,
    /// the rate limit and per-record order allow. Never waits for an answer.
    pub async fn step(&self, st: &mut State, now: Now) -> StoreResult<Step> {
        if st.changes.has_changed().unwrap_or(false) {
            st.sub = Arc::new(st.changes.borrow_and_update().clone());
        }
        let sub = st.sub.clone();
        while let Some(done) = st.sends.try_join_next() {
            st.finished.push(done);
        }
        let applied = self.apply_finished(st, &sub).await?;
        if applied.disabled {
            return Ok(Step::Disabled);
        }
        if st.stale && st.sends.is_empty() {
            st.queue = None;
            st.stale = false;
        }
        if !self.fence(st, now.at).await? {
            return Ok(Step::LeaseLost);
        }
        if !self.fill(st, &sub).await? {
            return Ok(Step::Disabled);
        }
        if st.shown_at.is_none_or(|at| at.elapsed() >= SHOW_EVERY) {
            let counts = st.queue.as_ref().map(Queue::counts).unwrap_or_default();
            self.show(&sub, &counts);
            st.shown_at = Some(Instant::now());
        }
        let (started, wait) = self.start_sends(st, &sub, now).await?;
        if started > 0 || applied.answers > 0 {
            return Ok(Step::Busy);
        }
        if st.last_reload.elapsed() > Duration::from_secs(2) {
            // Idle: reload now and then to pick up redriven dead letters.
            st.stale = true;
        }
        Ok(Step::Idle(wait.max(Duration::from_millis(5))))
    }

    /// Makes sure the delivery lease is ours for at least `request_timeout`
    /// from `at`, renewing it if not. False when another instance holds it.
    async fn fence(&self, st: &mut State, at: Instant) -> StoreResult<bool> {
        if st
            .lease_until
            .is_some_and(|until| until >= at + self.sender.timeout())
        {
            return Ok(true);
        }
        // Taken before the call: the store's TTL starts later, never earlier.
        let asked = at.min(Instant::now());
        let ours = self
            .store
            .lease(&self.lease(), &self.holder, self.lease_ttl)
            .await?;
        st.lease_until = ours.then(|| asked + self.lease_ttl);
        Ok(ours)
    }

    /// Loads the pending set if needed, claims new entries while the window
    /// has room, and settles entries of ops the subscription does not want.
    /// False when the subscription was deleted meanwhile.
    async fn fill(&self, st: &mut State, sub: &Subscription) -> StoreResult<bool> {
        if st.queue.is_none() {
            debug_assert!(st.sends.is_empty(), "a reload while requests are out");
            // The store is authoritative: load after a (re)start or takeover,
            // once every settle sent to the writer has landed.
            flush(&st.log).await;
            let mut q = Queue::default();
            for (e, state) in self.store.pending(&sub.id, &self.target).await? {
                q.insert(e, state);
            }
            st.queue = Some(q);
            st.last_reload = Instant::now();
        }
        let q = st.queue.as_mut().expect("loaded above");
        let counts = q.counts();
        if counts.sendable <= WINDOW / 2 && counts.waiting < WAITING_LIMIT {
            // A claim makes the consumer group when it is missing: one of a
            // subscription deleted since the supervisor last looked would
            // start over from the start point and send to a removed receiver.
            if self.store.subscription(&sub.id).await?.is_none() {
                return Ok(false);
            }
            let start = sub.start_of(&self.target);
            let room = WINDOW - counts.sendable;
            for e in self.store.claim(&sub.id, &self.target, start, room).await? {
                q.insert(e, RetryState::default());
            }
        }
        if !sub.ops.is_empty() {
            let skip: Vec<StreamId> = q
                .values()
                .filter(|p| !sub.ops.contains(&p.event.op) && !q.is_in_flight(&p.event.id))
                .map(|p| p.event.id)
                .collect();
            if !skip.is_empty() {
                self.store.settle(&sub.id, &self.target, &skip).await?;
                for id in skip {
                    q.remove(&id);
                }
            }
        }
        Ok(true)
    }

    /// Starts requests while the window, the rate limit and per-record order
    /// allow; returns how many started and how long until one more might.
    async fn start_sends(
        &self,
        st: &mut State,
        sub: &Arc<Subscription>,
        now: Now,
    ) -> StoreResult<(usize, Duration)> {
        let free = (sub.max_in_flight.max(1) as usize).saturating_sub(st.sends.len());
        let per_request = sub.batch_size.max(1) as usize;
        if free == 0 {
            return Ok((0, TICK));
        }
        let q = st.queue.as_ref().expect("filled before sending");
        // One pass for every free slot: the entries are of distinct records,
        // so no batch holds two events of one record.
        let (due, next_due) = q.due_batch(now.wall_ms, free * per_request);
        if due.is_empty() {
            let wait = next_due.map_or(TICK, |due| {
                Duration::from_millis(due.saturating_sub(now.wall_ms)).min(TICK)
            });
            return Ok((0, wait));
        }
        let gap = sub
            .rate_limit
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        let mut started = 0;
        for batch in due.chunks(per_request) {
            let at = now.at.max(Instant::now());
            if let Some(next) = st.next_send.filter(|n| *n > at) {
                return Ok((started, (next - at).min(TICK)));
            }
            // The fence, checked before every request.
            if !self.fence(st, at).await? {
                return Ok((started, self.lease_ttl / 2));
            }
            let until = st.lease_until.expect("fenced above");
            st.next_send = gap.map(|g| st.next_send.unwrap_or(at).max(at) + g);
            self.start_send(st, sub, batch.to_vec(), until);
            started += 1;
        }
        Ok((started, TICK))
    }

    /// Publishes the worker's queue figures.
    fn show(&self, sub: &Subscription, counts: &Counts) {
        let labels = SubTargetLabels {
            subscription: sub.id.clone(),
            source: self.target.source.clone(),
            resource: self.target.resource.clone(),
        };
        let m = &self.metrics;
        let pending = counts.sendable + counts.waiting;
        m.pending.get_or_create(&labels).set(pending as i64);
        m.waiting_retry
            .get_or_create(&labels)
            .set(counts.waiting as i64);
        m.in_flight
            .get_or_create(&labels)
            .set(counts.in_flight as i64);
    }

    /// Spawns one request; its answer is applied by a later step.
    fn start_send(
        &self,
        st: &mut State,
        sub: &Arc<Subscription>,
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
            sub: sub.clone(),
            source: self.source.clone(),
            sender: self.sender.clone(),
            ids: batch,
            events,
            until,
        };
        // The request's log lines stay inside the worker's `deliver` span.
        let send = tracing::Instrument::in_current_span(request.send());
        st.sends.spawn(send);
    }
}

/// Waits until the writer has stored everything sent to it so far.
async fn flush(log: &mpsc::UnboundedSender<Write>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if log.send(Write::Flush(tx)).is_ok() {
        let _ = rx.await;
    }
}

async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
