//! The fast tier of delivery's rules (issue 22): a [`Worker`] over the
//! in-memory store, sending through a scripted receiver (`scripted.rs`)
//! on tokio's paused clock. Everything but the network is production code:
//! the claim, the queue's order rules, the retry schedule, the signing and
//! the reading of answers. Hours of retries pass in milliseconds of wall
//! time, with no redis-server, simulator or HTTP; `tests/it/delivery`
//! runs the same rules end to end.
//!
//! A test steps the worker by hand at the rig's clock ([`Rig::now`]: the
//! paused clock, moved with [`Rig::wait`]), or runs its real loop
//! ([`Rig::run`]). The SQLite engine's calls run on blocking threads, during
//! which tokio does not auto-advance the paused clock, so a store call
//! never sees time jump under it.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Schedule,
    sender::WebhookClient,
    ssrf::Policy,
    worker::{Now, Step, Worker, WorkerState, monotonic},
};
use crate::{
    cloudevents::EventSource,
    store::{Store, Table, contract, sqlite::SqliteStore},
    subscription::{Subscription, state::RetryState},
};

mod batches;
mod order;
mod pace;
mod retries;
mod schedule;
mod scripted;

use scripted::{Reply, Request, Scripted};

/// `delivery.request_timeout` of the rig.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The subscription's signing secret.
const SECRET: &str = "whsec_dGVzdA==";
const SUB: &str = "sub_fast";
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// One subscription on one table of an in-memory store, its worker, and
/// the scripted receiver it delivers to.
struct Rig {
    store: Arc<dyn Store>,
    table: Table,
    epoch: String,
    rx: Arc<Scripted>,
    worker: Worker,
    /// Kept so the worker's subscription channel stays open.
    _changes: watch::Sender<Subscription>,
    /// The wall clock (unix ms) when the rig was made, and the paused
    /// clock then: [`Rig::now`] moves the one with the other.
    wall0: u64,
    t0: tokio::time::Instant,
}

/// The default schedule of the rig: 5 s, 5 min, 30 min.
fn schedule() -> Schedule {
    Schedule {
        delays: vec![Duration::from_secs(5), 5 * MINUTE, 30 * MINUTE],
        max_retry_after: HOUR,
        disable_after: 120 * HOUR,
        max_waiting: 5000,
    }
}

/// A subscription to every table, from the beginning, delivering to an
/// address the SSRF guard passes without a lookup.
fn subscription(tweak: impl FnOnce(&mut Subscription)) -> Subscription {
    let mut s: Subscription = serde_json::from_value(json!({
        "id": SUB, "url": "https://receiver.example/hook", "resources": ["*"], "ops": [],
        "start": {}, "headers": {}, "batch_size": 1, "max_in_flight": 4, "rate_limit": null,
        "enabled": true, "description": "", "secret": SECRET, "previous_secret": null,
        "created_ms": 0, "updated_ms": 0
    }))
    .unwrap();
    tweak(&mut s);
    s
}

