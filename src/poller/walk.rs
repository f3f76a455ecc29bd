//! The `pages` strategy: walk `page=1..` over an unsorted, changing set,
//! then settle, so that no version is lost whatever `overlap` is.
//!
//! **Completeness.** Stamps only grow and records are never removed, so the
//! set "stamp > sync" only gains members. A walk answered by its last page
//! at time T saw at most the records of that set at T; when the union of
//! the walks (plus rejected records) holds the `count` that page promised,
//! it holds every record of the set at T, each at its version when last
//! seen.
//!
//! **Settle.** A record edited after the walk last saw it has a version the
//! union lacks, with a stamp above the table's top when that page was
//! answered. Two lower bounds of that top are known: the highest stamp
//! any answer of this poll showed up to that page, and `sync + count -
//! rejected` (the count's records have distinct stamps above `sync`). The
//! walk's `floor` is the smallest such bound over the pages where the
//! union's records were last seen (a record seen again later has a higher
//! one). Every version current at the end of a complete walk with a stamp
//! in `(sync, floor]` is in its union. So the poll re-walks from the floor,
//! and again from that walk's floor, until a walk is answered by one page:
//! one answer is a snapshot of everything above its `sync`, and versions
//! written after it take stamps above every stamp seen. Only then may the
//! cursor pass the floor. If the upstream changes too fast for that (more
//! than `max_walks` settle walks, or a settle walk that cannot see its
//! whole set within `max_walks` walks), the poll commits only what lies at
//! or below the last floor it proved, and the next poll continues from
//! there: never a lost version, and still progress. Under steady creates
//! behind the walk the union may never reach the last count; a union that
//! holds the whole set of some walk's start is complete up to that page's
//! bound instead (`Progress::holds_a_walk_start`).

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::record::{RejectedRecord, UpstreamRecord, parse_record};

/// Records by id, each at the highest stamp seen.
type Union = HashMap<String, UpstreamRecord>;

/// Keeps the newer of two versions of a record.
fn keep_newest(union: &mut Union, r: UpstreamRecord) {
    match union.get(&r.id) {
        Some(have) if have.stamp >= r.stamp => {}
        _ => {
            union.insert(r.id.clone(), r);
        }
    }
}

/// Rejected records counted for the completeness check. A rejected record
/// with an id is counted once whatever its JSON, so one that changes
/// between walks cannot hide a skipped record; one without an id cannot be
/// told apart from another, so those count as the most any one walk saw.
#[derive(Debug, Default)]
pub(super) struct RejectTally {
    ids: HashSet<String>,
    idless_this_walk: HashSet<String>,
    idless_most: usize,
}

impl RejectTally {
    pub fn see(&mut self, r: &RejectedRecord) {
        match &r.id {
            Some(id) => {
                self.ids.insert(id.clone());
            }
            None => {
                self.idless_this_walk.insert(r.raw.clone());
            }
        }
    }

    pub fn end_walk(&mut self) {
        self.idless_most = self.idless_most.max(self.idless_this_walk.len());
        self.idless_this_walk.clear();
    }

    pub fn count(&self) -> u64 {
        (self.ids.len() + self.idless_most.max(self.idless_this_walk.len())) as u64
    }
}

/// What the walks from one `sync` saw, once complete.
pub(super) struct WalkSet {
    pub union: Union,
    /// A stamp at or below the top when each record was last seen.
    pub floor: u64,
    /// The last walk was one page: a snapshot of everything above `sync`.
    one_page: bool,
    /// The last walk's `count`.
    count: u64,
    /// Every row the last walk counted was seen: a stamp missing from the
    /// union is missing upstream.
    pub complete: bool,
}

/// Records by id with the page (of [`Sightings`]) where each was last seen.
type Seen = HashMap<String, (UpstreamRecord, usize)>;

/// Per page answered: the highest stamp any answer of the poll had shown
/// by then, and the page's `count`.
#[derive(Debug, Default)]
pub(super) struct Sightings {
    pages: Vec<(u64, u64)>,
}

impl Sightings {
    /// Notes a page; returns its number.
    pub fn page(&mut self, seen_max: u64, count: u64) -> usize {
        self.pages.push((seen_max, count));
        self.pages.len() - 1
    }

    /// A lower bound of the top when page `i` was answered. The count
    /// bounds it only while stamps are unique: once two records were seen
    /// sharing one (`shared`), `count` rows may sit on fewer stamps.
    pub fn bound(&self, i: usize, sync: u64, rejected: u64, shared: bool) -> u64 {
        let (seen_max, count) = self.pages[i];
        if shared {
            return seen_max;
        }
        seen_max.max(sync + count.saturating_sub(rejected))
    }
}

