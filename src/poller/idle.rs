//! What keeps an idle poll cheap: nothing changed upstream, so the poll
//! costs `Store::begin_poll` (lease, epoch, last ID, loading flag and
//! reconcile request in one call), the upstream request, and the poll
//! status it writes; on Redis two commands in two round trips
//! (`tests/it/operations/idle.rs` counts them).
//!
//! The overlap window re-reads versions the index already holds, whose
//! append would only find them duplicates. The poller remembers the
//! versions it appended or found in the index, and the stream's last ID
//! when it did: while the stream still ends at that ID under the same
//! epoch, nothing else wrote to the table (another instance's append, a
//! reload, a store that lost data or a tail all move the last ID or the
//! epoch), so the index still holds each remembered version and a chunk of
//! only those is counted as duplicates without a store call. The record
//! count a `sync=0` window compares with (rebase.rs) is kept the same way.
//!
//! An append that returned may still be undone: the embedded store rolls
//! back its open transaction, every table's appends not yet committed,
//! when a commit or an append's writes fail (store/sqlite/append.rs). So
//! the memory is kept only when the stream ends, at the poll's end, at or
//! above the highest stamp this poll appended (an event's ID is never
//! below its version's stamp, and the stream's last ID never goes down);
//! else it is dropped, and the next poll sends those versions to the store,
//! which refuses them as a lost tail and has them appended again.

use std::collections::HashMap;

use crate::{events::StreamId, record::UpstreamRecord, table::Table};

/// Versions remembered per table: past this many the memory starts over.
const MAX_KNOWN: usize = 20_000;

#[derive(Debug, Default)]
pub(super) struct Known {
    /// The stream's last ID and the epoch when the versions below were
    /// last known to be in the index; none when nothing is known.
    at: Option<(StreamId, String)>,
    /// Record id -> the stamp of a version the index holds.
    versions: HashMap<String, u64>,
    /// Records the index holds with a stamp above 0 (rebase.rs).
    pub held: Option<u64>,
    /// The highest stamp of a chunk this poll appended events of.
    appended_top: u64,
}

impl Known {
    /// At a poll's start: whatever is remembered holds only if the stream
    /// still ends where this poller left it, under the same epoch.
    pub fn begin(&mut self, last: StreamId, epoch: &str) {
        self.appended_top = 0;
        if self.at.as_ref() != Some(&(last, epoch.to_string())) {
            self.forget();
        }
    }

    pub fn forget(&mut self) {
        self.at = None;
        self.versions.clear();
        self.held = None;
    }

    /// Whether the index holds every version of `chunk`.
    pub fn holds_all(&self, chunk: &[UpstreamRecord]) -> bool {
        self.at.is_some()
            && chunk
                .iter()
                .all(|r| self.versions.get(&r.id) == Some(&r.stamp))
    }

    /// After an append of `chunk` that `appended` events: when it found no
    /// regression (`clean`), the index holds each of its versions (appended
    /// now, or already).
    pub fn note(&mut self, chunk: &[UpstreamRecord], appended: u64, clean: bool) {
        if appended > 0 {
            self.held = None;
            let top = chunk.iter().map(|r| r.stamp).max().unwrap_or(0);
            self.appended_top = self.appended_top.max(top);
        }
        if !clean {
            return;
        }
        if self.versions.len() + chunk.len() > MAX_KNOWN {
            self.versions.clear();
        }
        for r in chunk {
            self.versions.insert(r.id.clone(), r.stamp);
        }
    }

    /// At a poll's successful end, the stream's last ID then; the memory is
    /// dropped when the stream ends below what this poll appended.
    pub fn end(&mut self, last: StreamId, epoch: &str, table: &Table) {
        if last.stamp < self.appended_top {
            tracing::warn!(%table, stream_end = %last, appended_up_to = self.appended_top,
                "the stream ends below what this poll appended (the store rolled its appends back, or its end could not be read); those versions go to the store again at the next poll");
            self.forget();
            return;
        }
        self.at = Some((last, epoch.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::Known;
    use crate::{events::StreamId, store::contract::record, table::Table};

    /// Versions a poll appended are remembered only while the stream ends
    /// at or above their stamps when the poll ends; a chunk with a
    /// regression is not remembered, but its appends count.
    #[test]
    fn appends_undone_before_the_end_are_not_remembered() {
        let t = Table::new("s", "r");
        let chunk = [record("a", 4), record("b", 7)];
        let mut known = Known::default();
        known.begin(StreamId::new(3, 0), "e");
        known.note(&chunk, 2, true);
        known.end(StreamId::new(7, 0), "e", &t);
        assert!(known.holds_all(&chunk), "the stream holds them");

        known.begin(StreamId::new(7, 0), "e");
        known.note(&[record("c", 9)], 1, true);
        known.end(StreamId::new(7, 0), "e", &t);
        assert!(
            !known.holds_all(&chunk),
            "the stream lost the poll's append"
        );
        known.begin(StreamId::new(7, 0), "e");
        assert!(!known.holds_all(&[record("c", 9)]));

        known.begin(StreamId::new(7, 0), "e");
        known.note(&[record("d", 12)], 1, false);
        known.end(StreamId::new(9, 0), "e", &t);
        assert!(!known.holds_all(&[record("d", 12)]), "lost, and not clean");
    }
}
