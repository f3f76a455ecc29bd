//! The poll lease, kept alive in the background while a poll runs.
//!
//! One upstream page can take longer than the lease (timeouts, retries, a
//! long `Retry-After`); renewing only between pages would let another
//! instance take the table mid-walk and the walk would be thrown away. So a
//! task renews the lease every third of its time-to-live for as long as
//! the poll runs. When the lease is lost (another holder has it, or no
//! renewal succeeded for a whole TTL) the poll stops before its next page
//! or chunk; appends are fenced by the store in any case.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::{Refusal, Store, StoreError, Table};

/// Renews a lease until dropped; says when it was lost.
pub(super) struct LeaseKeeper {
    lost: CancellationToken,
    table: Table,
    _stop: DropGuard,
}

impl LeaseKeeper {
    /// Starts renewing a lease `holder` has just taken.
    pub fn start(store: Arc<dyn Store>, table: Table, holder: String, ttl: Duration) -> Self {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let every = (ttl / 3).max(Duration::from_millis(10));
        tokio::spawn(renew(
            store,
            table.clone(),
            holder,
            ttl,
            every,
            lost.clone(),
            stop.clone(),
        ));
        LeaseKeeper {
            lost,
            table,
            _stop: stop.drop_guard(),
        }
    }

    /// Ok while the lease is held.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.lost.is_cancelled() {
            Err(StoreError::refused(&self.table, Refusal::LeaseLost))
        } else {
            Ok(())
        }
    }

    /// Completes when the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }
}

async fn renew(
    store: Arc<dyn Store>,
    table: Table,
    holder: String,
    ttl: Duration,
    every: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match store.lease(&table, &holder, ttl).await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => break,
            Err(e) if renewed.elapsed() >= ttl => {
                tracing::warn!(table = %table, error = %e, "cannot renew the poll lease; stopping this poll");
                break;
            }
            Err(e) => {
                tracing::debug!(table = %table, error = %e, "lease renewal failed; retrying")
            }
        }
    }
    tracing::warn!(table = %table, "the poll lease was lost; this poll stops and appends nothing more");
    lost.cancel();
}