impl Poller {
    /// Walks from `report.sync`, settles, and commits in stamp order.
    pub(super) async fn pages(
        &mut self,
        report: &mut PollReport,
        snapshot: bool,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let settings = self.settings.clone();
        let mut all = Union::new();
        let (mut sync, mut seen_max) = (report.sync, 0);
        let mut unsettled = None;
        loop {
            let pages_before = report.pages;
            let set = self.walk_set(sync, &mut seen_max, report, cancel).await;
            if sync != report.sync {
                report.settle_pages += report.pages - pages_before;
            }
            let set = match set {
                // What lies at or below this walk's `sync` is settled.
                Err(PollError::Unstable { .. }) if sync != report.sync => {
                    unsettled = Some(sync);
                    break;
                }
                set => set?,
            };
            if sync == report.sync {
                let shown = set.complete.then_some(seen_max);
                self.check_upstream(report, set.count, shown).await?;
                self.check_density(sync, seen_max, set.count);
            }
            set.union
                .into_values()
                .for_each(|r| keep_newest(&mut all, r));
            if all.len() > settings.max_delta_records {
                return Err(PollError::TooLarge {
                    sync: report.sync,
                    limit: settings.max_delta_records,
                });
            }
            if set.one_page {
                break;
            }
            if report.settles >= settings.max_walks || set.floor <= sync {
                unsettled = Some(set.floor);
                break;
            }
            report.settles += 1;
            sync = set.floor;
        }
        let mut records: Vec<UpstreamRecord> = all.into_values().collect();
        if let Some(floor) = unsettled {
            tracing::warn!(table = %self.table, floor, settles = report.settles,
                "the upstream changed too fast to settle; committing up to the floor, the next poll continues");
            records.retain(|r| r.stamp <= floor);
            report.unsettled = true;
        }
        records.sort_unstable_by_key(|r| r.stamp);
        report.fetched = records.len() as u64;
        self.commit(&records, snapshot, report, cancel).await
    }

