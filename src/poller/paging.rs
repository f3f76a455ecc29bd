//! Fetching pages; the strategies are in keyset.rs and walk.rs.

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::{PollError, Poller};
use crate::record::Page;
use crate::store::StoreError;

impl Poller {
    pub(super) async fn fetch(
        &self,
        sync: u64,
        page: u32,
        cancel: &CancellationToken,
    ) -> Result<Page, PollError> {
        if cancel.is_cancelled() {
            return Err(PollError::Cancelled);
        }
        let request = self
            .upstream
            .page(&self.target.resource, sync, page, cancel);
        let p = match &self.lease {
            // A page slower than the lease is fine while the lease is renewed;
            // once it is lost, the walk stops at once.
            Some(lease) => tokio::select! {
                p = request => p?,
                () = lease.lost() => return Err(StoreError::LeaseLost(self.target.to_string()).into()),
            },
            None => request.await?,
        };
        self.status.pages.fetch_add(1, Ordering::Relaxed);
        self.status
            .fetched
            .fetch_add(p.results.len() as u64, Ordering::Relaxed);
        Ok(p)
    }
}