impl Rig {
    /// A rig whose receiver answers by `rule`, with the subscription and
    /// schedule changed by `tweak`.
    async fn new(
        tweak: impl FnOnce(&mut Subscription, &mut Schedule),
        rule: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> Rig {
        let (mut sub, mut sched) = (subscription(|_| {}), schedule());
        tweak(&mut sub, &mut sched);
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let (table, epoch) = contract::leased_table(store.as_ref(), "sim", "patients").await;
        store.put_subscription(&sub).await.unwrap();
        let rx = Scripted::new(TIMEOUT, rule);
        let policy = Policy {
            allow_private: false,
            allowed: Vec::new(),
        };
        let sender = WebhookClient::with_transport(policy, TIMEOUT, rx.clone());
        let (changes, subscription) = watch::channel(sub);
        let worker = Worker {
            subscription,
            table: table.clone(),
            source: Arc::new(EventSource {
                table: table.clone(),
                source_url: "https://upstream.example/api/patients".into(),
                type_prefix: "io.stamp-relay".into(),
                fields: Default::default(),
            }),
            store: store.clone(),
            sender: Arc::new(sender),
            schedule: Arc::new(sched),
            holder: "relay-1".into(),
            lease_ttl: Duration::from_secs(30),
            wake: Arc::new(Notify::new()),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        };
        Rig {
            store,
            table,
            epoch,
            rx,
            worker,
            _changes: changes,
            wall0: crate::events::now_ms(),
            t0: tokio::time::Instant::now(),
        }
    }

    /// Appends one version per `record@stamp`, as a poll would.
    async fn append(&self, versions: &[&str]) {
        let records: Vec<_> = versions
            .iter()
            .map(|v| {
                let (id, stamp) = v.split_once('@').unwrap();
                contract::record(id, stamp.parse().unwrap())
            })
            .collect();
        let appended = contract::append_as(
            self.store.as_ref(),
            &self.table,
            "me",
            &self.epoch,
            &records,
        );
        appended.await.unwrap();
    }

    /// The rig's time: the wall clock as it was at the start, moved on by
    /// the paused clock.
    fn now(&self) -> Now {
        Now {
            wall_ms: self.wall0 + self.t0.elapsed().as_millis() as u64,
            at: monotonic(),
        }
    }

    /// Moves the paused clock on by `d` at once (timers due by then fire).
    async fn wait(&self, d: Duration) {
        tokio::time::advance(d).await;
    }

    async fn step(&self, st: &mut WorkerState) -> Step {
        self.worker.step(st, self.now()).await.unwrap()
    }

    /// One step that sends, its answers, and the step that applies them.
    async fn round(&self, st: &mut WorkerState) {
        assert_eq!(self.step(st).await, Step::Busy, "a request starts");
        st.answers().await;
        self.step(st).await;
    }

    /// The worker's own loop, until `done` holds of the receiver (looked
    /// at every paused second), for at most `within` of paused time.
    async fn run(&self, within: Duration, done: impl Fn(&Scripted) -> bool) {
        let cancel = CancellationToken::new();
        let w = Worker {
            subscription: self.worker.subscription.clone(),
            table: self.table.clone(),
            source: self.worker.source.clone(),
            store: self.store.clone(),
            sender: self.worker.sender.clone(),
            schedule: self.worker.schedule.clone(),
            holder: self.worker.holder.clone(),
            lease_ttl: self.worker.lease_ttl,
            wake: self.worker.wake.clone(),
            metrics: self.worker.metrics.clone(),
        };
        let running = tokio::spawn(w.run(cancel.clone()));
        let started = tokio::time::Instant::now();
        while !done(&self.rx) {
            assert!(started.elapsed() < within, "not done within {within:?}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cancel.cancel();
        running.await.unwrap();
    }

    /// Waits until the worker's settles and attempt logs, written off the
    /// delivery path, are in the store.
    async fn flushed(&self, st: &WorkerState) {
        super::worker::flush(&st.log).await;
    }

    /// The pending entries, `record@stamp` and their retry state.
    async fn pending(&self) -> Vec<(String, RetryState)> {
        let pending = self.store.pending(SUB, &self.table).await.unwrap();
        let of =
            |(e, s): (crate::events::Event, RetryState)| (format!("{}@{}", e.record, e.stamp), s);
        pending.into_iter().map(of).collect()
    }

    /// The retry state of pending `record@stamp`.
    async fn retry_state_of(&self, version: &str) -> RetryState {
        let pending = self.pending().await;
        let found = pending.iter().find(|(v, _)| v == version);
        found
            .unwrap_or_else(|| panic!("{version} is not pending: {pending:?}"))
            .1
    }

    /// The one pending entry's retry state.
    async fn retry_state(&self) -> RetryState {
        let pending = self.pending().await;
        assert_eq!(pending.len(), 1, "one event pending: {pending:?}");
        pending[0].1
    }
}
