//! Change events: the operation set, stream IDs, the record index entry,
//! and the classification rule of `docs/events.md` ("What the ops mean").
//!
//! Both stores apply them through the append planner (`store/plan.rs`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Created,
    Updated,
    Deleted,
    Restored,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Created, Op::Updated, Op::Deleted, Op::Restored];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Created => "created",
            Op::Updated => "updated",
            Op::Deleted => "deleted",
            Op::Restored => "restored",
        }
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| format!("unknown op {s:?}"))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream entry ID `<stamp>-<seq>`: `seq` is 0 for an event appended in
/// stamp order and counts up for late events appended under the top stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub stamp: u64,
    pub seq: u64,
}

/// The largest stamp (and stream position) the relay takes: what the
/// embedded store's integer columns and every client's signed 64-bit
/// integers hold. A larger one from the upstream is a rejected record; in a
/// request, a 400.
pub const MAX_STAMP: u64 = i64::MAX as u64;

/// The largest stamp a record may carry: 2^53 - 1, the largest integer
/// every reader holds exactly (a JSON number in JavaScript, a number in a
/// Redis script). A larger one is a rejected record.
pub const MAX_RECORD_STAMP: u64 = (1 << 53) - 1;

impl StreamId {
    pub const ZERO: StreamId = StreamId { stamp: 0, seq: 0 };

    pub fn new(stamp: u64, seq: u64) -> Self {
        Self { stamp, seq }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.stamp, self.seq)
    }
}

impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for StreamId {
    type Err = String;
    /// Accepts `<stamp>` (meaning `<stamp>-0`) or `<stamp>-<seq>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a stamp or a stream ID like 1234-0");
        let (a, b) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            stamp: a.parse().map_err(|_| bad())?,
            seq: b.parse().map_err(|_| bad())?,
        })
    }
}

/// What the record index holds per record: the last emitted stamp, whether
/// that version was deleted, and where its event is. Stored as `<stamp>` or
/// `<stamp>:deleted`, followed by `@<stream ID>` when the event's ID is not
/// `<stamp>-0` (a late event), so the index points at every latest version
/// (src/store/records.rs reads records through it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub stamp: u64,
    pub deleted: bool,
    /// The event's ID when it is not `<stamp>-0`.
    pub at: Option<StreamId>,
}

/// The index entry's grammar, `<stamp>[:deleted][@<stream ID>]` (the
/// `@` part only for a version whose event is not `<stamp>-0`).
impl std::fmt::Display for IndexEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.stamp)?;
        if self.deleted {
            f.write_str(":deleted")?;
        }
        match self.at.filter(|at| *at != StreamId::new(self.stamp, 0)) {
            Some(at) => write!(f, "@{at}"),
            None => Ok(()),
        }
    }
}

impl IndexEntry {
    pub fn new(stamp: u64, deleted: bool) -> IndexEntry {
        IndexEntry {
            stamp,
            deleted,
            at: None,
        }
    }

    /// The ID of the event that holds this version.
    pub fn event_id(&self) -> StreamId {
        self.at.unwrap_or(StreamId::new(self.stamp, 0))
    }

    pub fn encode(&self) -> String {
        self.to_string()
    }

    pub fn decode(s: &str) -> Option<IndexEntry> {
        let (head, at) = match s.split_once('@') {
            Some((head, at)) => (head, Some(at.parse().ok()?)),
            None => (s, None),
        };
        let (stamp, deleted) = match head.strip_suffix(":deleted") {
            Some(stamp) => (stamp, true),
            None => (head, false),
        };
        Some(IndexEntry {
            stamp: stamp.parse().ok()?,
            deleted,
            at,
        })
    }
}

/// The op for a record version seen with `stamp`, or `None` when the index
/// already holds this stamp or a newer one (a duplicate, dropped). A record
/// first seen already deleted (an archived resident on an initial load) is
/// `deleted`, never `created`: a receiver that inserts on `created` would
/// add it as a new, live record.
pub fn classify(prev: Option<IndexEntry>, stamp: u64, deleted: bool) -> Option<Op> {
    match prev {
        None if deleted => Some(Op::Deleted),
        None => Some(Op::Created),
        Some(p) if stamp <= p.stamp => None,
        Some(p) => Some(match (p.deleted, deleted) {
            (false, true) => Op::Deleted,
            (true, false) => Op::Restored,
            _ => Op::Updated,
        }),
    }
}

