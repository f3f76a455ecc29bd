//! Retries: the schedule and its bounds, `Retry-After`, timeouts, the dead
//! letters after the last retry, `410 Gone`, `disable_after`, and the
//! pull-forward after an outage (docs/webhooks.md, "Order and retries").

use std::time::Duration;

use super::{HOUR, MINUTE, Reply, Rig, SUB};
use crate::delivery::worker::Step;

/// A receiver that always fails: each retry waits its scheduled delay
/// (±20 %) and is not sent a millisecond early; after the last one the
/// event goes to the dead letters with every attempt counted.
#[tokio::test(start_paused = true)]
async fn failures_wait_out_the_schedule_then_go_to_the_dead_letters() {
    let rig = Rig::new(|_, _| {}, |_, _| Reply::Status(500)).await;
    rig.append(&["a@1"]).await;
    let delays = rig.worker.schedule.delays.clone();
    let mut st = rig.worker.state();
    for (failed, delay) in (1..).zip(&delays) {
        let sent_at = rig.now().wall_ms;
        rig.round(&mut st).await;
        let state = rig.retry_state().await;
        assert_eq!(state.attempts, failed);
        let waits = Duration::from_millis(state.next_at_ms - sent_at);
        assert!(
            waits >= delay.mul_f64(0.8) && waits <= delay.mul_f64(1.2),
            "retry {failed} waits {waits:?}, scheduled {delay:?}"
        );
        rig.wait(waits - Duration::from_millis(1)).await;
        assert!(matches!(rig.step(&mut st).await, Step::Idle(_)));
        assert_eq!(rig.rx.requests().len(), failed as usize, "sent early");
        rig.wait(Duration::from_millis(1)).await;
    }
    rig.round(&mut st).await;
    let at = rig.now().wall_ms;
    rig.worker.close(st).await;
    assert_eq!(rig.rx.requests().len(), delays.len() + 1);
    let dead = rig.store.dead_letters(SUB).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts as usize, delays.len() + 1);
    assert_eq!(
        (dead[0].at_ms, dead[0].last_error.as_str()),
        (at, "HTTP 500")
    );
    assert!(rig.pending().await.is_empty(), "a dead letter is settled");
}

/// A `Retry-After` longer than the scheduled delay wins, up to
/// `max_retry_after`; a shorter one leaves the schedule's delay.
#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_max_retry_after() {
    let asked = ["36000", "1800", "1"];
    let rig = Rig::new(
        |_, s| s.delays = vec![MINUTE; 4],
        move |_, n| Reply::RetryAfter(429, asked[n]),
    )
    .await;
    rig.append(&["a@1"]).await;
    let mut st = rig.worker.state();
    let mut waits = Vec::new();
    for _ in asked {
        let sent_at = rig.now().wall_ms;
        rig.round(&mut st).await;
        let next = rig.retry_state().await.next_at_ms;
        waits.push(Duration::from_millis(next - sent_at));
        rig.wait(Duration::from_millis(next - sent_at)).await;
    }
    // Ten hours asked for, one allowed; half an hour; a second is less
    // than the schedule's minute, which stands.
    assert_eq!(waits[..2], [HOUR, 30 * MINUTE]);
    assert!(waits[2] >= MINUTE.mul_f64(0.8), "{:?}", waits[2]);
    rig.worker.close(st).await;
}

/// A receiver that never answers is given up on at `request_timeout` (on
/// the paused clock) and retried like any failure; the attempt says why.
#[tokio::test(start_paused = true)]
async fn a_timeout_is_a_failure_retried_on_the_schedule() {
    let rig = Rig::new(
        |_, _| {},
        |_, n| {
            if n == 0 {
                Reply::Hang
            } else {
                Reply::Status(204)
            }
        },
    )
    .await;
    rig.append(&["a@1"]).await;
    let mut st = rig.worker.state();
    let sent = tokio::time::Instant::now();
    rig.round(&mut st).await;
    let took = sent.elapsed();
    assert!(
        took >= super::TIMEOUT && took < super::TIMEOUT + Duration::from_secs(2),
        "given up after {took:?}"
    );
    let state = rig.retry_state().await;
    assert_eq!(state.attempts, 1);
    rig.wait(Duration::from_secs(7)).await;
    rig.round(&mut st).await;
    rig.worker.close(st).await;
    assert!(rig.pending().await.is_empty());
    let attempts = rig.store.attempts(SUB, 10).await.unwrap();
    let errors: Vec<_> = attempts.iter().map(|a| a.error.clone()).collect();
    assert!(
        errors.contains(&Some("timed out (delivery.request_timeout)".into())),
        "{errors:?}"
    );
}

