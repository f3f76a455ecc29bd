//! Fetching pages, and the `keyset` strategy; `pages` is in walk.rs.

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::record::{Page, UpstreamRecord, parse_record};
use crate::store::StoreError;

/// The most pages one walk fetches: what `count` records fill at
/// `page_size` (as many as the page came with, at most the one asked
/// for), plus a margin for rows added while walking (ten pages and
/// a tenth). Past it the upstream's `next` links go on forever.
fn most_pages(count: u64, page_size: u32) -> u32 {
    let pages = count.div_ceil(u64::from(page_size.max(1)));
    let most = pages + 10 + pages / 10;
    u32::try_from(most).unwrap_or(u32::MAX)
}

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
        // Pages as this one came: an upstream may cap page_size lower.
        let per_page = u32::try_from(p.results.len()).unwrap_or(u32::MAX);
        let most = most_pages(p.count, per_page.clamp(1, self.settings.page_size));
        if page > most {
            let url = self.upstream.page_url(&self.target.resource, sync, page);
            return Err(PollError::Endless {
                url: url.to_string(),
                count: p.count,
                most,
            });
        }
        Ok(p)
    }

    /// `keyset`: every page is a fresh `sync=<highest stamp so far>` query,
    /// verified ascending and committed as it arrives, so memory stays flat
    /// and rows shifting between pages cannot cause skips.
    pub(super) async fn keyset(
        &mut self,
        report: &mut PollReport,
        snapshot: bool,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let fields = self.settings.fields.clone();
        let mut sync = report.sync;
        let (mut first_count, mut seen_max) = (None, 0);
        loop {
            let page = self.fetch(sync, 1, cancel).await?;
            report.pages += 1;
            first_count.get_or_insert(page.count);
            let more = page.next.is_some();
            let mut records: Vec<UpstreamRecord> = Vec::with_capacity(page.results.len());
            for raw in page.results {
                match parse_record(raw, &fields) {
                    Ok(r) => {
                        let prev = records.last().map_or(sync, |l| l.stamp);
                        if r.stamp < prev || r.stamp <= sync {
                            return Err(PollError::NotAscending {
                                sync,
                                page: report.pages,
                                stamp: r.stamp,
                                prev,
                            });
                        }
                        // The same row twice (a join upstream): keep one.
                        if !records
                            .last()
                            .is_some_and(|l| l.stamp == r.stamp && l.id == r.id)
                        {
                            records.push(r);
                        }
                    }
                    Err(rej) => self.reject(rej, report).await?,
                }
            }
            report.fetched += records.len() as u64;
            seen_max = records.last().map_or(seen_max, |r| r.stamp.max(seen_max));
            self.commit(&records, snapshot, report, cancel).await?;
            let next = next_sync(sync, &records);
            if !more || next == sync {
                if more {
                    tracing::warn!(target = %self.target, sync, "a keyset page held no usable stamp; stopping this poll");
                }
                // Pages are committed as they come: what a reset upstream
                // showed was older than the index, or new records.
                return (self.check_upstream(report, first_count.unwrap_or(0), seen_max)).await;
            }
            sync = next;
        }
    }
}

/// The `sync` of the page after a keyset page: its highest stamp, or one
/// below when two records share that stamp (per-table stamps should be
/// unique, but then the next query still returns the ones this page cut
/// off; the index drops what was already appended).
fn next_sync(sync: u64, records: &[UpstreamRecord]) -> u64 {
    match records {
        [.., a, b] if a.stamp == b.stamp => b.stamp - 1,
        [.., last] => last.stamp,
        [] => sync,
    }
}
