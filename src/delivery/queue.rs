//! The pending queue of one worker and the rules that pick what to send:
//! stream order, only the oldest pending entry of each record, and never an
//! entry of a record already in flight, so a record waiting for a retry (or
//! for its answer) holds back itself and nothing else.
//!
//! The queue also splits its entries in two for the claim window: sendable
//! ones, and those held back behind a waiting retry. Only sendable entries
//! count against the window, so records that keep failing never stop the
//! worker from claiming more; the held-back ones have a limit of their own.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use crate::events::{Event, StreamId};
use crate::subscription::state::RetryState;

pub struct Pending {
    pub event: Arc<Event>,
    pub state: RetryState,
}

/// A worker's in-memory copy of its pending set, plus what is in flight.
#[derive(Default)]
pub struct Queue {
    entries: BTreeMap<StreamId, Pending>,
    in_flight: HashSet<StreamId>,
}

/// How the queue's entries split, for the claim window and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Entries not held back by a waiting retry (in flight included).
    pub sendable: usize,
    /// Entries of records whose oldest entry waits for a retry.
    pub waiting: usize,
    pub in_flight: usize,
}

impl Queue {
    pub fn insert(&mut self, event: Event, state: RetryState) {
        let event = Arc::new(event);
        self.entries.insert(event.id, Pending { event, state });
    }

    pub fn get(&self, id: &StreamId) -> Option<&Pending> {
        self.entries.get(id)
    }

    pub fn get_mut(&mut self, id: &StreamId) -> Option<&mut Pending> {
        self.entries.get_mut(id)
    }

    /// Forgets a settled entry (delivered, filtered out or dead).
    pub fn remove(&mut self, id: &StreamId) {
        self.entries.remove(id);
        self.in_flight.remove(id);
    }

    pub fn values(&self) -> impl Iterator<Item = &Pending> {
        self.entries.values()
    }

    pub fn is_in_flight(&self, id: &StreamId) -> bool {
        self.in_flight.contains(id)
    }

    pub fn start(&mut self, ids: &[StreamId]) {
        self.in_flight.extend(ids.iter().copied());
    }

    /// The answer came back: the entries are settled or wait for a retry.
    pub fn finish(&mut self, ids: &[StreamId]) {
        for id in ids {
            self.in_flight.remove(id);
        }
    }

    pub fn counts(&self) -> Counts {
        let in_flight = self.in_flight.len();
        if self.entries.values().all(|p| p.state.attempts == 0) {
            // Nothing failed: no set of records to build.
            let sendable = self.entries.len();
            return Counts {
                sendable,
                waiting: 0,
                in_flight,
            };
        }
        let mut seen = HashSet::new();
        let mut held = HashSet::new();
        let mut waiting = 0;
        for p in self.entries.values() {
            let record = p.event.record.as_str();
            if seen.insert(record) && p.state.attempts > 0 && !self.in_flight.contains(&p.event.id)
            {
                held.insert(record);
            }
            if held.contains(record) {
                waiting += 1;
            }
        }
        Counts {
            sendable: self.entries.len() - waiting,
            waiting,
            in_flight: self.in_flight.len(),
        }
    }

    /// Makes every waiting retry due by `now`, as `DeliveryStore::retry_now`
    /// does to the stored states (one shift for all, so states shared stay
    /// shared and distinct ones distinct); answers how many were not due.
    pub fn retry_now(&mut self, now: u64) -> usize {
        let retried = || self.entries.values().filter(|p| p.state.attempts > 0);
        let waiting = retried().filter(|p| p.state.next_at_ms > now).count();
        let latest = retried().map(|p| p.state.next_at_ms).max().unwrap_or(now);
        let shift = latest.saturating_sub(now);
        for p in self.entries.values_mut().filter(|p| p.state.attempts > 0) {
            p.state.next_at_ms = p.state.next_at_ms.saturating_sub(shift);
        }
        waiting
    }

    /// `state` with its retry time moved on by a millisecond or more while
    /// an entry outside `own` has it: the entries of one failed request are
    /// then the only ones to share it, so [`due_batches`](Self::due_batches)
    /// groups them again, and only them.
    pub fn unshared(&self, mut state: RetryState, own: &[StreamId]) -> RetryState {
        let taken: HashSet<u64> = self
            .entries
            .iter()
            .filter(|(id, p)| p.state.attempts == state.attempts && !own.contains(id))
            .map(|(_, p)| p.state.next_at_ms)
            .collect();
        while taken.contains(&state.next_at_ms) {
            state.next_at_ms += 1;
        }
        state
    }

