use super::*;
use crate::store::contract::record;

fn id(stamp: u64, seq: u64) -> StreamId {
    StreamId::new(stamp, seq)
}

fn deleted(rid: &str, stamp: u64) -> UpstreamRecord {
    UpstreamRecord {
        deleted: true,
        ..record(rid, stamp)
    }
}

/// A store whose stream ends (and issued up to) `top`, trimmed through
/// `trimmed`, holding `index` for the chunk's records.
fn held(index: &[Option<IndexEntry>], top: StreamId, trimmed: StreamId) -> Held<'_> {
    Held {
        index,
        top,
        issued: top,
        trimmed,
    }
}

fn entry(stamp: u64) -> Option<IndexEntry> {
    Some(IndexEntry::new(stamp, false))
}

/// The planned events as (record, id, op).
fn events(p: &Plan) -> Vec<(usize, StreamId, Op)> {
    p.events.iter().map(|e| (e.record, e.id, e.op)).collect()
}

#[test]
fn new_records_are_created_in_stamp_order_and_old_stamps_go_late() {
    let records = [record("a", 5), deleted("b", 7), record("c", 3)];
    let p = plan(
        &records,
        held(&[None; 3], id(4, 0), StreamId::ZERO),
        Rules::default(),
    )
    .unwrap();
    assert_eq!(
        events(&p),
        [
            (0, id(5, 0), Op::Created),
            (1, id(7, 0), Op::Deleted),
            (2, id(7, 1), Op::Created)
        ]
    );
    assert_eq!(p.last, id(7, 1));
    assert_eq!(p.outcome.created, 2);
    assert_eq!(p.outcome.deleted, 1);
    assert_eq!(p.outcome.late, 1);
    // The late event's index entry points at it; the others at <stamp>-0.
    assert_eq!(
        p.index[2],
        (
            2,
            IndexEntry {
                at: Some(id(7, 1)),
                ..IndexEntry::new(3, false)
            }
        )
    );
    assert_eq!(p.index[0].1.at, None);
    assert!(p.keep.is_empty(), "no bookkeeping without keep");
}

#[test]
fn late_events_go_above_the_last_issued_id() {
    let records = [record("a", 3)];
    let h = Held {
        issued: id(9, 2),
        ..held(&[None], id(8, 0), StreamId::ZERO)
    };
    let p = plan(&records, h, Rules::default()).unwrap();
    assert_eq!(events(&p), [(0, id(9, 3), Op::Created)]);
}

#[test]
fn a_record_twice_in_a_chunk_sees_its_earlier_version() {
    let records = [
        record("a", 5),
        deleted("a", 6),
        record("a", 6),
        record("a", 8),
    ];
    let p = plan(
        &records,
        held(&[entry(2), None, None, None], id(4, 0), StreamId::ZERO),
        Rules::default(),
    )
    .unwrap();
    assert_eq!(
        events(&p),
        [
            (0, id(5, 0), Op::Updated),
            (1, id(6, 0), Op::Deleted),
            (3, id(8, 0), Op::Restored)
        ]
    );
    assert_eq!(p.events[1].prev, entry(5), "the chunk's earlier version");
    assert_eq!(p.outcome.duplicates, 1);
    assert_eq!(
        p.index,
        [(0, IndexEntry::new(8, false))],
        "one final entry per record"
    );
}

#[test]
fn duplicates_and_regressions_are_counted_apart() {
    let records = [record("a", 5), record("b", 3), record("c", 9)];
    let index = [entry(5), entry(4), entry(8)];
    let p = plan(
        &records,
        held(&index, id(8, 0), StreamId::ZERO),
        Rules::default(),
    )
    .unwrap();
    assert_eq!(events(&p), [(2, id(9, 0), Op::Updated)]);
    assert_eq!((p.outcome.duplicates, p.outcome.regressions), (1, 1));
    assert_eq!(p.events[0].prev_stamp(), Some(8));
}

