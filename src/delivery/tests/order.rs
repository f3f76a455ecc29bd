//! What goes out and in what order: signed requests, settled on success;
//! per-record order, where a failing event holds back its own record and
//! nothing else; and the address policy, checked before the transport.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Duration;

use super::{Reply, Rig, SECRET, SUB};
use crate::{
    delivery::worker::Step,
    events::StreamId,
    subscription::{WebhookUrl, state::Outcome},
};

/// Each event goes out once, signed with the subscription's secret, under
/// its CloudEvents id as `webhook-id`; a success settles it, so nothing
/// stays pending and every attempt is logged as delivered.
#[tokio::test(start_paused = true)]
async fn a_success_settles_the_event_sent_signed() {
    let rig = Rig::new(|_, _| {}, |_, _| Reply::Status(204)).await;
    rig.append(&["a@1", "b@2", "a@3"]).await;
    let mut st = rig.worker.state();
    rig.round(&mut st).await;
    st.answers().await;
    rig.step(&mut st).await;
    assert!(matches!(rig.step(&mut st).await, Step::Idle(_)));
    rig.worker.close(st).await;
    let mut first = rig.rx.versions()[..2].to_vec();
    first.sort();
    assert_eq!(first, ["a@1", "b@2"], "two records at once");
    assert_eq!(rig.rx.versions()[2], "a@3", "a@3 after a@1");
    for r in rig.rx.requests() {
        assert!(r.signed_with(SECRET), "{:?}", r.headers);
        assert!(!r.signed_with("whsec_b3RoZXI="));
        assert_eq!(
            r.header("webhook-id"),
            r.events()[0]["id"].as_str().unwrap()
        );
        assert_eq!(r.header("content-type"), "application/cloudevents+json");
    }
    assert!(rig.pending().await.is_empty());
    let position = rig.store.position(SUB, &rig.table).await.unwrap();
    assert_eq!(position, Some(StreamId::new(3, 0)));
    let attempts = rig.store.attempts(SUB, 10).await.unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a.outcome == Outcome::Delivered));
}

/// a@1 fails once: b's events flow meanwhile, a@3 waits behind a@1, and
/// goes out only after a@1's retry was delivered.
#[tokio::test(start_paused = true)]
async fn a_failing_event_holds_back_its_own_record_only() {
    let tries = Arc::new(AtomicUsize::new(0));
    let of_a1 = tries.clone();
    let rig = Rig::new(
        |_, _| {},
        move |r, _| {
            let first = r.versions().contains(&"a@1".to_string())
                && of_a1.fetch_add(1, Ordering::SeqCst) == 0;
            Reply::Status(if first { 500 } else { 200 })
        },
    )
    .await;
    rig.append(&["a@1", "b@2", "a@3", "b@4"]).await;
    let mut st = rig.worker.state();
    // a@1 fails, b@2 goes through, then b@4; a@3 waits.
    rig.round(&mut st).await;
    st.answers().await;
    rig.step(&mut st).await;
    assert!(matches!(rig.step(&mut st).await, Step::Idle(_)));
    let mut sent = rig.rx.versions();
    sent[..2].sort();
    assert_eq!(sent, ["a@1", "b@2", "b@4"]);
    rig.flushed(&st).await;
    let waiting: Vec<_> = rig
        .pending()
        .await
        .into_iter()
        .map(|(v, s)| (v, s.attempts))
        .collect();
    assert_eq!(waiting, [("a@1".to_string(), 1), ("a@3".to_string(), 0)]);
    // Still held at the last millisecond before a@1's retry.
    let due = rig.retry_state_of("a@1").await.next_at_ms;
    rig.wait(Duration::from_millis(due - rig.now().wall_ms - 1))
        .await;
    assert!(matches!(rig.step(&mut st).await, Step::Idle(_)));
    assert_eq!(rig.rx.requests().len(), 3, "a@3 overtook a@1");
    rig.wait(Duration::from_millis(1)).await;
    rig.round(&mut st).await;
    st.answers().await;
    rig.step(&mut st).await;
    rig.worker.close(st).await;
    assert_eq!(rig.rx.versions()[3..], ["a@1", "a@3"]);
    assert!(rig.pending().await.is_empty());
}

/// A literal private address is refused by the address policy before any
/// request is made; the refusal is a failure retried like any other.
#[tokio::test(start_paused = true)]
async fn the_address_policy_refuses_before_the_transport() {
    let rig = Rig::new(
        |s, _| s.url = WebhookUrl::parse("http://10.0.0.1/hook").unwrap(),
        |_, _| Reply::Status(204),
    )
    .await;
    rig.append(&["a@1"]).await;
    let mut st = rig.worker.state();
    rig.round(&mut st).await;
    rig.worker.close(st).await;
    assert!(rig.rx.requests().is_empty(), "the request went out");
    assert_eq!(rig.retry_state().await.attempts, 1);
    let attempt = &rig.store.attempts(SUB, 1).await.unwrap()[0];
    assert_eq!(attempt.outcome, Outcome::Refused);
    let error = attempt.error.as_deref().unwrap_or_default();
    assert!(error.contains("SSRF guard"), "{error}");
}