    /// Up to `slots` requests of at most `per_request` due entries each,
    /// at most one entry per record and none of a record with an earlier
    /// entry still pending or in flight (per-record order); also the earliest
    /// time a record held back only by its retry time becomes due.
    ///
    /// A batch that failed is retried as the same batch, so its `webhook-id`
    /// holds: its entries failed together and share one retry state, which
    /// groups them again, apart from entries never sent.
    pub fn due_batches(
        &self,
        now: u64,
        slots: usize,
        per_request: usize,
    ) -> (Vec<Vec<StreamId>>, Option<u64>) {
        let per_request = per_request.max(1);
        let mut seen_records = HashSet::new();
        let mut retried: BTreeMap<RetryState, Vec<StreamId>> = BTreeMap::new();
        let mut fresh = Vec::new();
        let mut next_due: Option<u64> = None;
        for (id, p) in &self.entries {
            if !seen_records.insert(p.event.record.as_str()) || self.in_flight.contains(id) {
                continue;
            }
            if p.state.next_at_ms > now {
                next_due = Some(next_due.map_or(p.state.next_at_ms, |n| n.min(p.state.next_at_ms)));
            } else if p.state.attempts == 0 {
                fresh.push(*id);
            } else {
                retried.entry(p.state).or_default().push(*id);
            }
        }
        let mut groups: Vec<Vec<StreamId>> = retried.into_values().collect();
        // Retried batches first, oldest first; then entries never sent.
        groups.sort_by_key(|g| g[0]);
        let fresh = fresh.chunks(per_request).map(<[StreamId]>::to_vec);
        let batches = groups
            .iter()
            .flat_map(|g| g.chunks(per_request).map(<[StreamId]>::to_vec))
            .chain(fresh)
            .take(slots)
            .collect();
        (batches, next_due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Op;

    fn queue(entries: &[(u64, &str, u32, u64)]) -> Queue {
        let mut q = Queue::default();
        for &(stamp, record, attempts, next_at_ms) in entries {
            let e = Event::sample(stamp, record, Op::Updated);
            q.insert(
                e,
                RetryState {
                    attempts,
                    next_at_ms,
                },
            );
        }
        q
    }

    fn ids(stamps: &[u64]) -> Vec<StreamId> {
        stamps.iter().map(|s| StreamId::new(*s, 0)).collect()
    }

    /// Due entries one per request.
    fn due(q: &Queue, now: u64, max: usize) -> (Vec<StreamId>, Option<u64>) {
        let (batches, next) = q.due_batches(now, max, 1);
        (batches.into_iter().flatten().collect(), next)
    }

    #[test]
    fn a_failed_batch_is_retried_as_the_same_batch() {
        // 1 and 3 failed together; 2 and 4 were never sent.
        let mut q = queue(&[
            (1, "a", 1, 50),
            (2, "b", 0, 0),
            (3, "c", 1, 50),
            (4, "d", 0, 0),
        ]);
        let (batches, _) = q.due_batches(100, 5, 3);
        assert_eq!(batches, [ids(&[1, 3]), ids(&[2, 4])]);
        // Another request failing at the same time gets a state of its own.
        let state = q.unshared(
            RetryState {
                attempts: 1,
                next_at_ms: 50,
            },
            &ids(&[2]),
        );
        assert_eq!(state.next_at_ms, 51);
        q.get_mut(&StreamId::new(2, 0)).unwrap().state = state;
        let (batches, _) = q.due_batches(100, 5, 3);
        assert_eq!(batches, [ids(&[1, 3]), ids(&[2]), ids(&[4])]);
        assert_eq!(
            q.due_batches(100, 2, 3).0.len(),
            2,
            "no more than the free slots"
        );
    }

    #[test]
    fn retry_now_makes_waits_due_and_keeps_batches_apart() {
        let mut q = queue(&[
            (1, "a", 2, 900),
            (2, "b", 1, 700),
            (3, "c", 1, 700),
            (4, "d", 0, 0),
        ]);
        assert_eq!(q.retry_now(100), 3);
        let states: Vec<RetryState> = q.values().map(|p| p.state).collect();
        let at = |attempts, next_at_ms| RetryState {
            attempts,
            next_at_ms,
        };
        assert_eq!(states, [at(2, 100), at(1, 0), at(1, 0), at(0, 0)]);
        assert_eq!(
            q.due_batches(100, 5, 4).0,
            [ids(&[1]), ids(&[2, 3]), ids(&[4])]
        );
        assert_eq!(q.retry_now(100), 0, "nothing left waiting");
    }

    #[test]
    fn a_waiting_record_holds_back_only_itself() {
        let q = queue(&[
            (1, "a", 1, 500),
            (2, "b", 0, 0),
            (3, "a", 0, 0),
            (4, "c", 0, 0),
        ]);
        let (batch, next) = due(&q, 100, 10);
        assert_eq!(batch, ids(&[2, 4]));
        assert_eq!(next, Some(500));
        let (batch, _) = due(&q, 600, 2);
        assert_eq!(batch, ids(&[1, 2]));
    }

    #[test]
    fn a_record_in_flight_sends_nothing_else_until_it_is_back() {
        let mut q = queue(&[
            (1, "a", 0, 0),
            (2, "b", 0, 0),
            (3, "a", 0, 0),
            (4, "c", 0, 0),
        ]);
        q.start(&ids(&[1]));
        assert_eq!(due(&q, 0, 10).0, ids(&[2, 4]));
        q.start(&ids(&[2, 4]));
        assert_eq!(due(&q, 0, 10).0, ids(&[]), "3 waits for 1");
        q.finish(&ids(&[1]));
        q.remove(&StreamId::new(1, 0));
        assert_eq!(due(&q, 0, 10).0, ids(&[3]));
    }

    #[test]
    fn entries_behind_a_waiting_retry_do_not_count_against_the_window() {
        let mut q = queue(&[
            (1, "a", 2, 900),
            (2, "b", 0, 0),
            (3, "a", 0, 0),
            (4, "c", 1, 0),
        ]);
        q.start(&ids(&[4]));
        assert_eq!(
            q.counts(),
            Counts {
                sendable: 2,
                waiting: 2,
                in_flight: 1
            },
            "a's two entries wait; c's retry is in flight, so it is sendable"
        );
    }

    #[test]
    fn lookups_see_the_entries_and_what_is_in_flight() {
        let mut q = queue(&[(1, "a", 0, 0), (2, "b", 3, 50)]);
        let (one, two) = (StreamId::new(1, 0), StreamId::new(2, 0));
        assert_eq!(q.get(&one).unwrap().event.record, "a");
        assert!(q.get(&StreamId::new(9, 0)).is_none());
        q.get_mut(&two).unwrap().state.attempts = 4;
        assert_eq!(q.get(&two).unwrap().state.attempts, 4);
        assert!(q.get_mut(&StreamId::new(9, 0)).is_none());
        let records: Vec<&str> = q.values().map(|p| p.event.record.as_str()).collect();
        assert_eq!(records, ["a", "b"]);
        assert!(!q.is_in_flight(&one));
        q.start(&[one]);
        assert!(q.is_in_flight(&one) && !q.is_in_flight(&two));
        q.finish(&[one]);
        assert!(!q.is_in_flight(&one));
    }

    #[test]
    fn counts_split_sendable_from_waiting() {
        // Every record waits for a retry: nothing is sendable.
        let q = queue(&[(1, "a", 1, 500), (2, "b", 2, 500)]);
        assert_eq!(
            q.counts(),
            Counts {
                sendable: 0,
                waiting: 2,
                in_flight: 0
            }
        );
        // One of three waits.
        let q = queue(&[(1, "a", 1, 0), (2, "b", 0, 0), (3, "c", 0, 0)]);
        assert_eq!(
            q.counts(),
            Counts {
                sendable: 2,
                waiting: 1,
                in_flight: 0
            }
        );
        // Nothing failed: all sendable, in flight or not.
        let mut q = queue(&[(1, "a", 0, 0), (2, "a", 0, 0), (3, "b", 0, 0)]);
        q.start(&ids(&[1]));
        assert_eq!(
            q.counts(),
            Counts {
                sendable: 3,
                waiting: 0,
                in_flight: 1
            }
        );
    }
}
