//! Store resets: a store that lost a table's data under a running relay.
//!
//! Redis restarted without persistence, a failover to an empty replica, a
//! mistaken `FLUSHALL`, or the embedded file replaced: the stream and the
//! record index are gone, so the next poll would see every record as a
//! fresh `created` change. Each table holds an epoch, a random value written
//! at its first use (`P:{s:r}:epoch`, or the `epochs` table of the embedded
//! store), which the poller keeps in memory. A poll that finds none, or
//! another one, says so loudly (an error log, `store_resets`, `/readyz`,
//! `GET /v1/resources`) and reloads the table as an initial load, whose
//! events say `snapshot=1`. Every append carries the epoch the poll began
//! with and the store refuses it under another one, so a poll that was
//! running when the data went cannot append changes it invented.
//!
//! Store failovers: a store that lost only its newest events (a Redis
//! failover to a replica that was behind, an older copy of the embedded
//! file). The epoch is the same, and the stream and the index rolled back
//! together. The store refuses the next append (store/highest.rs) after
//! raising the stream's ID again, so the lost IDs are never issued twice;
//! the poller says so and polls from the stream's real end until a poll
//! completes, and the lost versions come in as late events above every ID a
//! reader may hold (docs/sync.md, "Store failovers").

use std::sync::atomic::Ordering;

use super::{PollError, Poller};
use crate::{
    events::{StreamId, now_ms},
    store::{Refusal, alerts::Alert},
};

impl Poller {
    /// Compares the table's epoch in the store with the one this poller
    /// knows, writing one at first use; handles a reset when they differ.
    /// `stored` is the epoch the store holds now.
    pub(super) async fn check_epoch(&mut self, stored: Option<String>) -> Result<(), PollError> {
        if stored.is_some() && stored == self.epoch {
            return Ok(());
        }
        let now = match &stored {
            Some(e) => e.clone(),
            None => {
                let fresh = uuid::Uuid::new_v4().simple().to_string();
                self.store.init_epoch(&self.table, &fresh).await?
            }
        };
        if let Some(known) = self.epoch.replace(now.clone()) {
            self.reset(&known, stored.is_none(), &now);
        }
        Ok(())
    }

    /// The table lost its data: say so, and reload it as an initial load.
    fn reset(&mut self, known: &str, empty: bool, now: &str) {
        let what = if empty {
            "has no epoch (it is empty)"
        } else {
            "holds another epoch"
        };
        tracing::error!(table = %self.table, known, now, store = %self.store.describe(),
            "STORE RESET: the store {what} for this table; it lost the events and the record index \
             this relay wrote. Reloading the table as an initial load (snapshot=1); subscribers \
             should treat it as a fresh snapshot");
        self.metrics
            .store_resets
            .get_or_create(&crate::metrics::table_labels(&self.table))
            .inc();
        self.status.resets.fetch_add(1, Ordering::Relaxed);
        self.status.last_reset_ms.store(now_ms(), Ordering::Relaxed);
        self.status.reloading.store(true, Ordering::Relaxed);
        // An empty stream is now a table to load, not an empty table, and
        // its cursor is the stream's again.
        self.saw_success = false;
        self.known.forget();
        (self.era, self.era_loaded, self.resume) = (None, true, None);
    }
}

impl Poller {
    /// Reports a lost tail that refused an append of this poll or sweep.
    pub(super) fn note_failover<T>(&mut self, result: &Result<T, PollError>) {
        if let Err(PollError::Store(e)) = result
            && let Some(Refusal::Failover { top, highest }) = e.refusal()
        {
            self.failover(top, highest);
        }
    }

    /// The store lost the events from `top` to `highest`: say so, and poll
    /// from `top`'s stamp until a poll completes. The cursor (the stream's
    /// last ID) jumps to `highest`'s stamp at the first late event appended
    /// above it, so it cannot be trusted until then.
    pub(super) fn failover(&mut self, top: StreamId, highest: StreamId) {
        tracing::error!(table = %self.table, %top, %highest, store = %self.store.describe(),
            "STORE FAILOVER: the store lost the newest events this relay appended (its stream ends at {top}, \
             it had reached {highest}); a failover to a replica that was behind, or an older copy of the store. \
             Those IDs are not issued again: the lost versions are fetched again and appended as late events \
             above {highest}, so readers see them (possibly a second time) and skip nothing");
        self.alert(Alert::StoreFailover, 1);
        self.resume = Some(self.resume.map_or(top.stamp, |r| r.min(top.stamp)));
    }
}
