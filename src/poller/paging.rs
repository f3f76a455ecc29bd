//! Fetching pages, and cutting stamp-sorted records into commit chunks;
//! the strategies are in keyset.rs and walk.rs.
//!
//! The poller reaches the upstream only here, through [`Pages`]: the
//! upstream client ([`Upstream`]: HTTP, auth, retries, budget) in
//! production, a model upstream in the poller's fast tests
//! (`poller/tests`).

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;
use url::Url;

use super::{PollError, Poller};
use crate::config::FieldNames;
use crate::record::{Page, RejectedRecord, UpstreamRecord, parse_record};
use crate::store::{Refusal, StoreError};
use crate::upstream::{Upstream, UpstreamError};

/// Where a poller gets its pages: one list page of the delta since `sync`,
/// and its URL (for error messages).
#[async_trait::async_trait]
pub trait Pages: Send + Sync {
    /// Page `page` of the records above `sync`; transient failures are
    /// retried inside, so an error here fails the poll.
    async fn page(
        &self,
        resource: &str,
        sync: u64,
        page: u32,
        cancel: &CancellationToken,
    ) -> Result<Page, UpstreamError>;

    /// The list URL of one page.
    fn page_url(&self, resource: &str, sync: u64, page: u32) -> Url;
}

#[async_trait::async_trait]
impl Pages for Upstream {
    async fn page(
        &self,
        resource: &str,
        sync: u64,
        page: u32,
        cancel: &CancellationToken,
    ) -> Result<Page, UpstreamError> {
        Upstream::page(self, resource, sync, page, cancel).await
    }

    fn page_url(&self, resource: &str, sync: u64, page: u32) -> Url {
        Upstream::page_url(self, resource, sync, page)
    }
}

/// The most pages one walk fetches: what `count` records fill at
/// `page_size` (as many as the page came with, at most the one asked
/// for), plus a margin for rows added while walking (ten pages and
/// a tenth). Past it the upstream's `next` links go on forever.
fn most_pages(count: u64, page_size: u32) -> u32 {
    let pages = count.div_ceil(u64::from(page_size.max(1)));
    let most = pages + 10 + pages / 10;
    u32::try_from(most).unwrap_or(u32::MAX)
}

/// A page requested ahead, fetched and parsed while the previous page
/// commits.
pub(super) struct Ahead {
    sync: u64,
    page: u32,
    task: tokio_util::task::AbortOnDropHandle<Result<Parsed, UpstreamError>>,
}

/// A page with each of its records parsed (or rejected, with the reason).
pub(super) struct Parsed {
    pub count: u64,
    pub more: bool,
    pub rows: Vec<Result<UpstreamRecord, RejectedRecord>>,
}