/// The op for a version seen by a reload after an upstream reset: the
/// upstream's version wins whatever its stamp, so a version whose stamp or
/// deleted flag differs from the index entry is appended; `None` when the
/// index holds exactly this version.
pub fn reclassify(prev: Option<IndexEntry>, stamp: u64, deleted: bool) -> Option<Op> {
    match prev {
        Some(p) if p.stamp == stamp && p.deleted == deleted => None,
        Some(p) => Some(match (p.deleted, deleted) {
            (false, true) => Op::Deleted,
            (true, false) => Op::Restored,
            _ => Op::Updated,
        }),
        // As in `classify`: a first sighting already deleted is `deleted`.
        None if deleted => Some(Op::Deleted),
        None => Some(Op::Created),
    }
}

/// The ID for the next appended event: `<stamp>-0` when the stamp is above
/// the stream's top, else a late event `<top stamp>-<top seq + 1>`.
pub fn next_id(top: StreamId, stamp: u64) -> StreamId {
    if stamp > top.stamp {
        StreamId::new(stamp, 0)
    } else {
        StreamId::new(top.stamp, top.seq + 1)
    }
}

/// One stored change event, as both stores return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: StreamId,
    pub op: Op,
    pub record: String,
    pub stamp: u64,
    pub prev: Option<u64>,
    pub snapshot: bool,
    /// Relay time of observation, unix milliseconds.
    pub observed: u64,
    /// The record JSON exactly as the upstream sent it.
    pub data: String,
    /// The event of the version this one replaced, when it is not
    /// `<prev>-0` (that version was a late event).
    #[serde(skip)]
    pub prev_id: Option<StreamId>,
    /// The version this one replaced, exactly as received: what previous
    /// values are made of, filled in by `RecordStore::fill_previous` for
    /// readers that ask for them (or carried on the event itself, as events
    /// written before 2026-12 may: docs/redis-layout.md).
    #[serde(skip)]
    pub before: Option<String>,
}

#[cfg(test)]
impl Event {
    /// An event `op` of `record` at `stamp` (`<stamp>-0`) with `{}` as its
    /// data, for tests.
    pub(crate) fn sample(stamp: u64, record: &str, op: Op) -> Event {
        Event {
            id: StreamId::new(stamp, 0),
            op,
            record: record.into(),
            stamp,
            prev: None,
            snapshot: false,
            observed: 0,
            data: "{}".into(),
            prev_id: None,
            before: None,
        }
    }
}

/// A record the relay could not turn into an event, kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub raw: String,
    pub reason: String,
    pub observed: u64,
}

/// Counts of one append call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub restored: u64,
    /// Versions already in the index (re-reads, replays after a crash).
    pub duplicates: u64,
    /// Versions with a stamp below the record's indexed one: against the
    /// contract (stamps from clocks), dropped too but counted apart.
    pub regressions: u64,
    /// Events appended below the stream's top as `<top>-<seq>`.
    pub late: u64,
}

impl AppendOutcome {
    pub fn appended(&self) -> u64 {
        self.created + self.updated + self.deleted + self.restored
    }

    pub fn count(&mut self, op: Op) {
        match op {
            Op::Created => self.created += 1,
            Op::Updated => self.updated += 1,
            Op::Deleted => self.deleted += 1,
            Op::Restored => self.restored += 1,
        }
    }

    pub fn add(&mut self, o: &AppendOutcome) {
        self.created += o.created;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.restored += o.restored;
        self.duplicates += o.duplicates;
        self.regressions += o.regressions;
        self.late += o.late;
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stamp: u64, deleted: bool) -> Option<IndexEntry> {
        Some(IndexEntry::new(stamp, deleted))
    }

    #[test]
    fn classification_follows_the_index() {
        assert_eq!(classify(None, 5, false), Some(Op::Created));
        assert_eq!(classify(None, 5, true), Some(Op::Deleted));
        // A reload after an upstream reset classifies a first sighting alike.
        assert_eq!(reclassify(None, 5, true), Some(Op::Deleted));
        assert_eq!(reclassify(None, 5, false), Some(Op::Created));
        assert_eq!(classify(entry(3, false), 4, false), Some(Op::Updated));
        assert_eq!(classify(entry(3, false), 4, true), Some(Op::Deleted));
        assert_eq!(classify(entry(3, true), 4, false), Some(Op::Restored));
        assert_eq!(classify(entry(3, true), 4, true), Some(Op::Updated));
        assert_eq!(classify(entry(4, false), 4, false), None);
        assert_eq!(classify(entry(9, false), 4, true), None);
    }

