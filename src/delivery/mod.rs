//! Webhook delivery (docs/webhooks.md): at-least-once, signed (Standard Webhooks),
//! retried on a schedule, in stamp order per record, with dead letters.
//!
//! The supervisor ([`Supervisor::run`]) keeps one [`worker::Worker`] per
//! (enabled subscription, covered table), restarting and stopping them as
//! subscriptions change. Workers hold a lease each, so with several relay
//! instances every pair is served by exactly one of them at a time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, DeliveryConfig},
    consumer::Allow,
    events::Event,
    store::{Store, StoreResult, Table},
    subscription::{Subscription, state::RetryState},
    topology::Topology,
};

mod attempt;
mod follow;
pub use follow::selection_of;
mod meters;
mod queue;
pub mod sender;
pub mod signing;
pub mod ssrf;
mod streak;
mod survive;
mod window;
pub mod worker;
mod writer;

/// What a subscription holds on a table, counted as its worker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Claimed and not yet delivered.
    pub pending: usize,
    /// Held back by a waiting retry: failed events and the later events of
    /// their records. At `delivery.max_waiting_retries` the table claims
    /// nothing new for the subscription.
    pub waiting: usize,
}

impl Backlog {
    /// Counts a pending set as read from the store.
    pub fn of(pending: Vec<(Event, RetryState)>) -> Backlog {
        let mut q = queue::Queue::default();
        for (e, state) in pending {
            q.insert(e, state);
        }
        let counts = q.counts();
        Backlog {
            pending: counts.sendable + counts.waiting,
            waiting: counts.waiting,
        }
    }
}

pub async fn backlog(store: &dyn Store, sub_id: &str, t: &Table) -> StoreResult<Backlog> {
    Ok(Backlog::of(store.pending(sub_id, t).await?))
}

/// The retry schedule as data: delays after the 1st, 2nd, … failure.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub delays: Vec<Duration>,
    /// A receiver's `Retry-After` is honoured up to this.
    pub max_retry_after: Duration,
    /// A subscription failing without a success for this long is disabled.
    pub disable_after: Duration,
    /// Entries held back behind waiting retries at most, per worker; at
    /// the limit the worker claims nothing new (`delivery.max_waiting_retries`).
    pub max_waiting: usize,
}

impl Schedule {
    pub fn from_config(c: &DeliveryConfig) -> Schedule {
        Schedule {
            delays: c.retry_schedule.clone(),
            max_retry_after: c.max_retry_after,
            disable_after: c.disable_after,
            max_waiting: c.max_waiting_retries,
        }
    }

    /// The wait before retry `attempts` (after that many failures), or None
    /// when the schedule is exhausted. ±20 % jitter; a `Retry-After` longer
    /// than the scheduled delay wins, within `max_retry_after`.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.delays.get(attempts.checked_sub(1)? as usize)?;
        let jittered = base.mul_f64(rand::rng().random_range(0.8..=1.2));
        Some(match retry_after {
            Some(ra) if ra > jittered => ra.min(self.max_retry_after),
            _ => jittered,
        })
    }
}

/// What workers share.
#[derive(Clone)]
pub struct Supervisor {
    pub store: Arc<dyn Store>,
    pub sender: Arc<sender::WebhookClient>,
    pub schedule: Arc<Schedule>,
    /// The tables there are: a worker per covered table, started and
    /// stopped as tables come and go.
    pub topology: Arc<Topology>,
    pub holder: String,
    pub lease_ttl: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The subscriptions of the configuration file, re-created should the
    /// store lose them.
    pub declared: Arc<Vec<crate::declared::Declared>>,
    /// Write them (`declared::apply`) at the first look: the relay could
    /// not when it started.
    pub apply_first: bool,
    /// How long a secret the file replaced still signs.
    pub secret_grace: Duration,
    /// The consumers: a subscription's table its consumer's allow-list no
    /// longer allows has no worker (docs/consumers.md).
    pub consumers: Arc<crate::consumer::Book>,
}

/// How often the supervisor reads the subscriptions' version (one cheap
/// store call), listing them only when it moved.
pub const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// The supervisor lists the subscriptions at least this often whatever
/// their version says, so a write whose version raise was lost (a crash
/// between the two, a hand edit of the store) is seen within this.
pub const RELIST_EVERY: Duration = Duration::from_secs(30);

