//! Walks over a changing upstream: records edited while a `pages` walk is
//! under way (the settle), a row leaving a shared stamp during a `keyset`
//! walk, and a late commit caught by the overlap window.

use super::{
    Order, Rig,
    model::{Answer, Request},
};
use crate::config::Paging;

/// After page 1 was answered, `a` (on page 1) and then `k` (on page 3)
/// are edited: the walk sees `k`'s new stamp but not `a`'s lower one. With
/// no overlap to re-read it, only the settle keeps `a@13` from being
/// skipped for good; and `a`'s old version, overwritten within the poll,
/// is not sent.
#[tokio::test(start_paused = true)]
async fn an_edit_behind_a_pages_walk_is_neither_lost_nor_duplicated() {
    let mut rig = Rig::new(Paging::Pages, Order::Name, 0);
    rig.model.data().write_all("h c k a f l b j e i d g");
    let page_2 = |r: Request| (r.sync, r.page) == (0, 2);
    rig.model.once(page_2, |data| {
        assert_eq!((data.write("a"), data.write("k")), (13, 14));
        Answer::Serve
    });
    let report = rig.polled().await;
    let expected = rig.model.data().versions();
    assert_eq!(expected[10..], ["a@13", "k@14"]);
    assert_eq!(rig.versions().await, expected);
    assert!(report.settles >= 1, "{report:?}");
    let again = rig.polled().await;
    assert_eq!(again.outcome.appended(), 0);
    assert_eq!(rig.versions().await, expected);
}

/// A bulk update gives eight rows stamp 1. At page size 4 the keyset poll
/// reads that stamp with offset pages; `b` leaves it (an edit) after the
/// first page, which shifts `e` from page 2 onto page 1, unseen. The walk
/// notices the leave in the counts and walks again, so `e@1` is not lost
/// (no overlap re-reads it), and `b@2` comes with the next poll.
#[tokio::test(start_paused = true)]
async fn a_row_leaving_a_shared_stamp_during_a_keyset_walk_loses_nothing() {
    let mut rig = Rig::new(Paging::Keyset, Order::Stamp, 0);
    rig.model.data().bulk("a b c d e f g h i");
    let page_2 = |r: Request| (r.sync, r.page) == (0, 2);
    rig.model.once(page_2, |data| {
        assert_eq!(data.write("b"), 2);
        Answer::Serve
    });
    rig.polled().await;
    let at_one: Vec<String> = "a b c d e f g h i"
        .split(' ')
        .map(|id| format!("{id}@1"))
        .collect();
    assert_eq!(rig.versions().await, at_one);
    rig.polled().await;
    let mut expected = at_one;
    expected.push("b@2".into());
    assert_eq!(rig.versions().await, expected);
}

/// `d` takes stamp 4 but commits only after `e` and `f` (5, 6) were polled:
/// the next poll re-reads the `overlap` stamps below the cursor and
/// appends `d@4` as a late event; with `pages` and with `keyset`.
#[tokio::test(start_paused = true)]
async fn a_late_commit_within_overlap_is_appended() {
    for (paging, order) in [(Paging::Pages, Order::Name), (Paging::Keyset, Order::Stamp)] {
        let mut rig = Rig::new(paging, order, 3);
        {
            let mut data = rig.model.data();
            data.write_all("a b c");
            assert_eq!(data.write_late("d"), 4);
            data.write_all("e f");
        }
        rig.polled().await;
        assert_eq!(rig.versions().await, ["a@1", "b@2", "c@3", "e@5", "f@6"]);
        rig.model.data().commit_late("d");
        let report = rig.polled().await;
        assert_eq!((report.sync, report.outcome.late), (3, 1), "{paging:?}");
        let events = rig.stream().await;
        let last = events.last().unwrap();
        assert_eq!((last.record.as_str(), last.stamp), ("d", 4), "{paging:?}");
        assert!(
            last.id.stamp == 6 && last.id.seq > 0,
            "a late event: {}",
            last.id
        );
    }
}
