//! The stamp-order index: visible records sorted by stamp, with ranks.
//!
//! A `BTreeMap<stamp, record>` finds the first stamp above `sync` quickly, but
//! DRF paging also needs `count` and "skip the first (page - 1) * page_size",
//! which a BTreeMap can only do by walking every entry (milliseconds per page
//! at a million records, and quadratic over an initial load). So the index is
//! a stamp-sorted vector whose removed slots are tombstones, plus a Fenwick tree
//! over "slot is alive" that answers both rank questions in O(log n).
//!
//! Invariant: slots are strictly ascending by (stamp, record), dead slots
//! included. A stamp is usually issued once per table; a bulk write gives
//! several records one stamp, and they list by record number within it.

#[derive(Default)]
pub(super) struct StampIndex {
    /// (stamp, record number), ascending.
    slots: Vec<(u64, u32)>,
    /// Whether each slot's version is still visible.
    alive: Vec<bool>,
    /// Fenwick tree over alive flags; `tree[i - 1]` covers slots (i - lowbit(i), i].
    tree: Vec<u32>,
    live: usize,
}

fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl StampIndex {
    /// Adds a visible version. Stamps almost always arrive in ascending order;
    /// a late-committed stamp lands a few slots before the end and costs a
    /// rebuild, which late writes are rare enough to afford.
    pub(super) fn insert(&mut self, stamp: u64, rec: u32) {
        let key = (stamp, rec);
        self.live += 1;
        if self.slots.last().is_none_or(|&top| top < key) {
            self.slots.push(key);
            self.alive.push(true);
            let i = self.slots.len();
            let below = self.prefix(i - 1) - self.prefix(i - lowbit(i));
            self.tree.push(below + 1);
        } else {
            match self.slots.binary_search(&key) {
                Ok(at) if self.alive[at] => self.live -= 1,
                Ok(at) => self.alive[at] = true,
                Err(at) => {
                    self.slots.insert(at, key);
                    self.alive.insert(at, true);
                }
            }
            self.rebuild();
        }
    }

    /// Removes the version `rec` has at `stamp`; unknown ones are ignored.
    pub(super) fn remove(&mut self, stamp: u64, rec: u32) {
        let Ok(at) = self.slots.binary_search(&(stamp, rec)) else {
            return;
        };
        if !self.alive[at] {
            return;
        }
        self.alive[at] = false;
        self.live -= 1;
        let mut i = at + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] -= 1;
            i += lowbit(i);
        }
        // Tombstones only slow paging down; drop them once they dominate.
        let dead = self.slots.len() - self.live;
        if dead > 4096 && dead > self.live {
            let mut alive = self.alive.iter();
            self.slots
                .retain(|_| *alive.next().expect("one flag per slot"));
            self.alive = vec![true; self.slots.len()];
            self.rebuild();
        }
    }

    /// Number of visible versions with a stamp above `sync`, and the record
    /// numbers of at most `limit` of them after skipping `offset`, by stamp.
    pub(super) fn page(&self, sync: u64, offset: usize, limit: usize) -> (usize, Vec<u32>) {
        let start = self.slots.partition_point(|&(s, _)| s <= sync);
        let before = self.prefix(start) as usize;
        let count = self.live - before;
        if offset >= count || limit == 0 {
            return (count, Vec::new());
        }
        let first = self.position_of(before + offset + 1);
        let recs = self.slots[first..]
            .iter()
            .zip(&self.alive[first..])
            .filter(|&(_, &alive)| alive)
            .take(limit)
            .map(|(&(_, r), _)| r)
            .collect();
        (count, recs)
    }

    /// Alive slots among the first `n`.
    fn prefix(&self, mut n: usize) -> u32 {
        let mut sum = 0;
        while n > 0 {
            sum += self.tree[n - 1];
            n -= lowbit(n);
        }
        sum
    }

    /// Slot position of the `k`-th alive slot (1-based `k`, at most `live`).
    fn position_of(&self, mut k: usize) -> usize {
        let mut pos = 0;
        let mut step = self.tree.len().checked_ilog2().map_or(0, |b| 1 << b);
        while step > 0 {
            let next = pos + step;
            if next <= self.tree.len() && (self.tree[next - 1] as usize) < k {
                pos = next;
                k -= self.tree[next - 1] as usize;
            }
            step >>= 1;
        }
        pos
    }

    fn rebuild(&mut self) {
        self.tree = self.alive.iter().map(|&a| u32::from(a)).collect();
        for i in 1..=self.tree.len() {
            let parent = i + lowbit(i);
            if parent <= self.tree.len() {
                self.tree[parent - 1] += self.tree[i - 1];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StampIndex;

    /// Compares every (sync, offset) against a plain filter over a model.
    fn check(index: &StampIndex, model: &[(u64, u32)]) {
        let top = model.iter().map(|&(s, _)| s).max().unwrap_or(0);
        for sync in 0..=top + 1 {
            let matching: Vec<u32> = model
                .iter()
                .filter(|&&(s, _)| s > sync)
                .map(|&(_, r)| r)
                .collect();
            for offset in 0..=matching.len() {
                let (count, recs) = index.page(sync, offset, 3);
                assert_eq!(count, matching.len(), "count for sync {sync}");
                let want: Vec<u32> = matching.iter().skip(offset).take(3).copied().collect();
                assert_eq!(recs, want, "page for sync {sync} offset {offset}");
            }
        }
    }

    #[test]
    fn ranks_match_a_plain_filter_through_inserts_and_removals() {
        let mut index = StampIndex::default();
        let mut model: Vec<(u64, u32)> = Vec::new();
        for stamp in 1..=40u64 {
            index.insert(stamp, stamp as u32);
            model.push((stamp, stamp as u32));
        }
        for stamp in (3..40).step_by(3) {
            index.remove(stamp, stamp as u32);
            model.retain(|&(s, _)| s != stamp);
        }
        check(&index, &model);
        // A late-committed stamp below the top lands in its place.
        index.insert(45, 45);
        index.insert(43, 43);
        model.extend([(43, 43), (45, 45)]);
        model.sort();
        check(&index, &model);
        // A bulk write: three records share one stamp, listed by record.
        for rec in [52, 50, 51] {
            index.insert(47, rec);
            model.push((47, rec));
        }
        index.remove(47, 51);
        model.retain(|&r| r != (47, 51));
        model.sort();
        check(&index, &model);
    }
}
