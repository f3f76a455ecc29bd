//! Contract breaks the polls and sweeps detect and report (docs/sync.md,
//! "What the relay detects"): rows removed (a `count` that shrinks for
//! one `sync`, records a sweep no longer finds), stamps that go back
//! (counted by the append), and stamps far sparser than the records
//! counted (a counter shared with other tables). Each is logged naming the
//! table, counted in its own metric and marked on the table's status; the
//! upstream reset, the biggest break, is in rebase.rs.

use std::collections::HashSet;

use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::{config::HardDeletes, store::alerts::Alert};

/// A table whose stamps above `sync` outnumber its records more than this
/// many times over is taken as sharing its counter: per-table stamps are
/// each a version of one of the table's records, and few tables keep a
/// hundred versions of every record.
const SPARSE_FACTOR: u64 = 100;

/// Whether `count` records with stamps in `(sync, top]` are far sparser
/// than a counter of their own would give.
pub(super) fn sparse(sync: u64, top: u64, count: u64) -> bool {
    count >= 10 && top.saturating_sub(sync) > SPARSE_FACTOR * count
}

impl Poller {
    /// A page counted fewer records above `sync` than an earlier page of
    /// the same walks did: records were removed (they are never, by the
    /// contract), so their deletes will never show as `deleted`.
    pub(super) fn count_shrank(&self, sync: u64, count: u64, before: u64) {
        tracing::warn!(table = %self.table, sync, count, before,
            "the upstream's count for one sync shrank during a poll: rows were removed (hard deletes), which no \
             event announces; a reconcile sweep lists them (hard_deletes = \"emit\" sends them as deleted)");
        self.alert(Alert::CountShrank, 1);
    }

    /// After a complete sweep that returned `ids`: the records the index
    /// holds (not deleted) that the upstream no longer returns, reported,
    /// and with `hard_deletes = "emit"` appended as `deleted` events with
    /// stamp 0 (docs/events.md), so the next sweep does not list them again.
    pub(super) async fn hard_deletes(
        &mut self,
        ids: &HashSet<String>,
        cancel: &CancellationToken,
    ) -> Result<u64, PollError> {
        let gone = self.gone(ids).await?;
        if gone.is_empty() {
            return Ok(0);
        }
        let some: Vec<&str> = gone.iter().take(5).map(|r| r.id.as_str()).collect();
        let emit = self.settings.hard_deletes == HardDeletes::Emit;
        tracing::warn!(table = %self.table, gone = gone.len(), first = ?some, emit,
            "the reconcile sweep found records the upstream no longer returns (hard deletes, which no poll \
             can see); hard_deletes = \"emit\" appends a deleted event with stamp 0 for each");
        self.alert(Alert::HardDeletes, gone.len() as u64);
        if emit {
            self.rebasing = true;
            let result = (self.commit(&gone, false, &mut PollReport::default(), cancel)).await;
            self.rebasing = false;
            result?;
        }
        Ok(gone.len() as u64)
    }

    /// Warns when a walk from `sync` shows stamps far sparser than its
    /// records (see [`sparse`]).
    pub(super) fn check_density(&self, sync: u64, top: u64, count: u64) {
        if sparse(sync, top, count) {
            tracing::warn!(table = %self.table, sync, top, count,
                "the table's stamps are far sparser than its records: its stamp counter looks shared with other \
                 tables, which the per-table settle bounds do not expect (docs/sync.md, \"What the relay detects\")");
            self.alert(Alert::SparseStamps, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps_are_sparse_when_they_outnumber_records_a_hundred_times() {
        assert!(super::sparse(0, 50_000, 40));
        assert!(!super::sparse(0, 3_000, 40), "75 versions per record");
        assert!(!super::sparse(100, 100_000, 5), "too few records to tell");
    }
}
