//! Subscriptions made through the API survive a store that loses its data
//! (a Redis `FLUSHALL`, a failover to an empty replica, a replaced SQLite
//! file): the supervisor keeps the last list it read, and when a table's
//! epoch vanishes or changes (poller/epoch.rs) it writes back those the
//! store no longer holds, each logged by id. Their positions start at the
//! reload's snapshot: the beginning of each covered table's new stream.
//! (The configuration's own come back through `declared::restore`.)

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::Supervisor;
use crate::{events::StreamId, store::Table, subscription::Subscription};

/// How long after a reset is seen the list is not trusted to shrink: a look
/// may have read the list just before the data went and the epochs just
/// after.
const WINDOW: Duration = Duration::from_secs(30);

/// What the supervisor remembers between looks.
#[derive(Default)]
pub struct Memory {
    known: Vec<Subscription>,
    epochs: HashMap<Table, String>,
    restoring_until: Option<Instant>,
}

impl Memory {
    /// A reset was seen lately: the supervisor lists on every look.
    pub fn restoring(&self) -> bool {
        self.restoring_until.is_some()
    }
}

impl Supervisor {
    /// After a look that listed `subs`: notices a reset from the tables'
    /// epochs and writes back what the store lost.
    pub(super) async fn survive(&self, memory: &mut Memory, subs: &[Subscription]) {
        if self.epochs_changed(memory).await {
            memory.restoring_until = Some(Instant::now() + WINDOW);
        }
        if memory
            .restoring_until
            .is_none_or(|until| Instant::now() >= until)
        {
            memory.restoring_until = None;
            memory.known = subs.to_vec();
            return;
        }
        let lost: Vec<Subscription> = memory
            .known
            .iter()
            .filter(|k| k.managed_by.is_none() && !subs.iter().any(|s| s.id == k.id))
            .cloned()
            .collect();
        for mut subscription in lost {
            let covered: Vec<Table> = self
                .topology
                .snapshot()
                .tables()
                .into_iter()
                .filter(|t| subscription.covers(t))
                .collect();
            for t in covered {
                subscription.start.insert(t, StreamId::ZERO);
            }
            match self.store.put_subscription(&subscription).await {
                Ok(()) => {
                    tracing::warn!(subscription = %subscription.id, url = %subscription.url.for_logs(), "subscription lost by a store reset: written back from memory; its delivery restarts at the reload's snapshot")
                }
                Err(e) => {
                    tracing::error!(subscription = %subscription.id, error = %e, "cannot write back a subscription the store lost; trying again")
                }
            }
        }
        for s in subs {
            match memory.known.iter_mut().find(|k| k.id == s.id) {
                Some(k) => *k = s.clone(),
                None => memory.known.push(s.clone()),
            }
        }
    }

    /// Whether a table's epoch vanished or changed since the last look.
    /// Read in one batch (on Redis one MGET per thousand tables), not one
    /// call per table: this runs at every list, on every instance.
    async fn epochs_changed(&self, memory: &mut Memory) -> bool {
        let mut changed = false;
        let tables = self.topology.snapshot().tables();
        let Ok(epochs) = self.store.epochs(&tables).await else {
            return false;
        };
        for (t, now) in tables.iter().zip(epochs) {
            match (memory.epochs.get(t), now) {
                (Some(was), Some(now)) if *was == now => {}
                (Some(_), now) => {
                    changed = true;
                    match now {
                        Some(now) => memory.epochs.insert(t.clone(), now),
                        None => memory.epochs.remove(t),
                    };
                }
                (None, Some(now)) => {
                    memory.epochs.insert(t.clone(), now);
                }
                (None, None) => {}
            }
        }
        changed
    }
}
