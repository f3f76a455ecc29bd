//! The key names of one table (docs/redis-layout.md): every key
//! carries the table's hash tag `{source:resource}`, so one table's keys
//! share a Redis Cluster slot.

use crate::store::Table;

/// The key names of one table, defined in one place.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `P:{s:r}:events`, a stream with one entry per change.
    pub events: String,
    /// `P:{s:r}:index`, a hash of record id -> `<stamp>[:deleted][@<stream ID>]`
    /// (`events::IndexEntry`).
    pub index: String,
    /// `P:{s:r}:rejects`, a stream of records that could not become events.
    pub rejects: String,
    /// `P:{s:r}:lease`, the holder polling this table, with a TTL.
    pub lease: String,
    /// `P:{s:r}:status`, the last poll (JSON), written by the lease holder.
    pub status: String,
    /// `P:{s:r}:trimmed`, the ID of the last event retention removed.
    pub trimmed: String,
    /// `P:{s:r}:loading`, present while the initial load has not completed.
    pub loading: String,
    /// `P:{s:r}:epoch`, a random value written at the table's first use; a
    /// store that lost its data has none, or another one.
    pub epoch: String,
    /// `P:{s:r}:reconcile`, present while a reconcile sweep is requested.
    pub reconcile: String,
    /// `P:{s:r}:records`, record id -> `<stamp>[:deleted] <record JSON>`:
    /// each record's last version whose event retention removed.
    pub records: String,
    /// `P:{s:r}:stamps`, record ids by stamp: the records whose latest
    /// version's event retention removed (that version is in `records`).
    pub stamps: String,
    /// `P:{s:r}:late`, record ids by stamp: the records whose latest version
    /// is a late event still in the stream.
    pub late: String,
    /// `P:{s:r}:kept`, present once the record store's sets are complete
    /// (see records.rs): absent after `keep_records = false`, or in a
    /// table from before them.
    pub kept: String,
    base: String,
}

impl Keys {
    /// The keys of `append_apply.lua`, in its `KEYS` order; the first five
    /// are `append_read.lua`'s.
    pub fn append(&self) -> [&str; 8] {
        [
            &self.events,
            &self.index,
            &self.lease,
            &self.epoch,
            &self.trimmed,
            &self.records,
            &self.stamps,
            &self.late,
        ]
    }

    pub fn new(prefix: &str, t: &Table) -> Keys {
        let base = format!("{prefix}:{{{}:{}}}", t.source, t.resource);
        Keys {
            events: format!("{base}:events"),
            index: format!("{base}:index"),
            rejects: format!("{base}:rejects"),
            lease: format!("{base}:lease"),
            status: format!("{base}:status"),
            trimmed: format!("{base}:trimmed"),
            loading: format!("{base}:loading"),
            epoch: format!("{base}:epoch"),
            reconcile: format!("{base}:reconcile"),
            records: format!("{base}:records"),
            stamps: format!("{base}:stamps"),
            late: format!("{base}:late"),
            kept: format!("{base}:kept"),
            base,
        }
    }

    /// `P:{s:r}:pending:<sub>`, a hash of stream ID -> `<attempts>:<next attempt ms>`.
    pub fn pending(&self, sub_id: &str) -> String {
        format!("{}:pending:{sub_id}", self.base)
    }

    /// The consumer group of a subscription on the events stream.
    pub fn group(sub_id: &str) -> String {
        format!("sub:{sub_id}")
    }
}
