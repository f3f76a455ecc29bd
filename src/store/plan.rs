//! The append's rules, written once for every engine: given what the store
//! holds for a chunk (the records' index entries, the stream's last entry
//! and last issued ID, the trimmed marker) and the writer's highest ID,
//! [`plan`] decides everything an append does: the fences on a lost tail,
//! each version's op against the index (`events::classify`, or
//! `reclassify` for a rebase), the stream ID of each event (late events go
//! under the top), the index entry each record ends with, the counts, and
//! the bookkeeping of the latest-record store as facts ([`Keep`]). It does
//! no I/O: Redis reads, plans and applies the plan under a guard
//! (`redis/append.rs`), SQLite applies it inside its transaction
//! (`sqlite/append.rs`).

use std::collections::HashMap;

use crate::events::{self, AppendOutcome, IndexEntry, Op, StreamId};
use crate::record::UpstreamRecord;
use crate::store::Refusal;

/// What the store holds for a chunk, read before planning it.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// Per record of the chunk, in order, its index entry before the chunk.
    pub index: &'a [Option<IndexEntry>],
    /// The stream's last entry (`0-0` for an empty or missing stream).
    pub top: StreamId,
    /// The stream's last issued ID, which stays above the last entry when
    /// the newest entries were deleted or the ID was raised.
    pub issued: StreamId,
    /// The last event retention removed (`0-0` for none).
    pub trimmed: StreamId,
}

/// How the chunk is to be appended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// The highest ID this writer appended to the table under its epoch.
    pub highest: Option<StreamId>,
    /// A reload after an upstream reset: `events::reclassify`.
    pub rebase: bool,
    /// Whether the table keeps the latest-record store.
    pub keep: bool,
}

/// One event to write: the `record`-th record of the chunk under `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedEvent {
    pub record: usize,
    pub id: StreamId,
    pub op: Op,
    /// The version this event replaces, as the index (or an earlier event
    /// of the chunk) held it.
    pub prev: Option<IndexEntry>,
}

impl PlannedEvent {
    /// The replaced version's stamp, when there was one.
    pub fn prev_stamp(&self) -> Option<u64> {
        self.prev.map(|p| p.stamp)
    }

    /// The replaced version's event when it was a late one (`previd`):
    /// readers find `<prev>-0` themselves otherwise.
    pub fn prev_id(&self) -> Option<StreamId> {
        self.prev.and_then(|p| p.at).filter(|a| a.seq > 0)
    }
}

/// A change to the latest-record store's bookkeeping, for a table that
/// keeps it: each engine applies the facts it keeps sets for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The record's replaced version's event was trimmed (its copy was
    /// kept): the record's latest version is an event again.
    PrevTrimmed { record: usize },
    /// The record's latest version is now a late event, at `stamp`.
    NowLate { record: usize, stamp: u64 },
    /// The record's latest version was a late event and is no longer one.
    NoLongerLate { record: usize },
    /// The record came again at the version the index holds, `entry`,
    /// whose event retention removed: keep this copy of it (when the kept
    /// copies lack it, [`needs_copy`]).
    DuplicateOfTrimmed { record: usize, entry: IndexEntry },
}

/// What an append writes, and what it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub events: Vec<PlannedEvent>,
    /// The index entry each appended record ends with, once per record
    /// (a record twice in the chunk ends with its later version), in the
    /// order of their first events.
    pub index: Vec<(usize, IndexEntry)>,
    pub keep: Vec<Keep>,
    pub outcome: AppendOutcome,
    /// The stream's last ID after the append.
    pub last: StreamId,
}

/// An append refused because acknowledged writes are gone: the stream's
/// last entry `top` is below `highest`, which this writer appended. Their
/// IDs must never be issued again (a reader may hold them), so when `raise`
/// the engine raises the stream's last issued ID to `highest` before it
/// answers the refusal (docs/sync.md, "Store failovers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailLost {
    pub top: StreamId,
    pub highest: StreamId,
    pub raise: bool,
}

