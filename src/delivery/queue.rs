//! The pending queue of one worker and the rule that picks what to send:
//! stream order, and only the oldest pending entry of each record, so a
//! record waiting for a retry holds back itself and nothing else.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use super::model::RetryState;
use crate::events::{Event, StreamId};

pub struct Pending {
    pub event: Arc<Event>,
    pub state: RetryState,
}

/// Up to `max` due entries in stream order, skipping every entry of a record
/// that has an earlier entry still pending (per-record order); also the
/// earliest time a blocked-free entry becomes due.
pub fn due_batch(
    q: &BTreeMap<StreamId, Pending>,
    now: u64,
    max: usize,
) -> (Vec<StreamId>, Option<u64>) {
    let mut seen_records = HashSet::new();
    let mut batch = Vec::new();
    let mut next_due: Option<u64> = None;
    for (id, p) in q {
        if !seen_records.insert(p.event.record.as_str()) {
            continue;
        }
        if p.state.next_at_ms <= now {
            batch.push(*id);
            if batch.len() == max {
                // Full: when to wake next only matters for an empty batch.
                break;
            }
        } else {
            next_due = Some(next_due.map_or(p.state.next_at_ms, |n| n.min(p.state.next_at_ms)));
        }
    }
    (batch, next_due)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Op;

    fn pending(stamp: u64, record: &str, next_at: u64) -> (StreamId, Pending) {
        let e = Event {
            id: StreamId::new(stamp, 0),
            op: Op::Updated,
            record: record.into(),
            stamp,
            prev: None,
            snapshot: false,
            observed: 0,
            data: "{}".into(),
        };
        (
            e.id,
            Pending {
                event: Arc::new(e),
                state: RetryState {
                    attempts: 0,
                    next_at_ms: next_at,
                },
            },
        )
    }

    #[test]
    fn a_waiting_record_holds_back_only_itself() {
        let q: BTreeMap<_, _> = [
            pending(1, "a", 500),
            pending(2, "b", 0),
            pending(3, "a", 0),
            pending(4, "c", 0),
        ]
        .into_iter()
        .collect();
        let (batch, next) = due_batch(&q, 100, 10);
        assert_eq!(batch, vec![StreamId::new(2, 0), StreamId::new(4, 0)]);
        assert_eq!(next, Some(500));
        let (batch, _) = due_batch(&q, 600, 2);
        assert_eq!(batch, vec![StreamId::new(1, 0), StreamId::new(2, 0)]);
    }
}