struct Running {
    cancel: CancellationToken,
    subscription: watch::Sender<Subscription>,
    handle: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    pub fn policy(c: &Config) -> ssrf::Policy {
        ssrf::Policy {
            allow_private: c.delivery.allow_private_targets,
            allowed: c.delivery.allowed_cidrs.clone(),
        }
    }

    /// Keeps workers in line with the subscriptions until cancelled, then
    /// lets each finish its current request.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut running: HashMap<(String, Table), Running> = HashMap::new();
        // Clean-ups after the workers of deleted subscriptions.
        let mut forgetting = tokio::task::JoinSet::new();
        let mut memory = survive::Memory::default();
        let mut tables = self.topology.subscribe();
        // The versions of the last lists (subscriptions, consumers), and
        // when they were read.
        let mut seen: Option<((u64, u64), std::time::Instant)> = None;
        // A worker ended at the last look: list again, to start it again
        // if it is still wanted.
        let mut ended = false;
        while !cancel.is_cancelled() {
            let version = self.versions().await;
            // A worker that ended is still in `running` when the list is
            // compared, so one of a deleted subscription is cleaned up after.
            let due = std::mem::take(&mut ended)
                || running.values().any(|r| r.handle.is_finished())
                || memory.restoring()
                || match (version, seen) {
                    (Some(v), Some((listed, at))) => v != listed || at.elapsed() >= RELIST_EVERY,
                    _ => true,
                };
            if due {
                match self.lists().await {
                    Ok((subs, allowed)) => {
                        seen = version.map(|v| (v, std::time::Instant::now()));
                        self.survive(&mut memory, &subs).await;
                        self.restore(&subs).await;
                        let wanted = wanted(&subs, &allowed, &self.topology.snapshot());
                        for (key, handle) in self.reconcile(&subs, wanted, &mut running, &cancel) {
                            let this = self.clone();
                            forgetting.spawn(async move {
                                let _ = handle.await;
                                this.forget(&key.0, key.1).await;
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list subscriptions or consumers; delivery continues as it was")
                    }
                }
            }
            let before = running.len();
            running.retain(|_, r| !r.handle.is_finished());
            ended = running.len() < before;
            while forgetting.try_join_next().is_some() {}
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
                _ = tables.changed() => {}
            }
        }
        for r in running.values() {
            r.cancel.cancel();
        }
        let subs = self.store.subscriptions().await.ok();
        for ((sub_id, t), r) in running {
            let _ = r.handle.await;
            // Deleted since the last look: clean up after the worker here.
            if subs
                .as_ref()
                .is_some_and(|all| !all.iter().any(|s| s.id == sub_id))
            {
                self.forget(&sub_id, t).await;
            }
        }
        while forgetting.join_next().await.is_some() {}
    }

    /// Re-creates the configuration's subscriptions missing from `subs`;
    /// the next look starts their workers.
    async fn restore(&mut self, subs: &[Subscription]) {
        let (store, declared) = (self.store.as_ref(), self.declared.as_slice());
        let known: Vec<Table> = self.topology.snapshot().tables();
        let done = if self.apply_first {
            crate::declared::apply(store, declared, &known, self.secret_grace).await
        } else if declared.is_empty() {
            return;
        } else {
            crate::declared::restore(store, declared, subs, &known).await
        };
        match done {
            Ok(()) => self.apply_first = false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the subscriptions of the configuration file; trying again")
            }
        }
    }

    async fn forget(&self, sub_id: &str, t: Table) {
        // Its worker has stopped: nothing re-creates the series.
        self.metrics
            .forget_subscription(sub_id, std::slice::from_ref(&t));
        if let Err(e) = self.store.forget_subscription(sub_id, &[t]).await {
            tracing::warn!(subscription = %sub_id, error = %e, "cannot remove the delivery state of a deleted subscription");
        }
    }

