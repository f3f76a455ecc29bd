//! One upstream table: its records, its stamp sequence, the order index that
//! listing pages through, late (not yet visible) versions, and raw records.
//!
//! Each version is kept as pre-encoded JSON, so a page is a concatenation of
//! strings and a record costs a few hundred bytes.

use std::collections::{BTreeSet, HashMap};

use crate::Order;
use crate::index::StampIndex;

/// One version of a record as the upstream shows it.
pub(super) struct Version {
    pub stamp: u64,
    pub deleted: bool,
    pub json: Box<str>,
    /// Position under `Order::Name` / `Order::Random`; empty under `Order::Stamp`.
    pub key: Box<str>,
}

struct Record {
    id: Box<str>,
    /// None while the record's creation is still a pending late write.
    visible: Option<Version>,
    /// A late write and the table write count at which it is due: it holds
    /// its stamp already but stays hidden until then. At most one per record.
    pending: Option<(Version, u64)>,
}

enum OrderIndex {
    Stamp(StampIndex),
    /// (sort key, record number, stamp): ordered by key then record; the
    /// stamp rides along so that filtering by `sync` stays inside the set.
    /// A page walks the whole set (tens of ms at a million records), which
    /// is acceptable because only stamp order is a benchmark path.
    Keyed(BTreeSet<(Box<str>, u32, u64)>),
}

/// An arbitrary record added through the admin API, listed after all regular
/// records, in insertion order.
struct RawRecord {
    stamp: Option<f64>,
    json: Box<str>,
}

pub(super) struct Table {
    records: Vec<Record>,
    ids: HashMap<Box<str>, u32>,
    order: OrderIndex,
    raw: Vec<RawRecord>,
    /// Highest stamp issued, visible or not.
    top: u64,
    /// Writes so far; late writes are due after a number of further writes.
    writes: u64,
    /// Records with a pending late write.
    pending: Vec<u32>,
}