    /// Walks `page=1..` from `sync` until the union holds the records the
    /// last page counted, at most `max_walks` times. `seen_max` is the
    /// highest stamp this poll has seen.
    pub(super) async fn walk_set(
        &mut self,
        sync: u64,
        seen_max: &mut u64,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<WalkSet, PollError> {
        let max_walks = self.settings.max_walks;
        let mut progress = Progress::default();
        let mut walks = 0;
        loop {
            walks += 1;
            report.walks += 1;
            let (count, pages) = self
                .walk(sync, &mut progress, seen_max, report, cancel)
                .await?;
            progress.tally.end_walk();
            let seen = progress.seen();
            if seen >= count {
                let mut set = progress.into_set(sync, pages == 1, count, self.shared_stamps);
                set.complete = true;
                return Ok(set);
            }
            if let Some(cap) = progress.holds_a_walk_start(sync, self.shared_stamps) {
                // Not every record counted at the end was seen, but every
                // one of an earlier walk's start was: the floor stops there.
                let mut set = progress.into_set(sync, false, count, self.shared_stamps);
                set.floor = set.floor.min(cap);
                return Ok(set);
            }
            if walks >= max_walks {
                return Err(PollError::Unstable { walks, seen, count });
            }
            tracing::info!(table = %self.table, walk = walks, seen, count,
                "rows shifted during the page walk; walking again");
        }
    }

    /// One walk from page 1 to the last; returns the last page's `count`
    /// and the number of pages.
    async fn walk(
        &mut self,
        sync: u64,
        progress: &mut Progress,
        seen_max: &mut u64,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<(u64, u32), PollError> {
        let settings = self.settings.clone();
        let mut page_no = 1;
        loop {
            let page = self.fetch(sync, page_no, cancel).await?;
            report.pages += 1;
            let (count, more) = (page.count, page.next.is_some() && !page.results.is_empty());
            let mut records = Vec::with_capacity(page.results.len());
            for raw in page.results {
                match parse_record(raw, &settings.fields) {
                    Ok(r) => records.push(r),
                    Err(rej) => {
                        progress.tally.see(&rej);
                        self.reject(rej, report).await?;
                    }
                }
            }
            *seen_max = records.iter().map(|r| r.stamp).fold(*seen_max, u64::max);
            if count < progress.most_count && !progress.shrank {
                progress.shrank = true;
                self.count_shrank(sync, count, progress.most_count);
            }
            progress.most_count = progress.most_count.max(count);
            let at = progress.sightings.page(*seen_max, count);
            if page_no == 1 {
                progress.walk_starts.push(at);
            }
            for r in records {
                progress
                    .lowest
                    .entry(r.id.clone())
                    .and_modify(|s| *s = (*s).min(r.stamp))
                    .or_insert(r.stamp);
                if let Some(other) = progress.stamps.insert(r.stamp, r.id.clone())
                    && other != r.id
                    && !self.shared_stamps
                {
                    tracing::info!(table = %self.table, stamp = r.stamp,
                        "two records share a stamp; the page count no longer bounds the top");
                    self.shared_stamps = true;
                }
                sight(&mut progress.seen, r, at);
            }
            if progress.seen.len() > settings.max_delta_records {
                return Err(PollError::TooLarge {
                    sync,
                    limit: settings.max_delta_records,
                });
            }
            if !more {
                return Ok((count, page_no));
            }
            page_no += 1;
        }
    }
}

/// What the walks from one `sync` have seen so far.
#[derive(Default)]
struct Progress {
    seen: Seen,
    /// A record seen with each stamp, to notice stamps shared by two.
    stamps: HashMap<u64, String>,
    /// The lowest stamp each record was seen with.
    lowest: HashMap<String, u64>,
    /// The first page of each walk, in `sightings`.
    walk_starts: Vec<usize>,
    sightings: Sightings,
    tally: RejectTally,
    /// The highest `count` answered for this `sync`, and whether a lower
    /// one was seen since (rows removed: see breaks.rs).
    most_count: u64,
    shrank: bool,
}

impl Progress {
    /// Records and rejected records seen, for the completeness check.
    fn seen(&self) -> u64 {
        self.seen.len() as u64 + self.tally.count()
    }

    /// Whether the union holds every record that was above `sync` when
    /// some walk's first page was answered, though not all those counted
    /// at the end (steady creates behind the walk keep that from ever
    /// holding). Returns the page's bound of that moment's top (see
    /// [`Sightings::bound`]). A record seen with a stamp at or below it was in the
    /// set then; when there are as many as that page counted, the union
    /// holds the whole set of that moment, and every record missing from
    /// it has only versions above the bound. So the floor argument holds
    /// with the floor capped at the bound (docs/sync.md, "Settle").
    fn holds_a_walk_start(&self, sync: u64, shared: bool) -> Option<u64> {
        let rejected = self.tally.count();
        self.walk_starts
            .iter()
            .filter_map(|&at| {
                let bound = self.sightings.bound(at, sync, rejected, shared);
                let before = self.lowest.values().filter(|&&s| s <= bound).count();
                let count = self.sightings.pages[at].1;
                (before as u64 + rejected >= count).then_some(bound)
            })
            .max()
    }

    /// The complete walks as a set, with their floor.
    fn into_set(self, sync: u64, one_page: bool, count: u64, shared: bool) -> WalkSet {
        let rejected = self.tally.count();
        let floor = self
            .seen
            .values()
            .map(|&(_, at)| self.sightings.bound(at, sync, rejected, shared))
            .min()
            .unwrap_or(sync);
        WalkSet {
            union: self.seen.into_iter().map(|(id, (r, _))| (id, r)).collect(),
            floor,
            one_page,
            count,
            complete: false,
        }
    }
}

/// Notes that page `at` showed `r`: the newest version, seen last there.
fn sight(seen: &mut Seen, r: UpstreamRecord, at: usize) {
    match seen.get_mut(&r.id) {
        Some((have, last)) => {
            *last = at;
            if r.stamp > have.stamp {
                *have = r;
            }
        }
        None => {
            seen.insert(r.id.clone(), (r, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(id: Option<&str>, raw: &str) -> RejectedRecord {
        RejectedRecord {
            id: id.map(str::to_string),
            raw: raw.into(),
            reason: "bad stamp".into(),
        }
    }

    #[test]
    fn a_rejected_record_that_changes_between_walks_counts_once() {
        let mut t = RejectTally::default();
        t.see(&rejected(Some("a"), r#"{"uuid":"a","v":1}"#));
        t.see(&rejected(None, r#"{"v":1}"#));
        t.end_walk();
        t.see(&rejected(Some("a"), r#"{"uuid":"a","v":2}"#));
        t.see(&rejected(None, r#"{"v":2}"#));
        t.end_walk();
        assert_eq!(t.count(), 2, "one record with an id, one without");
        t.see(&rejected(None, r#"{"v":3}"#));
        t.see(&rejected(None, r#"{"v":4}"#));
        assert_eq!(t.count(), 3, "a walk that sees two id-less records");
    }

    #[test]
    fn the_bound_of_a_page_is_the_larger_lower_bound_of_the_top() {
        let mut s = Sightings::default();
        // Name order: the highest stamp seen so far.
        let a = s.page(950, 300);
        // Stamp order: the first page holds the lowest stamps; the count of
        // distinct stamps above sync says more.
        let b = s.page(150, 300);
        assert_eq!(s.bound(a, 100, 0, false), 950);
        assert_eq!(s.bound(b, 100, 0, false), 400);
        // Rejected records may have no stamp: they do not count.
        assert_eq!(s.bound(b, 100, 280, false), 150);
        // 300 rows may share fewer stamps: only what was seen bounds the top.
        assert_eq!(s.bound(b, 100, 0, true), 150);
    }

    #[test]
    fn a_record_seen_again_counts_where_it_was_seen_last() {
        let rec = |stamp: u64| UpstreamRecord {
            id: "a".into(),
            stamp,
            deleted: false,
            raw: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        };
        let mut seen = Seen::new();
        sight(&mut seen, rec(5), 0);
        sight(&mut seen, rec(4), 3);
        assert_eq!((seen["a"].0.stamp, seen["a"].1), (5, 3));
        sight(&mut seen, rec(9), 4);
        assert_eq!((seen["a"].0.stamp, seen["a"].1), (9, 4));
    }
}
