//! The two paging strategies of DESIGN §2 step 2.

use std::{collections::HashMap, sync::atomic::Ordering};

use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::record::{Page, UpstreamRecord, parse_record};

impl Poller {
    async fn fetch(
        &self,
        sync: u64,
        page: u32,
        cancel: &CancellationToken,
    ) -> Result<Page, PollError> {
        if cancel.is_cancelled() {
            return Err(PollError::Cancelled);
        }
        let p = self
            .upstream
            .page(&self.target.resource, sync, page, cancel)
            .await?;
        self.status.pages.fetch_add(1, Ordering::Relaxed);
        self.status
            .fetched
            .fetch_add(p.results.len() as u64, Ordering::Relaxed);
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
        let fields = self.upstream.source().settings.fields.clone();
        let mut sync = report.sync;
        loop {
            let page = self.fetch(sync, 1, cancel).await?;
            report.pages += 1;
            let more = page.next.is_some();
            let mut records = Vec::with_capacity(page.results.len());
            let mut prev = sync;
            for raw in page.results {
                match parse_record(raw, &fields) {
                    Ok(r) if r.stamp <= prev => {
                        return Err(PollError::NotAscending {
                            sync,
                            page: report.pages,
                            stamp: r.stamp,
                            prev,
                        });
                    }
                    Ok(r) => {
                        prev = r.stamp;
                        records.push(r);
                    }
                    Err(rej) => self.reject(rej, report).await?,
                }
            }
            report.fetched += records.len() as u64;
            self.commit(&records, snapshot, report, cancel).await?;
            if !more || prev == sync {
                if more {
                    tracing::warn!(target = %self.target, sync, "a keyset page held no usable stamp; stopping this poll");
                }
                return Ok(());
            }
            sync = prev;
        }
    }

    /// `pages`: walk `page=1..` to the end, keeping the union of walks
    /// (latest version per record), and walk again while the union holds
    /// fewer records than the upstream counted: offset paging over a
    /// changing set skips rows. Then commit the union in stamp order.
    pub(super) async fn pages(
        &mut self,
        report: &mut PollReport,
        snapshot: bool,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let settings = self.upstream.source().settings.clone();
        let mut union: HashMap<String, UpstreamRecord> = HashMap::new();
        let mut rejected_raw = std::collections::HashSet::new();
        loop {
            report.walks += 1;
            let mut page_no = 1;
            let count = loop {
                let page = self.fetch(report.sync, page_no, cancel).await?;
                report.pages += 1;
                let (count, more) = (page.count, page.next.is_some() && !page.results.is_empty());
                for raw in page.results {
                    match parse_record(raw, &settings.fields) {
                        Ok(r) => match union.get(&r.id) {
                            Some(have) if have.stamp >= r.stamp => {}
                            _ => {
                                union.insert(r.id.clone(), r);
                            }
                        },
                        Err(rej) => {
                            if rejected_raw.insert(rej.raw.clone()) {
                                self.reject(rej, report).await?;
                            }
                        }
                    }
                }
                if union.len() > settings.max_delta_records {
                    return Err(PollError::TooLarge {
                        sync: report.sync,
                        limit: settings.max_delta_records,
                    });
                }
                if !more {
                    break count;
                }
                self.keep_lease().await?;
                page_no += 1;
            };
            let seen = (union.len() + rejected_raw.len()) as u64;
            if seen >= count {
                break;
            }
            if report.walks >= settings.max_walks {
                return Err(PollError::Unstable {
                    walks: report.walks,
                    seen,
                    count,
                });
            }
            tracing::info!(target = %self.target, walk = report.walks, seen, count,
                "rows shifted during the page walk; walking again");
        }
        let mut records: Vec<UpstreamRecord> = union.into_values().collect();
        records.sort_unstable_by_key(|r| r.stamp);
        report.fetched = records.len() as u64;
        self.commit(&records, snapshot, report, cancel).await
    }
}
