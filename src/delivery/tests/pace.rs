//! The receiver's pace, on the worker's own loop: `max_in_flight` requests
//! out at most and never two of one record, `rate_limit` spacing the
//! starts, and the waiting-retry limit pausing claims.

use std::{collections::BTreeMap, time::Duration};

use super::{Reply, Rig, SUB};
use crate::{delivery::worker::Step, events::StreamId};

/// Each record's stamps in the order they arrived.
fn by_record(versions: &[String]) -> BTreeMap<&str, Vec<u64>> {
    let mut records: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for v in versions {
        let (record, stamp) = v.split_once('@').unwrap();
        records
            .entry(record)
            .or_default()
            .push(stamp.parse().unwrap());
    }
    records
}

/// Twenty events, each answered after 2 s: up to `max_in_flight`
/// requests are out at once, never two of one record (so with two records,
/// two at most), and each record's events arrive in stamp order.
#[tokio::test(start_paused = true)]
async fn max_in_flight_bounds_the_requests_out_never_two_of_one_record() {
    for (max_in_flight, records) in [(4, 10), (4, 2), (1, 10)] {
        let rig = Rig::new(
            |s, _| s.max_in_flight = max_in_flight,
            |_, _| Reply::Slow(Duration::from_secs(2), 200),
        )
        .await;
        let versions: Vec<String> = (1..=20).map(|i| format!("r{}@{i}", i % records)).collect();
        let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
        rig.append(&versions).await;
        rig.run(Duration::from_secs(120), |rx| rx.requests().len() >= 20)
            .await;
        let (most, overlaps) = rig.rx.most_out();
        let allowed = (max_in_flight as usize).min(records);
        assert_eq!(most, allowed, "requests out at once, {records} records");
        assert_eq!(overlaps, 0, "two requests of one record were out at once");
        let got = rig.rx.versions();
        assert_eq!(got.len(), 20, "each event once: {got:?}");
        for (record, stamps) in by_record(&got) {
            assert!(stamps.is_sorted(), "{record} out of order: {stamps:?}");
        }
        assert!(rig.pending().await.is_empty());
    }
}

/// `rate_limit` 2 spaces the starts of requests half a second apart, also
/// with requests to spare in the window.
#[tokio::test(start_paused = true)]
async fn rate_limit_spaces_the_starts_of_requests() {
    let rig = Rig::new(
        |s, _| {
            s.rate_limit = Some(2);
            s.max_in_flight = 8;
        },
        |_, _| Reply::Status(200),
    )
    .await;
    rig.append(&["a@1", "b@2", "c@3", "d@4", "e@5", "f@6"])
        .await;
    rig.run(Duration::from_secs(60), |rx| rx.requests().len() >= 6)
        .await;
    let at: Vec<_> = rig.rx.requests().iter().map(|r| r.at).collect();
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(500), "starts {gap:?} apart");
    }
    assert!(at[5] - at[0] < Duration::from_secs(4), "slower than asked");
}

/// With `max_waiting_retries` at 2, two events waiting for retries stop
/// the claims: a new event stays in the stream, unclaimed, until the
/// retries are delivered.
#[tokio::test(start_paused = true)]
async fn the_waiting_retry_limit_pauses_claims() {
    let rig = Rig::new(
        |_, s| s.max_waiting = 2,
        |_, n| Reply::Status(if n < 2 { 500 } else { 200 }),
    )
    .await;
    rig.append(&["a@1", "b@2"]).await;
    let mut st = rig.worker.state();
    rig.round(&mut st).await;
    rig.append(&["c@3"]).await;
    assert!(matches!(rig.step(&mut st).await, Step::Idle(_)));
    let position = rig.store.position(SUB, &rig.table).await.unwrap();
    assert_eq!(position, Some(StreamId::new(2, 0)), "c@3 was claimed");
    assert_eq!(rig.rx.requests().len(), 2);
    // The retries are delivered: claiming resumes.
    rig.wait(Duration::from_secs(7)).await;
    rig.round(&mut st).await;
    st.answers().await;
    rig.step(&mut st).await;
    rig.worker.close(st).await;
    assert_eq!(rig.rx.versions()[4..], ["c@3"]);
    assert!(rig.pending().await.is_empty());
}