impl TailLost {
    pub fn refusal(&self) -> Refusal {
        Refusal::Failover {
            top: self.top,
            highest: self.highest,
        }
    }
}

/// Plans the append of `records` over what the store `held`.
pub fn plan(records: &[UpstreamRecord], held: Held<'_>, rules: Rules) -> Result<Plan, TailLost> {
    let issued = held.issued.max(held.top);
    if let Some(highest) = rules.highest.filter(|h| *h > held.top) {
        return Err(TailLost {
            top: held.top,
            highest,
            raise: highest > issued,
        });
    }
    let mut top = issued;
    let mut p = Plan {
        last: held.top,
        ..Plan::default()
    };
    // Where each record's entry is in `p.index`: a later version in the
    // chunk finds the earlier one there.
    let mut written: HashMap<&str, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let prev = match written.get(r.id.as_str()) {
            Some(&w) => Some(p.index[w].1),
            None => held.index.get(i).copied().flatten(),
        };
        let op = if rules.rebase {
            events::reclassify(prev, r.stamp, r.deleted)
        } else {
            events::classify(prev, r.stamp, r.deleted)
        };
        let Some(op) = op else {
            skip(&mut p, i, r, prev, held.trimmed, rules.keep);
            continue;
        };
        let id = events::next_id(top, r.stamp);
        if id.seq > 0 {
            p.outcome.late += 1;
        }
        let event = PlannedEvent {
            record: i,
            id,
            op,
            prev,
        };
        if rules.keep {
            keep_facts(&mut p.keep, &event, r.stamp, held.trimmed);
        }
        p.events.push(event);
        let entry = IndexEntry {
            stamp: r.stamp,
            deleted: r.deleted,
            at: (id.seq > 0).then_some(id),
        };
        match written.get(r.id.as_str()) {
            Some(&w) => p.index[w].1 = entry,
            None => {
                written.insert(&r.id, p.index.len());
                p.index.push((i, entry));
            }
        }
        (top, p.last) = (id, id);
        p.outcome.count(op);
    }
    Ok(p)
}

/// Whether the event `id` is at or below the trimmed marker.
fn gone(id: StreamId, trimmed: StreamId) -> bool {
    id <= trimmed
}

/// A version not appended: the one the index holds again, or an older one.
fn skip(
    p: &mut Plan,
    i: usize,
    r: &UpstreamRecord,
    prev: Option<IndexEntry>,
    trimmed: StreamId,
    keep: bool,
) {
    match prev {
        Some(prev) if r.stamp < prev.stamp => p.outcome.regressions += 1,
        _ => p.outcome.duplicates += 1,
    }
    // The version the index holds, seen again, whose event retention
    // removed before kept copies existed: a reconcile sweep puts it back,
    // so lookups and listings find it.
    if let Some(entry) = prev.filter(|e| keep && e.stamp == r.stamp && gone(e.event_id(), trimmed))
    {
        p.keep.push(Keep::DuplicateOfTrimmed { record: i, entry });
    }
}

/// The bookkeeping an appended event changes.
fn keep_facts(keep: &mut Vec<Keep>, e: &PlannedEvent, stamp: u64, trimmed: StreamId) {
    let record = e.record;
    if e.prev.is_some_and(|p| gone(p.event_id(), trimmed)) {
        keep.push(Keep::PrevTrimmed { record });
    }
    if e.id.seq > 0 {
        keep.push(Keep::NowLate { record, stamp });
    } else if e.prev_id().is_some() {
        keep.push(Keep::NoLongerLate { record });
    }
}

/// Whether a [`Keep::DuplicateOfTrimmed`] copy at `stamp` is to be written
/// over the kept copy, whose stamp is `kept` (`None` when there is none).
pub fn needs_copy(kept: Option<u64>, stamp: u64) -> bool {
    kept != Some(stamp)
}

#[cfg(test)]
mod tests;