#[test]
fn nothing_to_append_leaves_the_last_id_at_the_top() {
    let p = plan(
        &[record("a", 5)],
        held(&[entry(5)], id(8, 2), StreamId::ZERO),
        Rules::default(),
    )
    .unwrap();
    assert!(p.events.is_empty() && p.index.is_empty());
    assert_eq!(p.last, id(8, 2));
}

#[test]
fn a_rebase_appends_any_version_that_differs() {
    let records = [record("a", 3), record("b", 4), deleted("c", 4)];
    let index = [entry(5), entry(4), entry(4)];
    let rules = Rules {
        rebase: true,
        ..Rules::default()
    };
    let p = plan(&records, held(&index, id(5, 0), StreamId::ZERO), rules).unwrap();
    assert_eq!(
        events(&p),
        [(0, id(5, 1), Op::Updated), (2, id(5, 2), Op::Deleted)]
    );
    assert_eq!((p.outcome.duplicates, p.outcome.regressions), (1, 0));
    // Without rebase the lower stamp is a regression.
    let p = plan(
        &records,
        held(&index, id(5, 0), StreamId::ZERO),
        Rules::default(),
    )
    .unwrap();
    assert_eq!((p.outcome.duplicates, p.outcome.regressions), (2, 1));
}

#[test]
fn a_tail_below_the_highest_id_is_lost_and_raised_once() {
    let rules = Rules {
        highest: Some(id(9, 0)),
        ..Rules::default()
    };
    let lost = plan(
        &[record("a", 10)],
        held(&[None], id(7, 0), StreamId::ZERO),
        rules,
    )
    .unwrap_err();
    assert_eq!(
        lost,
        TailLost {
            top: id(7, 0),
            highest: id(9, 0),
            raise: true
        }
    );
    assert_eq!(
        lost.refusal(),
        Refusal::Failover {
            top: id(7, 0),
            highest: id(9, 0)
        }
    );
    // Raised already: refused again, but nothing to raise.
    let h = Held {
        issued: id(9, 0),
        ..held(&[None], id(7, 0), StreamId::ZERO)
    };
    assert!(!plan(&[record("a", 10)], h, rules).unwrap_err().raise);
    // At the highest ID: appended.
    assert!(
        plan(
            &[record("a", 10)],
            held(&[None], id(9, 0), StreamId::ZERO),
            rules
        )
        .is_ok()
    );
}

#[test]
fn keep_bookkeeping_follows_late_and_trimmed_versions() {
    let rules = Rules {
        keep: true,
        ..Rules::default()
    };
    let late_at = |stamp, at| {
        Some(IndexEntry {
            at: Some(at),
            ..IndexEntry::new(stamp, false)
        })
    };
    // a: its indexed version's event (3-0) was trimmed; now late.
    // b: its indexed version was late (6-1), now at its own stamp.
    // c: seen again at the indexed version, whose event was trimmed.
    // d: seen again at the indexed version, whose event is still there.
    let records = [
        record("a", 4),
        record("b", 12),
        record("c", 2),
        record("d", 7),
    ];
    let index = [entry(3), late_at(5, id(6, 1)), entry(2), entry(7)];
    let p = plan(&records, held(&index, id(10, 0), id(3, 0)), rules).unwrap();
    assert_eq!(
        p.keep,
        [
            Keep::PrevTrimmed { record: 0 },
            Keep::NowLate {
                record: 0,
                stamp: 4
            },
            Keep::NoLongerLate { record: 1 },
            Keep::DuplicateOfTrimmed {
                record: 2,
                entry: IndexEntry::new(2, false)
            },
        ]
    );
    assert_eq!(
        p.events[1].prev_id(),
        Some(id(6, 1)),
        "previd names the late event"
    );
    assert_eq!(p.events[0].prev_id(), None);
    assert!(needs_copy(None, 2) && needs_copy(Some(1), 2) && !needs_copy(Some(2), 2));
}
