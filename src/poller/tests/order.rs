//! What reaches the stream: every version the upstream shows, once and in
//! stamp order, classified against the record index; a re-read window
//! appends nothing, also after a restart.

use super::{Order, Rig, numbered};
use crate::{config::Paging, events::Op};

/// Polls after rounds of creates, edits and a delete: each poll appends
/// exactly the versions written since the last, in stamp order, and
/// nothing twice (`Rig::stream` checks both of every event).
async fn every_version_once_in_order(paging: Paging, order: Order, overlap: u64) {
    let mut rig = Rig::new(paging, order, overlap);
    // Written out of name order, so a name-ordered page mixes stamps.
    rig.model.data().write_all("m c x a q f k b t e h");
    let mut expected = numbered("m c x a q f k b t e h");
    let report = rig.polled().await;
    assert!(report.loading, "the first poll is the initial load");
    assert_eq!(rig.versions().await, expected, "{paging:?} {order:?}");
    let rounds = ["a t z c", "k", "b y m", "", "x"];
    for (i, writes) in rounds.iter().enumerate() {
        let top = rig.cursor().await;
        {
            let mut data = rig.model.data();
            data.write_all(writes);
            if i == 1 {
                data.delete("q");
            }
            expected.extend(data.versions_above(top));
        }
        let report = rig.polled().await;
        assert!(!report.loading);
        assert_eq!(rig.versions().await, expected, "{paging:?} {order:?} {i}");
    }
    let events = rig.stream().await;
    let op = |v: &str| {
        events
            .iter()
            .find(|e| format!("{}@{}", e.record, e.stamp) == v)
    };
    assert_eq!(op("a@12").unwrap().op, Op::Updated);
    assert_eq!(op("z@14").unwrap().op, Op::Created);
    assert_eq!(op("q@17").unwrap().op, Op::Deleted);
    assert!(op("m@1").unwrap().snapshot && !op("m@20").unwrap().snapshot);
}

#[tokio::test(start_paused = true)]
async fn pages_in_name_order_append_every_version_once_in_order() {
    every_version_once_in_order(Paging::Pages, Order::Name, 0).await;
    every_version_once_in_order(Paging::Pages, Order::Name, 5).await;
}

#[tokio::test(start_paused = true)]
async fn pages_in_stamp_order_append_every_version_once_in_order() {
    every_version_once_in_order(Paging::Pages, Order::Stamp, 5).await;
}

#[tokio::test(start_paused = true)]
async fn keyset_appends_every_version_once_in_order() {
    every_version_once_in_order(Paging::Keyset, Order::Stamp, 0).await;
    every_version_once_in_order(Paging::Keyset, Order::Stamp, 5).await;
}

/// A window read again (an overlap reaching back over everything) appends
/// nothing: the record index drops each version it holds, also for a new
/// poller that knows nothing but the store (a restart).
async fn a_rerun_appends_nothing(paging: Paging, order: Order) {
    let mut rig = Rig::new(paging, order, 1000);
    rig.model.data().write_all("d b a c f e g");
    rig.polled().await;
    let before = rig.versions().await;
    assert_eq!(before.len(), 7);
    let again = rig.polled().await;
    assert_eq!(again.sync, 0, "the window reaches back to the start");
    assert_eq!(
        again.outcome.appended(),
        0,
        "{paging:?}: {:?}",
        again.outcome
    );
    rig.restart();
    let restarted = rig.polled().await;
    assert_eq!((restarted.sync, restarted.loading), (0, false));
    let outcome = restarted.outcome;
    assert_eq!(
        outcome.appended(),
        0,
        "{paging:?} after a restart: {outcome:?}"
    );
    assert_eq!(outcome.duplicates, 7, "{paging:?}: {outcome:?}");
    assert_eq!(rig.versions().await, before);
}

#[tokio::test(start_paused = true)]
async fn a_rerun_of_the_same_window_appends_nothing() {
    a_rerun_appends_nothing(Paging::Pages, Order::Name).await;
    a_rerun_appends_nothing(Paging::Keyset, Order::Stamp).await;
}

/// A soft delete is a `deleted` event carrying the record's `deleted_at`,
/// clearing it a `restored` one; the record stays in the delta throughout.
#[tokio::test(start_paused = true)]
async fn a_deleted_record_is_deleted_then_restored() {
    for (paging, order) in [(Paging::Pages, Order::Name), (Paging::Keyset, Order::Stamp)] {
        let mut rig = Rig::new(paging, order, 2);
        rig.model.data().write_all("a b c d e");
        rig.polled().await;
        rig.model.data().delete("b");
        rig.polled().await;
        rig.model.data().restore("b");
        rig.model.data().write("c");
        rig.polled().await;
        let events = rig.stream().await;
        let ops: Vec<_> = events
            .iter()
            .map(|e| (e.record.as_str(), e.stamp, e.op))
            .collect();
        assert_eq!(
            ops[5..],
            [
                ("b", 6, Op::Deleted),
                ("b", 7, Op::Restored),
                ("c", 8, Op::Updated)
            ],
            "{paging:?}"
        );
        assert!(
            events[5].data.contains(r#""deleted_at":"2026-12-01"#),
            "{}",
            events[5].data
        );
        assert!(
            events[6].data.contains(r#""deleted_at":null"#),
            "{}",
            events[6].data
        );
    }
}
