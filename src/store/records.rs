//! The latest-record store: per table, each record's latest version exactly
//! as received (soft-deleted ones included) with its stamp. It answers
//! "what does record X look like now" and "every record whose latest stamp
//! is above N, in stamp order" (the compatible `?sync=` API,
//! `src/api/compat.rs`), also after retention removed the events, and
//! gives readers that ask for previous values the version an event
//! replaced (`fill_previous`).
//!
//! Nothing is copied on the append path: the index points at each record's
//! latest version (`events::IndexEntry`), which the event stream holds;
//! retention keeps a record's last removed version before it removes the
//! event (the Redis layout: `store/redis/records.rs`; SQLite:
//! `store/sqlite/records.rs`). **Invariant:** a record's latest version is
//! the one its index entry names, found in the stream or, once its event
//! was removed, in the kept copies.
//!
//! Kept unless a source says `keep_records = false`. A table whose records
//! were not kept fills what it needs when the table is opened
//! (`RecordStore::ready_records`), never inside a read;
//! versions whose events retention had removed before come in with the
//! next reconcile sweep (the append keeps a duplicate the store lacks).

use async_trait::async_trait;

use super::{StoreResult, Table};
use crate::events::{Event, StreamId};

/// A record's latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: String,
    pub stamp: u64,
    pub deleted: bool,
    /// The record JSON exactly as the upstream sent it.
    pub data: String,
}

/// Which records a listing wants: latest stamp in `(above, until]`, and of
/// those the ones past `after` (a keyset position) or past `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsQuery {
    pub above: u64,
    /// None: the table's top stamp now (answered in [`RecordsPage::until`]).
    pub until: Option<u64>,
    /// Records with a stamp above this (at least `above`); none: `above`.
    pub after: Option<u64>,
    /// Records skipped after `after` (offset paging).
    pub offset: usize,
    pub limit: usize,
    /// The count of an earlier page of the same snapshot; none: count now.
    pub count: Option<u64>,
}

/// One page of a listing, read in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsPage {
    /// Records with a latest stamp in `(above, until]` (the query's count
    /// when it gave one; counted after the page otherwise).
    pub count: u64,
    /// The top of the snapshot: the query's, or the table's top stamp.
    pub until: u64,
    /// The stream's last ID when read: a reader that rebuilt from this
    /// snapshot resumes the event stream after it.
    pub last_id: crate::events::StreamId,
    /// In stamp order.
    pub records: Vec<StoredRecord>,
}

#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Whether appends to `t` keep the latest-record store (default: yes).
    /// Turning it off drops what was kept at the next append, so turning it
    /// on again fills it afresh rather than serving stale versions.
    fn keep_records(&self, t: &Table, keep: bool);

    /// Brings `t`'s record store in line with its setting: fills it when
    /// records were not kept before, drops it when they no longer are.
    /// Run when a table is opened, before anything reads it
    /// (`Topology::ready_records`), and by the first append after a change
    /// of setting; once per table and setting in a process. Reads never
    /// write: they read what this left.
    async fn ready_records(&self, t: &Table) -> StoreResult<()>;

    /// The latest version of one record, none when the table never had it.
    async fn record(&self, t: &Table, id: &str) -> StoreResult<Option<StoredRecord>>;

    /// Records whose latest stamp is in the query's range, in stamp order.
    async fn records(&self, t: &Table, q: RecordsQuery) -> StoreResult<RecordsPage>;

    /// Sets `before` on each event that replaced a version and lacks it:
    /// the version its `prev` names, when the table keeps records and still
    /// has it (none otherwise).
    async fn fill_previous(&self, t: &Table, events: &mut [Event]) -> StoreResult<()>;

    /// Events with IDs strictly before `before` (from the last event when
    /// none), newest first, at most `limit`: a table read backwards.
    async fn read_back(
        &self,
        t: &Table,
        before: Option<StreamId>,
        limit: usize,
    ) -> StoreResult<Vec<Event>>;
}

/// The version an event replaced, to look up for previous values: its
/// stamp and the ID of its event (`previd`, else `<prev>-0`). None when the
/// event replaced nothing or carries the version already (events
/// written before 2026-12 may carry theirs as `before`, docs/redis-layout.md).
pub(crate) fn replaced(e: &Event) -> Option<(u64, crate::events::StreamId)> {
    if e.op == crate::events::Op::Created || e.before.is_some() {
        return None;
    }
    let prev = e.prev?;
    Some((
        prev,
        e.prev_id.unwrap_or(crate::events::StreamId::new(prev, 0)),
    ))
}

/// A record's latest version from its index entry and its JSON.
pub(crate) fn decode_value(id: &str, index_entry: &str, data: String) -> Option<StoredRecord> {
    let e = crate::events::IndexEntry::decode(index_entry)?;
    Some(StoredRecord {
        id: id.to_string(),
        stamp: e.stamp,
        deleted: e.deleted,
        data,
    })
}

/// Per store: which tables keep records, and which were made ready (filled
/// or dropped) by this process.
#[derive(Default)]
pub(crate) struct KeepSet {
    off: std::sync::Mutex<std::collections::HashSet<Table>>,
    ready: std::sync::Mutex<std::collections::HashSet<Table>>,
}

impl KeepSet {
    pub fn set(&self, t: &Table, keep: bool) {
        let mut off = self.off.lock().unwrap_or_else(|e| e.into_inner());
        if keep {
            off.remove(t);
        } else {
            off.insert(t.clone());
        }
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(t);
    }

    pub fn keeps(&self, t: &Table) -> bool {
        !self
            .off
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(t)
    }

    /// True the first time per table (and after [`KeepSet::set`]): the
    /// caller fills or drops the table's records before appending.
    pub fn first_use(&self, t: &Table) -> bool {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(t.clone())
    }

    /// Undoes [`KeepSet::first_use`] after a fill failed, so the next append tries again.
    pub fn not_ready(&self, t: &Table) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_stamp_and_deletion_from_the_index_entry() {
        let r = decode_value("a", "7:deleted@9-1", r#"{"x": "1 2"}"#.into()).unwrap();
        assert_eq!((r.stamp, r.deleted), (7, true));
        assert_eq!(r.data, r#"{"x": "1 2"}"#);
        let r = decode_value("a", "8", "{}".into()).unwrap();
        assert_eq!((r.stamp, r.deleted, r.data.as_str()), (8, false, "{}"));
        assert_eq!(decode_value("a", "junk", "{}".into()), None);
    }

    #[test]
    fn keep_set_defaults_on_and_readies_once() {
        let k = KeepSet::default();
        let t = Table::new("s", "r");
        assert!(k.keeps(&t));
        assert!(k.first_use(&t));
        assert!(!k.first_use(&t));
        k.set(&t, false);
        assert!(!k.keeps(&t));
        assert!(
            k.first_use(&t),
            "a change of setting readies the table again"
        );
    }
}
