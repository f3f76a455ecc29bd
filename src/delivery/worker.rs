//! One delivery worker per (subscription, table): it claims entries from
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
    meters::Meters,
    queue::Queue,
    sender::{Endpoint, WebhookClient},
    streak::Streak,
    window::Fill,
    writer::{Write, writer},
};
use crate::{
    cloudevents::EventSource,
    events::{StreamId, now_ms},
    filter::Selection,
    store::{Store, StoreResult, Table},
    subscription::Subscription,
};

/// Sendable entries a worker holds pending at most; more wait in the stream.
pub const WINDOW: usize = 500;
/// How often a worker publishes its queue figures at most.
const SHOW_EVERY: Duration = Duration::from_millis(250);
/// How often a busy worker looks again at most, between answers.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a worker with nothing due waits for a wake: its table's poller
/// on this instance wakes it after every append, and a change of its
/// subscription wakes it too; this bounds how late it sees appends by
/// another instance's poller and entries put back by a redrive.
pub const IDLE_WAIT: Duration = Duration::from_secs(2);

pub struct Worker {
    pub subscription: watch::Receiver<Subscription>,
    pub table: Table,
    pub source: Arc<EventSource>,
    pub store: Arc<dyn Store>,
    pub sender: Arc<WebhookClient>,
    pub schedule: Arc<Schedule>,
    pub holder: String,
    pub lease_ttl: Duration,
    pub wake: Arc<Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The time a step runs at: the wall clock for retry times (stored), the
/// monotonic one for the lease. This is the delivery's clock seam: a step
/// schedules retries from `wall_ms` and sends those due by it, so tests
/// pass times of their own and move through a retry schedule without
/// waiting for it (tests/it/delivery/retries.rs).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub wall_ms: u64,
    pub at: Instant,
}

impl Now {
    pub fn current() -> Now {
        Now {
            wall_ms: now_ms(),
            at: monotonic(),
        }
    }
}

/// Delivery's monotonic clock: tokio's, which is the system's except in a
/// test that pauses it (the fast tier, `delivery/tests`), where the lease,
/// the rate limit and the cut-off of requests all move with the paused time.
pub fn monotonic() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What one step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Requests started or answers applied: step again at once.
    Busy,
    /// Nothing to do until an answer comes back, a wake, or this long.
    Idle(Duration),
    /// The subscription was disabled (410 Gone, failing too long, by the
    /// API) or deleted: the worker stops.
    Disabled,
    /// Another instance holds the delivery lease: nothing was claimed or sent.
    LeaseLost,
}

/// A worker's state between steps.
pub struct WorkerState {
    /// The pending set as loaded from the store, none until (re)loaded.
    /// Invariant: none only while nothing is in flight.
    pub(super) queue: Option<Queue>,
    pub(super) failing_since: Option<u64>,
    /// The failures since the last success, for the log and the pull-forward.
    pub(super) streak: Streak,
    /// The rate limit: no request starts before this.
    pub(super) next_send: Option<Instant>,
    pub(super) last_reload: Instant,
    /// Until when the delivery lease is surely ours (renewal time + TTL).
    pub(super) lease_until: Option<Instant>,
    pub(super) sends: JoinSet<Done>,
    pub(super) finished: Vec<Finished>,
    /// Reload the queue from the store as soon as nothing is in flight.
    pub(super) stale: bool,
    /// The queued events were loaded for another `previous` setting: none
    /// is sent until they are loaded again (once the requests out are back).
    pub(super) requeue: bool,
    /// The subscription as last seen, shared with the requests out.
    pub(super) subscription: Arc<Subscription>,
    /// Its URL, headers and signing keys, made once per change.
    pub(super) endpoint: Arc<Endpoint>,
    /// Its filters and fields for this table's source, made once per change.
    pub(super) selection: Arc<Selection>,
    /// The selection changed: check every queued entry against it again.
    pub(super) recheck: bool,
    /// `selection` was made from the subscription (by the first step).
    pub(super) selection_made: bool,
    /// Entries in flight when checked: checked again once answered, should
    /// they stay pending (a failure).
    pub(super) unchecked: Vec<StreamId>,
    pub(super) changes: watch::Receiver<Subscription>,
    /// When the queue figures were last published.
    shown_at: Option<Instant>,
    pub(super) meters: Meters,
    /// The waiting-retry limit keeps the worker from claiming.
    pub(super) paused: bool,
    /// The ordered writer of settles and attempts.
    pub(super) log: mpsc::UnboundedSender<Write>,
    logger: tokio::task::JoinHandle<()>,
}