impl Table {
    pub(super) fn new(order: Order) -> Table {
        let order = match order {
            Order::Stamp => OrderIndex::Stamp(StampIndex::default()),
            Order::Name | Order::Random => OrderIndex::Keyed(BTreeSet::new()),
        };
        Table {
            records: Vec::new(),
            ids: HashMap::new(),
            order,
            raw: Vec::new(),
            top: 0,
            writes: 0,
            pending: Vec::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn find(&self, id: &str) -> Option<u32> {
        self.ids.get(id).copied()
    }

    pub(super) fn id(&self, rec: u32) -> &str {
        &self.records[rec as usize].id
    }

    pub(super) fn visible(&self, rec: u32) -> Option<&Version> {
        self.records[rec as usize].visible.as_ref()
    }

    pub(super) fn has_pending(&self, rec: u32) -> bool {
        self.records[rec as usize].pending.is_some()
    }

    /// Issues the next stamp: the highest so far plus one, plus `gap`.
    pub(super) fn next_stamp(&mut self, gap: u64) -> u64 {
        self.top += 1 + gap;
        self.top
    }

    /// Records a new version of `id` (creating the record if needed). With
    /// `late_after`, the version stays hidden for that many further writes.
    pub(super) fn write(&mut self, id: &str, version: Version, late_after: Option<u32>) {
        let rec = match self.find(id) {
            Some(rec) => rec,
            None => {
                let rec = u32::try_from(self.records.len()).expect("fewer than 2^32 records");
                self.records.push(Record {
                    id: id.into(),
                    visible: None,
                    pending: None,
                });
                self.ids.insert(id.into(), rec);
                rec
            }
        };
        self.writes += 1;
        match late_after {
            Some(after) => {
                debug_assert!(!self.has_pending(rec), "one pending write per record");
                self.records[rec as usize].pending =
                    Some((version, self.writes + u64::from(after)));
                self.pending.push(rec);
            }
            None => self.show(rec, version),
        }
        self.commit_due(false);
    }

    /// Makes pending late writes visible: those that are due, or all of them.
    /// Returns how many became visible.
    pub(super) fn commit_due(&mut self, all: bool) -> usize {
        let due: Vec<u32> = self
            .pending
            .iter()
            .copied()
            .filter(|&rec| {
                all || self.records[rec as usize]
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.1 <= self.writes)
            })
            .collect();
        self.pending.retain(|rec| !due.contains(rec));
        for &rec in &due {
            if let Some((version, _)) = self.records[rec as usize].pending.take() {
                self.show(rec, version);
            }
        }
        due.len()
    }

    /// Commits the pending write of one record, if any.
    pub(super) fn commit_record(&mut self, rec: u32) {
        if let Some((version, _)) = self.records[rec as usize].pending.take() {
            self.pending.retain(|&r| r != rec);
            self.show(rec, version);
        }
    }

    fn show(&mut self, rec: u32, version: Version) {
        let record = &mut self.records[rec as usize];
        let old = record.visible.replace(version);
        let new = record.visible.as_ref().expect("just set");
        match &mut self.order {
            OrderIndex::Stamp(index) => {
                if let Some(old) = old {
                    index.remove(old.stamp, rec);
                }
                index.insert(new.stamp, rec);
            }
            OrderIndex::Keyed(set) => {
                if let Some(old) = old {
                    set.remove(&(old.key, rec, old.stamp));
                }
                set.insert((new.key.clone(), rec, new.stamp));
            }
        }
    }

    /// Removes `id` from the listing for good (a hard delete, against the
    /// contract); false when it is not visible.
    pub(super) fn remove(&mut self, id: &str) -> bool {
        let Some(rec) = self.find(id) else {
            return false;
        };
        let Some(old) = self.records[rec as usize].visible.take() else {
            return false;
        };
        match &mut self.order {
            OrderIndex::Stamp(index) => index.remove(old.stamp, rec),
            OrderIndex::Keyed(set) => {
                set.remove(&(old.key, rec, old.stamp));
            }
        }
        true
    }

    /// Gives `id`'s visible version another `stamp`, lower or not (stamps
    /// from a clock that went back, against the contract).
    pub(super) fn restamp(&mut self, id: &str, stamp: u64) -> bool {
        let Some(rec) = self.find(id) else {
            return false;
        };
        let Some(old) = self.visible(rec) else {
            return false;
        };
        let mut json: serde_json::Value = serde_json::from_str(&old.json).expect("valid JSON");
        json["update_stamp"] = stamp.into();
        let version = Version {
            stamp,
            deleted: old.deleted,
            json: json.to_string().into(),
            key: old.key.clone(),
        };
        self.show(rec, version);
        true
    }

    /// Issues `n` stamps to no record of this table (a counter shared with
    /// other tables).
    pub(super) fn skip_stamps(&mut self, n: u64) {
        self.top += n;
    }

    pub(super) fn add_raw(&mut self, record: &serde_json::Value) {
        let stamp = record
            .get("update_stamp")
            .and_then(serde_json::Value::as_f64);
        self.raw.push(RawRecord {
            stamp,
            json: record.to_string().into(),
        });
    }

    /// DRF paging: how many records have a stamp above `sync`, and the JSON of
    /// at most `limit` of them after skipping `offset`.
    pub(super) fn page(&self, sync: u64, offset: usize, limit: usize) -> (usize, Vec<&str>) {
        let (regular, mut results) = match &self.order {
            OrderIndex::Stamp(index) => {
                let (count, recs) = index.page(sync, offset, limit);
                (
                    count,
                    recs.into_iter()
                        .filter_map(|rec| self.json(rec, sync))
                        .collect(),
                )
            }
            OrderIndex::Keyed(set) => {
                let (mut count, mut results) = (0, Vec::new());
                for &(_, rec, _) in set.iter().filter(|&&(_, _, stamp)| stamp > sync) {
                    if count >= offset && results.len() < limit {
                        results.extend(self.json(rec, sync));
                    }
                    count += 1;
                }
                (count, results)
            }
        };
        let raw: Vec<&str> = self
            .raw
            .iter()
            .filter(|r| r.stamp.is_none_or(|s| s > sync as f64))
            .map(|r| &*r.json)
            .collect();
        let skip_raw = offset.saturating_sub(regular);
        results.extend(raw.iter().skip(skip_raw).take(limit - results.len()));
        (regular + raw.len(), results)
    }

    fn json(&self, rec: u32, sync: u64) -> Option<&str> {
        self.visible(rec)
            .filter(|v| v.stamp > sync)
            .map(|v| &*v.json)
    }

    /// Every visible record, by stamp.
    pub(super) fn state(&self) -> Vec<&str> {
        let mut visible: Vec<&Version> = self
            .records
            .iter()
            .filter_map(|r| r.visible.as_ref())
            .collect();
        visible.sort_unstable_by_key(|v| v.stamp);
        visible.into_iter().map(|v| &*v.json).collect()
    }
}