/// `410 Gone` disables the subscription at once, with the reason.
#[tokio::test(start_paused = true)]
async fn gone_disables_the_subscription() {
    let rig = Rig::new(|_, _| {}, |_, _| Reply::Status(410)).await;
    rig.append(&["a@1", "b@2"]).await;
    let mut st = rig.worker.state();
    assert_eq!(rig.step(&mut st).await, Step::Busy);
    st.answers().await;
    assert_eq!(rig.step(&mut st).await, Step::Disabled);
    rig.worker.close(st).await;
    let sub = rig.store.subscription(SUB).await.unwrap().unwrap();
    assert!(!sub.enabled);
    assert_eq!(
        sub.disabled_reason.as_deref(),
        Some("the receiver answered 410 Gone")
    );
    assert!(rig.store.dead_letters(SUB).await.unwrap().is_empty());
}

/// Failing without a success for longer than `disable_after` disables the
/// subscription before its schedule runs out; nothing is buried.
#[tokio::test(start_paused = true)]
async fn failing_longer_than_disable_after_disables_the_subscription() {
    let rig = Rig::new(
        |_, s| {
            s.delays = vec![HOUR; 40];
            s.disable_after = 5 * HOUR;
        },
        |_, _| Reply::Status(503),
    )
    .await;
    rig.append(&["a@1"]).await;
    let first = rig.now().wall_ms;
    let mut st = rig.worker.state();
    loop {
        assert_eq!(rig.step(&mut st).await, Step::Busy);
        st.answers().await;
        if rig.step(&mut st).await == Step::Disabled {
            break;
        }
        let failing = Duration::from_millis(rig.now().wall_ms - first);
        assert!(failing <= 5 * HOUR, "still enabled after {failing:?}");
        let next = rig.retry_state().await.next_at_ms;
        rig.wait(Duration::from_millis(next - rig.now().wall_ms))
            .await;
    }
    rig.worker.close(st).await;
    assert!(Duration::from_millis(rig.now().wall_ms - first) > 5 * HOUR);
    let sub = rig.store.subscription(SUB).await.unwrap().unwrap();
    assert!(!sub.enabled);
    assert!(rig.store.dead_letters(SUB).await.unwrap().is_empty());
}

/// A receiver down for a while (two records failed, nothing delivered for
/// over a second) that answers again pulls the waiting retries forward:
/// they go out at once, not after their 5-minute wait.
#[tokio::test(start_paused = true)]
async fn a_success_after_an_outage_pulls_the_waiting_retries_forward() {
    let rig = Rig::new(
        |_, s| s.delays = vec![5 * MINUTE],
        |_, n| {
            if n < 2 {
                Reply::Status(503)
            } else {
                Reply::Status(200)
            }
        },
    )
    .await;
    rig.append(&["a@1", "b@2"]).await;
    let mut st = rig.worker.state();
    rig.round(&mut st).await;
    assert_eq!(rig.rx.requests().len(), 2, "both records were sent");
    rig.wait(Duration::from_secs(2)).await;
    rig.append(&["c@3"]).await;
    assert_eq!(rig.step(&mut st).await, Step::Busy, "c goes out");
    st.answers().await;
    // Its success makes a and b due: the step that applies it sends them.
    assert_eq!(rig.step(&mut st).await, Step::Busy);
    assert_eq!(st.in_flight(), 2, "a and b went out again at once");
    st.answers().await;
    rig.step(&mut st).await;
    rig.worker.close(st).await;
    let mut again = rig.rx.versions()[2..].to_vec();
    again[1..].sort();
    assert_eq!(again, ["c@3", "a@1", "b@2"]);
    assert!(rig.pending().await.is_empty());
    assert!(rig.store.dead_letters(SUB).await.unwrap().is_empty());
}