    /// The versions of the subscriptions and of the consumers; None when
    /// the store does not answer.
    async fn versions(&self) -> Option<(u64, u64)> {
        let subs = self.store.subscriptions_version().await.ok()?;
        let consumers = self.store.documents_version(crate::consumer::KIND).await;
        Some((subs, consumers.ok()?))
    }

    /// Every subscription, and the allow-list of each consumer by name.
    async fn lists(&self) -> StoreResult<(Vec<Subscription>, HashMap<String, Allow>)> {
        let subs = self.store.subscriptions().await?;
        let consumers = self.consumers.list().await?;
        let allowed = consumers.into_iter().map(|c| (c.name, c.allow)).collect();
        Ok((subs, allowed))
    }

    fn reconcile(
        &self,
        subs: &[Subscription],
        wanted: HashMap<(String, Table), &Subscription>,
        running: &mut HashMap<(String, Table), Running>,
        cancel: &CancellationToken,
    ) -> Vec<((String, Table), tokio::task::JoinHandle<()>)> {
        let mut deleted = Vec::new();
        let now = self.topology.snapshot();
        let stopping: Vec<(String, Table)> = running
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in stopping {
            let Some(r) = running.remove(&key) else {
                continue;
            };
            r.cancel.cancel();
            // Deleted: once the worker has stopped, remove what it may have
            // written since the API removed the subscription's state.
            if !subs.iter().any(|s| s.id == key.0) {
                deleted.push((key, r.handle));
            }
        }
        for (key, s) in wanted {
            if let Some(r) = running.get(&key) {
                if *r.subscription.borrow() != *s {
                    let _ = r.subscription.send(s.clone());
                }
                continue;
            }
            let Some(table) = now.tables.get(&key.1) else {
                continue;
            };
            let (w, tx) = self.worker_on(s, table);
            let child = cancel.child_token();
            // Every log line of a worker carries its subscription and table.
            let span = tracing::info_span!("deliver", subscription = %key.0, source = %w.table.source, resource = %w.table.resource);
            let handle = tokio::spawn(tracing::Instrument::instrument(w.run(child.clone()), span));
            running.insert(
                key,
                Running {
                    cancel: child,
                    subscription: tx,
                    handle,
                },
            );
        }
        deleted
    }
}

/// The (subscription, table) pairs that have a worker: each enabled
/// subscription on each table of the topology it covers that its
/// consumer's allow-list allows (a consumer not found allows nothing). A
/// table the allow-list no longer allows keeps its position and pending
/// entries; delivery goes on from there should it be allowed again.
fn wanted<'a>(
    subs: &'a [Subscription],
    allowed: &HashMap<String, Allow>,
    now: &crate::topology::Snapshot,
) -> HashMap<(String, Table), &'a Subscription> {
    let mut wanted = HashMap::new();
    for s in subs.iter().filter(|s| s.enabled) {
        let allow = allowed.get(&s.consumer);
        let tables = now.tables.keys().filter(|t| s.covers(t));
        for t in tables.filter(|t| allow.is_some_and(|a| a.allows(t))) {
            wanted.insert((s.id.clone(), t.clone()), s);
        }
    }
    wanted
}

impl Supervisor {
    /// The worker of `sub` on `t`, a table of the topology, and the
    /// sender that passes it changes of the subscription.
    pub fn worker(
        &self,
        subscription: &Subscription,
        t: &Table,
    ) -> (worker::Worker, watch::Sender<Subscription>) {
        let table = self.topology.table(t);
        self.worker_on(
            subscription,
            table.as_deref().expect("a table of the topology"),
        )
    }

    fn worker_on(
        &self,
        subscription: &Subscription,
        table: &crate::topology::TableEntry,
    ) -> (worker::Worker, watch::Sender<Subscription>) {
        let t = &table.table;
        let (tx, rx) = watch::channel(subscription.clone());
        let w = worker::Worker {
            subscription: rx,
            source: table.event_source.clone(),
            wake: table.wake().clone(),
            table: t.clone(),
            store: self.store.clone(),
            sender: self.sender.clone(),
            schedule: self.schedule.clone(),
            holder: self.holder.clone(),
            lease_ttl: self.lease_ttl,
            metrics: self.metrics.clone(),
        };
        (w, tx)
    }
}

#[cfg(test)]
mod tests;
