//! Batches (`batch_size` > 1): never two events of one record in one, and
//! a failed batch retried as the same batch, with the same `webhook-id`
//! (docs/webhooks.md, "Deduplicate on `webhook-id`").

use std::time::Duration;

use super::{Reply, Rig, SECRET};

/// Up to `batch_size` events of distinct records per request, as one
/// batch body whose `webhook-id` is the first event's id + `+<n - 1>`.
#[tokio::test(start_paused = true)]
async fn a_batch_never_holds_two_events_of_one_record() {
    let rig = Rig::new(
        |s, _| {
            s.batch_size = 3;
            s.max_in_flight = 1;
        },
        |_, _| Reply::Status(200),
    )
    .await;
    rig.append(&["a@1", "a@2", "b@3", "c@4"]).await;
    let mut st = rig.worker.state();
    rig.round(&mut st).await;
    st.answers().await;
    rig.step(&mut st).await;
    rig.worker.close(st).await;
    let requests = rig.rx.requests();
    let batches: Vec<_> = requests.iter().map(|r| r.versions()).collect();
    assert_eq!(batches, [vec!["a@1", "b@3", "c@4"], vec!["a@2"]]);
    let first = &requests[0];
    assert_eq!(
        first.header("content-type"),
        "application/cloudevents-batch+json"
    );
    assert_eq!(first.header("webhook-id"), "sim:patients:a:1+2");
    assert!(first.signed_with(SECRET));
    assert!(rig.pending().await.is_empty());
}

/// A batch that failed goes out again as the same batch: same events,
/// same `webhook-id`, signed again, and events appended meanwhile are not
/// merged into it.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_is_retried_as_the_same_batch() {
    let rig = Rig::new(
        |s, _| {
            s.batch_size = 3;
            s.max_in_flight = 1;
        },
        |_, n| Reply::Status(if n == 0 { 503 } else { 200 }),
    )
    .await;
    rig.append(&["a@1", "b@2"]).await;
    let mut st = rig.worker.state();
    rig.round(&mut st).await;
    rig.append(&["c@3", "d@4"]).await;
    rig.wait(Duration::from_secs(7)).await;
    rig.round(&mut st).await;
    st.answers().await;
    rig.step(&mut st).await;
    rig.worker.close(st).await;
    let requests = rig.rx.requests();
    let batches: Vec<_> = requests.iter().map(|r| r.versions()).collect();
    assert_eq!(
        batches,
        [vec!["a@1", "b@2"], vec!["a@1", "b@2"], vec!["c@3", "d@4"]]
    );
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    assert!(requests.iter().all(|r| r.signed_with(SECRET)));
    assert!(rig.pending().await.is_empty());
}