    #[test]
    fn ids_are_stamps_then_late_sequence() {
        let top = StreamId::new(10, 0);
        assert_eq!(next_id(top, 12), StreamId::new(12, 0));
        assert_eq!(next_id(top, 7), StreamId::new(10, 1));
        assert_eq!(next_id(StreamId::new(10, 1), 10), StreamId::new(10, 2));
        assert_eq!("12".parse::<StreamId>(), Ok(StreamId::new(12, 0)));
        assert_eq!("12-3".parse::<StreamId>(), Ok(StreamId::new(12, 3)));
        assert!("x-3".parse::<StreamId>().is_err());
        assert!("-1".parse::<StreamId>().is_err());
    }

    #[test]
    fn index_entries_round_trip() {
        let late = IndexEntry {
            at: Some(StreamId::new(12, 3)),
            ..IndexEntry::new(9, true)
        };
        for e in [IndexEntry::new(7, true), IndexEntry::new(8, false), late] {
            assert_eq!(IndexEntry::decode(&e.encode()), Some(e));
        }
        assert_eq!(IndexEntry::decode("7:deleted").unwrap().stamp, 7);
        assert_eq!(IndexEntry::decode("junk"), None);
        assert_eq!(IndexEntry::decode("7@junk"), None);
        // The stored format is a public contract (docs/redis-layout.md).
        assert_eq!(IndexEntry::new(7, true).encode(), "7:deleted");
        assert_eq!(IndexEntry::new(8, false).encode(), "8");
        assert_eq!(late.encode(), "9:deleted@12-3");
        assert_eq!(IndexEntry::decode("8"), Some(IndexEntry::new(8, false)));
        assert_eq!(late.event_id(), StreamId::new(12, 3));
        assert_eq!(IndexEntry::new(8, false).event_id(), StreamId::new(8, 0));
    }

    #[test]
    fn op_names_are_the_documented_ones() {
        let names = ["created", "updated", "deleted", "restored"];
        for (op, name) in Op::ALL.into_iter().zip(names) {
            assert_eq!(op.as_str(), name);
            assert_eq!(op.to_string(), name);
            assert_eq!(name.parse::<Op>(), Ok(op));
            assert_eq!(serde_json::to_string(&op).unwrap(), format!("\"{name}\""));
        }
        assert!("Created".parse::<Op>().is_err());
        assert!("".parse::<Op>().is_err());
    }

    #[test]
    fn stream_ids_print_as_stamp_dash_seq() {
        assert_eq!(StreamId::new(12, 3).to_string(), "12-3");
        assert_eq!(StreamId::ZERO.to_string(), "0-0");
        assert_eq!(
            serde_json::to_string(&StreamId::new(1700, 0)).unwrap(),
            "\"1700-0\""
        );
    }

    #[test]
    fn append_outcome_counts_each_op_in_its_own_field() {
        let mut o = AppendOutcome::default();
        // Distinct counts per op, so a swapped or dropped arm shows.
        for (op, n) in Op::ALL.into_iter().zip([1, 2, 3, 4]) {
            for _ in 0..n {
                o.count(op);
            }
        }
        let want = AppendOutcome {
            created: 1,
            updated: 2,
            deleted: 3,
            restored: 4,
            duplicates: 0,
            regressions: 0,
            late: 0,
        };
        assert_eq!(o, want);
        assert_eq!(o.appended(), 10);

        let mut sum = AppendOutcome {
            created: 10,
            updated: 20,
            deleted: 30,
            restored: 40,
            duplicates: 50,
            regressions: 70,
            late: 60,
        };
        sum.add(&AppendOutcome {
            duplicates: 5,
            regressions: 7,
            late: 6,
            ..want
        });
        assert_eq!(
            sum,
            AppendOutcome {
                created: 11,
                updated: 22,
                deleted: 33,
                restored: 44,
                duplicates: 55,
                regressions: 77,
                late: 66,
            }
        );
        assert_eq!(sum.appended(), 110);
        assert_eq!(AppendOutcome::default().appended(), 0);
    }

    #[test]
    fn now_is_unix_milliseconds() {
        let a = now_ms();
        // 2020-09-13 in ms; seconds or 0 would be far below.
        assert!(a > 1_600_000_000_000, "{a}");
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(a / 1000 <= secs && secs - a / 1000 < 60, "{a} vs {secs}");
    }
}