impl Parsed {
    fn of(page: Page, fields: &FieldNames) -> Parsed {
        Parsed {
            count: page.count,
            more: page.next.is_some(),
            rows: (page.results.into_iter())
                .map(|raw| parse_record(raw, fields))
                .collect(),
        }
    }
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
        let request = (self.upstream).page(&self.table.resource, sync, page, cancel);
        let p = self.unless_lease_lost(request).await?;
        self.counted(sync, page, p.count, p.results.len())?;
        Ok(p)
    }

    /// Starts fetching page `page` of `sync` in the background, and parsing
    /// its records, so both happen while the caller commits the page before
    /// it; the caller takes it with [`Self::fetch_parsed`] (dropped, it is
    /// aborted).
    pub(super) fn fetch_ahead(&self, sync: u64, page: u32, cancel: &CancellationToken) -> Ahead {
        let (upstream, resource) = (self.upstream.clone(), self.table.resource.clone());
        let (cancel, fields) = (cancel.clone(), self.settings.fields.clone());
        let request = async move {
            let p = upstream.page(&resource, sync, page, &cancel).await?;
            Ok(Parsed::of(p, &fields))
        };
        let task = tokio::spawn(tracing::Instrument::in_current_span(request));
        Ahead {
            sync,
            page,
            task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    /// Page `page` of `sync`, parsed: the one fetched ahead when it is that
    /// page, else fetched now.
    pub(super) async fn fetch_parsed(
        &self,
        sync: u64,
        page: u32,
        ahead: Option<Ahead>,
        cancel: &CancellationToken,
    ) -> Result<Parsed, PollError> {
        let Some(a) = ahead.filter(|a| (a.sync, a.page) == (sync, page)) else {
            let p = self.fetch(sync, page, cancel).await?;
            return Ok(Parsed::of(p, &self.settings.fields));
        };
        if cancel.is_cancelled() {
            return Err(PollError::Cancelled);
        }
        let taken = async {
            a.task.await.unwrap_or_else(|e| {
                let url = self.upstream.page_url(&self.table.resource, sync, page);
                Err(UpstreamError::Transport {
                    url: url.to_string(),
                    detail: format!("the page's fetch failed: {e}"),
                })
            })
        };
        let p = self.unless_lease_lost(taken).await?;
        self.counted(sync, page, p.count, p.rows.len())?;
        Ok(p)
    }

    /// A page's answer, unless the lease is lost first: a page slower than
    /// the lease is fine while the lease is renewed; once it is lost, the
    /// walk stops at once.
    async fn unless_lease_lost<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, PollError> {
        Ok(match &self.lease {
            Some(lease) => tokio::select! {
                p = request => p?,
                () = lease.lost() => return Err(StoreError::refused(&self.table, Refusal::LeaseLost).into()),
            },
            None => request.await?,
        })
    }

    /// Counts a page of `listed` rows fetched, and refuses page numbers
    /// past what `count` records fill: an upstream whose `next` links go on
    /// forever.
    fn counted(&self, sync: u64, page: u32, count: u64, listed: usize) -> Result<(), PollError> {
        self.status.pages.fetch_add(1, Ordering::Relaxed);
        self.status
            .fetched
            .fetch_add(listed as u64, Ordering::Relaxed);
        // Pages as this one came: an upstream may cap page_size lower.
        let per_page = u32::try_from(listed).unwrap_or(u32::MAX);
        let most = most_pages(count, per_page.clamp(1, self.settings.page_size));
        if page > most {
            let url = self.upstream.page_url(&self.table.resource, sync, page);
            return Err(PollError::Endless {
                url: url.to_string(),
                count,
                most,
            });
        }
        Ok(())
    }
}

/// Stamp-sorted records in chunks of about `size` (the store's
/// [`crate::store::Store::append_chunk`]), never splitting the rows of one
/// stamp: the cursor is the stream's last stamp, so a poll stopped between
/// chunks must not leave a stamp half appended.
pub(super) fn stamp_chunks(
    records: &[UpstreamRecord],
    size: usize,
) -> impl Iterator<Item = &[UpstreamRecord]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = size.min(rest.len());
        let last = rest[end - 1].stamp;
        // Stamp 0 marks records found gone (late events that never move
        // the cursor): they may be split like any others.
        if last != 0 {
            end += rest[end..].iter().take_while(|r| r.stamp == last).count();
        }
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = crate::store::APPEND_CHUNK;

    #[test]
    fn a_chunk_takes_every_row_of_its_last_stamp() {
        let rows: Vec<UpstreamRecord> = (0..CHUNK + 3)
            .map(|i| UpstreamRecord {
                id: format!("r{i}"),
                stamp: if i < CHUNK - 1 { i as u64 } else { 1000 },
                deleted: false,
                raw: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            })
            .collect();
        let sizes: Vec<usize> = stamp_chunks(&rows, CHUNK).map(<[_]>::len).collect();
        assert_eq!(sizes, [CHUNK + 3]);
        let sizes: Vec<usize> = stamp_chunks(&rows[..CHUNK - 1], CHUNK)
            .map(<[_]>::len)
            .collect();
        assert_eq!(sizes, [CHUNK - 1]);
    }

    #[test]
    fn records_found_gone_are_chunked_like_any_others() {
        let gone: Vec<UpstreamRecord> = (0..2 * CHUNK + 1)
            .map(|i| UpstreamRecord {
                id: format!("r{i}"),
                stamp: 0,
                deleted: true,
                raw: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            })
            .collect();
        let sizes: Vec<usize> = stamp_chunks(&gone, CHUNK).map(<[_]>::len).collect();
        assert_eq!(sizes, [CHUNK, CHUNK, 1]);
    }
}
