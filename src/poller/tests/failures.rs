//! A failed page fails the poll and moves no cursor past what was not
//! read; the next poll resumes, and the poll loop waits with backoff.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Order, Rig, model::Answer, numbered};
use crate::{config::Paging, events::StreamId, poller::PollError};

/// Written so that page 1 in name order holds the highest stamps.
const IDS: &str = "l k j i h g f e d c b a";

/// Page 2 of the first walk fails: the `pages` poll commits nothing (page
/// 1's records carry the highest stamps, so a cursor moved on them would
/// skip the rest for good, with no overlap); the next poll loads all.
#[tokio::test(start_paused = true)]
async fn a_failed_page_moves_no_cursor() {
    let mut rig = Rig::new(Paging::Pages, Order::Name, 0);
    rig.model.data().write_all(IDS);
    rig.model.once(|r| r.page == 2, |_| Answer::Fail(503));
    let err = rig.poll().await.unwrap_err();
    assert!(matches!(err, PollError::Upstream(_)), "{err}");
    assert!(err.to_string().contains("page=2"), "{err}");
    assert_eq!(rig.store.last_id(&rig.table).await.unwrap(), StreamId::ZERO);
    let report = rig.polled().await;
    assert!(report.loading, "the load goes on after the failed poll");
    assert_eq!(rig.versions().await, numbered(IDS));
}

/// A `keyset` poll commits page by page: a failed page fails the poll and
/// leaves the stream at the pages before it, every stamp complete; the next
/// poll resumes there and appends each remaining version once.
#[tokio::test(start_paused = true)]
async fn a_failed_keyset_page_leaves_the_pages_before_it() {
    let mut rig = Rig::new(Paging::Keyset, Order::Stamp, 0);
    rig.model.data().write_all(IDS);
    rig.model.once(|r| r.sync >= 5, |_| Answer::Fail(500));
    let err = rig.poll().await.unwrap_err();
    assert!(err.to_string().contains("sync=6"), "{err}");
    let expected = numbered(IDS);
    let prefix = rig.versions().await;
    assert!(!prefix.is_empty() && prefix.len() < 12, "{prefix:?}");
    assert_eq!(prefix, expected[..prefix.len()]);
    assert_eq!(rig.cursor().await, prefix.len() as u64);
    rig.polled().await;
    assert_eq!(rig.versions().await, expected);
}

/// The poll loop: three failed polls in a row wait longer each time (a
/// backoff from the 30 s interval), the cursor holding; the fourth loads
/// the table, and the next poll comes one interval later. An hour of the
/// loop's time passes in milliseconds.
#[tokio::test(start_paused = true)]
async fn failed_polls_are_retried_with_backoff() {
    let rig = Rig::new(Paging::Pages, Order::Name, 0);
    rig.model.data().write_all(IDS);
    rig.model.on_request(|_, r| match r.nth {
        0..3 => Answer::Fail(502),
        _ => Answer::Serve,
    });
    let cancel = CancellationToken::new();
    let running = tokio::spawn(rig.poller.run(cancel.clone()));
    let model = rig.model.clone();
    let polls = || {
        let requests = model.requests();
        let firsts = requests.into_iter().filter(|(r, _)| r.page == 1);
        firsts.map(|(_, at)| at).collect::<Vec<_>>()
    };
    while polls().len() < 7 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cancel.cancel();
    running.await.unwrap();
    let at = polls();
    let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    // Backoff after failure n: half to all of 30 s * 2^(n-1).
    assert!((15..=30).contains(&gaps[0]), "{gaps:?}");
    assert!((30..=60).contains(&gaps[1]), "{gaps:?}");
    assert!((60..=120).contains(&gaps[2]), "{gaps:?}");
    // The fourth poll walks twice (a settle walk) then waits the interval.
    assert_eq!(gaps[4], 30, "{gaps:?}");
    let events = rig
        .store
        .read(&rig.table, StreamId::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 12);
}
