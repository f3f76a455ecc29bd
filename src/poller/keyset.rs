//! The `keyset` strategy, for upstreams sorted by stamp: every page is a
//! fresh `sync=<stamp>` query, verified ascending and committed as it
//! arrives, so memory stays flat and rows shifting between pages cannot
//! cause skips. The reasoning is in docs/sync.md ("Keyset"); in short:
//!
//! - **Cap.** A poll reads up to the highest stamp the upstream showed when
//!   it began (its last page) and leaves later stamps to the next poll. A
//!   stamp that commits late during the poll is then within `overlap` of
//!   that cap, so the next poll's window re-reads it, however long this
//!   poll chased a burst of writes.
//! - **Shared stamps.** A full page may end inside a run of rows sharing
//!   one stamp, so its last stamp is read again by the next page (`sync =
//!   last - 1`) and only the rows below it are committed. A page whose rows
//!   all share one stamp cannot move `sync` that way; that stamp is read
//!   with offset pages of `sync = stamp - 1` (see [`Poller::one_stamp`]).
//!   A commit never splits a stamp (see `commit`), so the cursor, the
//!   stream's last stamp, always has all of its rows.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::record::UpstreamRecord;

/// One keyset answer, parsed and verified ascending.
struct KeysetPage {
    records: Vec<UpstreamRecord>,
    /// Rows listed, rejected ones included: the upstream's page length.
    listed: usize,
    count: u64,
    more: bool,
}

/// What to do with a keyset page.
#[derive(Debug, PartialEq)]
enum Step {
    /// Commit the first `n` records; the poll is done.
    Done(usize),
    /// Commit the first `commit` records and query from `sync`.
    Next { commit: usize, sync: u64 },
    /// Every row of the full page has this stamp: read it with offset pages.
    OneStamp(u64),
}

/// The step after a page of `records` (ascending), reading up to `cap`.
fn plan(cap: u64, records: &[UpstreamRecord], more: bool) -> Step {
    let within = records.partition_point(|r| r.stamp <= cap);
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Step::Done(0);
    };
    // Rows above the cap follow every row at or below it, so the stamps
    // below the first of them are complete on this page.
    if !more || within < records.len() {
        return Step::Done(within);
    }
    if first.stamp == last.stamp {
        return Step::OneStamp(last.stamp);
    }
    Step::Next {
        commit: records.partition_point(|r| r.stamp < last.stamp),
        sync: last.stamp - 1,
    }
}

impl Poller {
    /// `keyset`: pages from `report.sync` up to the cap, committed as they
    /// arrive.
    pub(super) async fn keyset(
        &mut self,
        report: &mut PollReport,
        snapshot: bool,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let mut sync = report.sync;
        let first = self.keyset_page(sync, 1, report, cancel).await?;
        let shown = first.records.last().map_or(0, |r| r.stamp);
        if !first.more {
            // One answer is a snapshot: nothing later was passed unseen.
            self.check_upstream(report, first.count, Some(shown))
                .await?;
            report.fetched += first.records.len() as u64;
            return self.commit(&first.records, snapshot, report, cancel).await;
        }
        let cap = self.keyset_cap(sync, &first, report, cancel).await?;
        // The cap is the highest stamp the upstream shows: an upstream that
        // went back in time is caught before anything of it is committed.
        self.check_upstream(report, first.count, Some(cap.max(shown)))
            .await?;
        let mut ahead = None;
        loop {
            let page = self
                .keyset_page_of(sync, 1, ahead.take(), report, cancel)
                .await?;
            let (commit, next) = match plan(cap, &page.records, page.more) {
                Step::Done(n) => {
                    if page.records.is_empty() && page.more {
                        tracing::warn!(table = %self.table, sync, "a keyset page held no usable stamp; stopping this poll");
                    }
                    (page.records[..n].to_vec(), None)
                }
                Step::Next { commit, sync } => (page.records[..commit].to_vec(), Some(sync)),
                Step::OneStamp(stamp) => {
                    let rows = self.one_stamp(stamp, report, cancel).await?;
                    (rows, Some(stamp))
                }
            };
            report.fetched += commit.len() as u64;
            // The next page downloads while this one commits.
            ahead = next.map(|sync| self.fetch_ahead(sync, 1, cancel));
            self.commit(&commit, snapshot, report, cancel).await?;
            match next {
                Some(next) => sync = next,
                None => return Ok(()),
            }
        }
    }