impl WorkerState {
    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.sends.len()
    }

    /// Whether `max_in_flight` requests are out: no step can start another.
    fn full(&self) -> bool {
        self.sends.len() >= self.subscription.max_in_flight.max(1) as usize
    }

    /// Waits for every request in flight; the next step applies the
    /// answers (at the time it is given).
    pub async fn answers(&mut self) {
        while !self.sends.is_empty() {
            self.next_answer().await;
        }
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
    fn lease(&self) -> Table {
        self.table.delivery_lease(&self.subscription.borrow().id)
    }

    /// A fresh state with its writer running; `close` it when done.
    pub fn state(&self) -> WorkerState {
        let subscription = self.subscription.borrow().clone();
        let (log, writes) = mpsc::unbounded_channel::<Write>();
        WorkerState {
            queue: None,
            failing_since: None,
            streak: Streak::default(),
            next_send: None,
            last_reload: monotonic(),
            lease_until: None,
            sends: JoinSet::new(),
            finished: Vec::new(),
            stale: false,
            requeue: false,
            endpoint: Arc::new(Endpoint::of(&subscription)),
            selection: Arc::new(Selection::default()),
            recheck: false,
            // Made by the first step, which may have to disable the subscription.
            selection_made: false,
            unchecked: Vec::new(),
            meters: Meters::new(self.metrics.clone(), &subscription.id, &self.table),
            subscription: Arc::new(subscription),
            changes: self.subscription.clone(),
            shown_at: None,
            paused: false,
            log,
            logger: tokio::spawn(writer(self.store.clone(), self.table.clone(), writes)),
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut st = self.state();
        while !cancel.is_cancelled() {
            // Listening for the poller's wake before the step reads the
            // store, so an append during the step is not waited out.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let pause = match self.step(&mut st, Now::current()).await {
                Ok(Step::Busy) if !st.full() => continue,
                // With the window full, another step could only find that
                // out again: wait for an answer instead.
                Ok(step @ (Step::Busy | Step::Idle(_))) => {
                    let wait = if let Step::Idle(wait) = step {
                        wait
                    } else {
                        TICK
                    };
                    if idle(&mut st, &cancel, woken, wait).await {
                        break;
                    }
                    continue;
                }
                Ok(Step::Disabled) => break,
                Ok(Step::LeaseLost) => self.lease_ttl / 2,
                Err(e) => {
                    tracing::warn!(table = %self.table, subscription = %self.subscription.borrow().id, error = %e, "delivery step failed; retrying");
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
    pub async fn drain(&self, st: &mut WorkerState) {
        st.answers().await;
        let subscription = self.subscription.borrow().clone();
        if let Err(e) = self.apply_finished(st, &subscription, Now::current()).await {
            tracing::warn!(table = %self.table, subscription = %subscription.id, error = %e, "cannot record delivery answers; those events will be sent again");
        }
    }

    /// Stops the state's writer once everything sent to it is stored.
    pub async fn close(&self, st: WorkerState) {
        drop(st.log);
        let _ = st.logger.await;
    }

    /// One unit of work: applies the answers that came back, makes sure of
    /// the lease, (re)loads and claims, and starts every request the window,
    /// the rate limit and per-record order allow. Never waits for an answer.
    pub async fn step(&self, st: &mut WorkerState, now: Now) -> StoreResult<Step> {
        if let Some(step) = self.follow(st).await? {
            return Ok(step);
        }
        let subscription = st.subscription.clone();
        while let Some(done) = st.sends.try_join_next() {
            st.finished.push(done);
        }
        let applied = self.apply_finished(st, &subscription, now).await?;
        if applied.disabled {
            return Ok(Step::Disabled);
        }
        if (st.stale || st.requeue) && st.sends.is_empty() {
            st.queue = None;
            st.stale = false;
            st.requeue = false;
        }
        if !self.fence(st, now.at).await? {
            return Ok(Step::LeaseLost);
        }
        let mut subscription = subscription;
        loop {
            match self.fill(st, &subscription).await? {
                Fill::Ready => break,
                Fill::Gone => return Ok(Step::Disabled),
                Fill::Changed(newer) => {
                    if let Some(step) = self.adopt(st, *newer).await? {
                        return Ok(step);
                    }
                    subscription = st.subscription.clone();
                }
            }
        }
        if st.shown_at.is_none_or(|at| monotonic() - at >= SHOW_EVERY) {
            let counts = st.queue.as_ref().map(Queue::counts).unwrap_or_default();
            st.meters.show(&counts, st.paused);
            st.shown_at = Some(monotonic());
        }
        let (started, wait) = self.start_sends(st, &subscription, now).await?;
        if started > 0 || applied.answers > 0 {
            return Ok(Step::Busy);
        }
        if monotonic() - st.last_reload >= IDLE_WAIT {
            // Idle: reload now and then to pick up redriven dead letters.
            st.stale = true;
        }
        Ok(Step::Idle(wait.max(Duration::from_millis(5))))
    }

    /// Makes sure the delivery lease is ours for at least `request_timeout`
    /// from `at`, renewing it if not. False when another instance holds it.
    pub(super) async fn fence(&self, st: &mut WorkerState, at: Instant) -> StoreResult<bool> {
        if st
            .lease_until
            .is_some_and(|until| until >= at + self.sender.timeout())
        {
            return Ok(true);
        }
        // Taken before the call: the store's TTL starts later, never earlier.
        let asked = at.min(monotonic());
        let ours = self
            .store
            .lease(&self.lease(), &self.holder, self.lease_ttl)
            .await?;
        st.lease_until = ours.then(|| asked + self.lease_ttl);
        Ok(ours)
    }
}

/// Waits until the writer has stored everything sent to it so far.
pub(super) async fn flush(log: &mpsc::UnboundedSender<Write>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if log.send(Write::Flush(tx)).is_ok() {
        let _ = rx.await;
    }
}

/// Waits for an answer, a wake (`woken`, listening since before the step)
/// or `wait`; true when cancelled.
async fn idle(
    st: &mut WorkerState,
    cancel: &CancellationToken,
    woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    wait: Duration,
) -> bool {
    let mut changes = st.changes.clone();
    tokio::select! {
        _ = cancel.cancelled() => true,
        // A sender gone (the supervisor stopping the worker) is no change.
        _ = async {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        } => false,
        _ = st.next_answer() => false,
        _ = woken => false,
        _ = tokio::time::sleep(wait) => false,
    }
}

async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
