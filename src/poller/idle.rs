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

use std::collections::HashMap;

use crate::{events::StreamId, record::UpstreamRecord};

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
}

impl Known {
    /// At a poll's start: whatever is remembered holds only if the stream
    /// still ends where this poller left it, under the same epoch.
    pub fn begin(&mut self, last: StreamId, epoch: &str) {
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

    /// After an append of `chunk` that found no regression: the index holds
    /// each of its versions (appended now, or already).
    pub fn note(&mut self, chunk: &[UpstreamRecord], appended: u64) {
        if appended > 0 {
            self.held = None;
        }
        if self.versions.len() + chunk.len() > MAX_KNOWN {
            self.versions.clear();
        }
        for r in chunk {
            self.versions.insert(r.id.clone(), r.stamp);
        }
    }

    /// At a poll's successful end, the stream's last ID then.
    pub fn end(&mut self, last: StreamId, epoch: &str) {
        self.at = Some((last, epoch.to_string()));
    }
}