    /// The highest stamp on the last page of `sync`, whose first page is
    /// `first`: a stamp the upstream showed when the poll began.
    async fn keyset_cap(
        &mut self,
        sync: u64,
        first: &KeysetPage,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<u64, PollError> {
        let below = first.records.last().map_or(sync, |r| r.stamp);
        let pages = first.count.div_ceil(first.listed.max(1) as u64);
        let Ok(last) = u32::try_from(pages) else {
            return Ok(below);
        };
        if last <= 1 {
            return Ok(below);
        }
        let page = self.keyset_page(sync, last, report, cancel).await?;
        Ok(page.records.last().map_or(below, |r| r.stamp.max(below)))
    }

    /// Every row at `stamp`, read with offset pages of `sync = stamp - 1`
    /// until a row above it shows. Rows only leave a stamp (an edit takes a
    /// new one above the top), and a row leaving during the walk can shift
    /// another past a page boundary. A leave raises the count above `stamp`
    /// but not the count above `stamp - 1`, while a create raises both; so
    /// when the count above `stamp` before and after the walk grew by what
    /// the walk's own counts grew by, nothing left and the walk is complete.
    /// Otherwise it walks again, at most `max_walks` times.
    async fn one_stamp(
        &mut self,
        stamp: u64,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<Vec<UpstreamRecord>, PollError> {
        let mut rows: HashMap<String, UpstreamRecord> = HashMap::new();
        let mut before = self.keyset_page(stamp, 1, report, cancel).await?.count;
        let max_walks = self.settings.max_walks;
        for _ in 0..max_walks {
            let (mut page_no, mut counts) = (1, None);
            let last_count = loop {
                let page = self.keyset_page(stamp - 1, page_no, report, cancel).await?;
                counts.get_or_insert(page.count);
                let past = page.records.last().is_some_and(|r| r.stamp > stamp);
                for r in page.records.into_iter().filter(|r| r.stamp == stamp) {
                    rows.insert(r.id.clone(), r);
                }
                if past || !page.more {
                    break page.count;
                }
                page_no += 1;
            };
            let after = self.keyset_page(stamp, 1, report, cancel).await?.count;
            let walk_grew = last_count as i128 - counts.unwrap_or(last_count) as i128;
            if after as i128 - before as i128 == walk_grew {
                let mut rows: Vec<UpstreamRecord> = rows.into_values().collect();
                rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                return Ok(rows);
            }
            before = after;
        }
        Err(PollError::Unstable {
            walks: max_walks,
            seen: rows.len() as u64,
            count: before,
        })
    }

    /// Fetches page `page_no` of `sync`, parses it, and verifies it
    /// ascending; rejected records go to the reject stream.
    async fn keyset_page(
        &mut self,
        sync: u64,
        page_no: u32,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<KeysetPage, PollError> {
        self.keyset_page_of(sync, page_no, None, report, cancel)
            .await
    }

    /// [`Self::keyset_page`], taking the page from `ahead` when it was
    /// fetched ahead.
    async fn keyset_page_of(
        &mut self,
        sync: u64,
        page_no: u32,
        ahead: Option<super::paging::Ahead>,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<KeysetPage, PollError> {
        let page = self.fetch_parsed(sync, page_no, ahead, cancel).await?;
        report.pages += 1;
        let (count, more, listed) = (page.count, page.more, page.rows.len());
        let mut records: Vec<UpstreamRecord> = Vec::with_capacity(listed);
        for row in page.rows {
            match row {
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
        Ok(KeysetPage {
            records,
            listed,
            count,
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(stamps: &[u64]) -> Vec<UpstreamRecord> {
        stamps
            .iter()
            .enumerate()
            .map(|(i, &stamp)| UpstreamRecord {
                id: format!("r{i}"),
                stamp,
                deleted: false,
                raw: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            })
            .collect()
    }

    #[test]
    fn a_full_page_reads_its_last_stamp_again() {
        // Stamps 1,1,2,2 at page size 3: the second row at 2 is on the next page.
        assert_eq!(
            plan(9, &recs(&[1, 1, 2]), true),
            Step::Next { commit: 2, sync: 1 }
        );
        assert_eq!(plan(9, &recs(&[2, 2]), false), Step::Done(2));
    }

    #[test]
    fn a_page_of_one_stamp_goes_to_offset_pages() {
        assert_eq!(plan(9, &recs(&[4, 4, 4]), true), Step::OneStamp(4));
        assert_eq!(plan(9, &recs(&[]), true), Step::Done(0));
    }

    #[test]
    fn the_cap_ends_the_poll_inside_a_page() {
        assert_eq!(plan(5, &recs(&[3, 5, 5, 6]), true), Step::Done(3));
        assert_eq!(
            plan(5, &recs(&[3, 4, 5]), true),
            Step::Next { commit: 2, sync: 4 }
        );
    }
}
