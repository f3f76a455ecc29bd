//! Retries on a clock the test moves: a delivery worker stepped by hand
//! with the time each step runs at (`Worker::step(&mut WorkerState, Now)`). A
//! step's time is the only clock retry times are computed from and
//! compared with, so hours of backoff pass without being waited for; the
//! lease stays on the real monotonic clock.

use std::time::{Duration, Instant};

use stamp_relay::{
    app::Relay,
    config::{DeliveryConfig, Paging},
    delivery::worker::{Now, Step, Worker, WorkerState},
    events::now_ms,
    store::Table,
    subscription::state::RetryState,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::delivery::subscription;
use crate::harness::scripted::Scripted;
use crate::harness::{ConfigBuilder, Sim, TestStore, poll_until_quiet, source};
use crate::on_both_stores;

on_both_stores!(
    failures_wait_out_the_schedule_then_go_to_the_dead_letters,
    retry_after_is_honoured_up_to_max_retry_after,
    failing_longer_than_disable_after_disables_the_subscription
);

const HOUR: Duration = Duration::from_secs(3600);

/// A worker over one patient, delivering to `url` with `delivery`
/// settings; the relay it came from is returned to keep it alive.
async fn one_worker(
    ts: &TestStore,
    url: &str,
    delivery: impl FnOnce(&mut DeliveryConfig),
) -> (Sim, Relay, Worker) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 1)],
        ..SimConfig::default()
    })
    .await;
    let config = ConfigBuilder::on(&ts.config)
        .delivery(delivery)
        .source(source(&sim.base_url, &["patients"], Paging::Pages, 10))
        .build();
    let mut relay = Relay::with_store(config, ts.store.clone()).unwrap();
    poll_until_quiet(&mut relay, 10).await;
    let sub = subscription("sub_stepped", url);
    ts.store.put_subscription(&sub).await.unwrap();
    let (worker, _changes) = relay.supervisor().worker(&sub, &patients());
    (sim, relay, worker)
}

fn patients() -> Table {
    Table::new("sim", "patients")
}

/// One step at `wall_ms` on the test's clock.
async fn step_at(worker: &Worker, st: &mut WorkerState, wall_ms: u64) -> Step {
    let now = Now {
        wall_ms,
        at: Instant::now(),
    };
    worker.step(st, now).await.unwrap()
}

/// The one pending entry's retry state.
async fn retry_state(ts: &TestStore) -> RetryState {
    let pending = ts.store.pending("sub_stepped", &patients()).await.unwrap();
    assert_eq!(pending.len(), 1, "one event pending");
    pending[0].1
}

/// Sends once at `wall_ms` and applies the answer at the same time: the
/// retry state that answer left.
async fn attempt_at(
    worker: &Worker,
    st: &mut WorkerState,
    ts: &TestStore,
    wall_ms: u64,
) -> RetryState {
    assert_eq!(step_at(worker, st, wall_ms).await, Step::Busy, "a send");
    st.answers().await;
    step_at(worker, st, wall_ms).await;
    retry_state(ts).await
}

/// A receiver that always fails: each retry waits its scheduled delay
/// (±20 % jitter) and not a millisecond less, and after the last one the
/// event goes to the dead letters with every attempt counted.
async fn failures_wait_out_the_schedule_then_go_to_the_dead_letters(ts: TestStore) {
    let rx = Scripted::start((500, None, "down".into())).await;
    let schedule = vec![HOUR, 2 * HOUR, 5 * HOUR];
    let (_sim, _relay, worker) = one_worker(&ts, &rx.url, |d| {
        d.retry_schedule = schedule.clone();
    })
    .await;
    let started = Instant::now();
    let mut st = worker.state();
    let mut wall = now_ms();
    for (failed, delay) in (1..).zip(&schedule) {
        let state = attempt_at(&worker, &mut st, &ts, wall).await;
        assert_eq!(state.attempts, failed);
        let waits = Duration::from_millis(state.next_at_ms - wall);
        assert!(
            waits >= delay.mul_f64(0.8) && waits <= delay.mul_f64(1.2),
            "retry {failed} waits {waits:?}, scheduled {delay:?}"
        );
        let early = step_at(&worker, &mut st, state.next_at_ms - 1).await;
        assert!(matches!(early, Step::Idle(_)), "{early:?}");
        assert_eq!(rx.requests().len(), failed as usize, "sent early");
        wall = state.next_at_ms;
    }
    // The last retry fails too: the schedule is exhausted.
    assert_eq!(step_at(&worker, &mut st, wall).await, Step::Busy);
    st.answers().await;
    step_at(&worker, &mut st, wall).await;
    worker.close(st).await;
    assert_eq!(rx.requests().len(), schedule.len() + 1);
    let dead = ts.store.dead_letters("sub_stepped").await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts as usize, schedule.len() + 1);
    assert_eq!(dead[0].at_ms, wall);
    let pending = ts.store.pending("sub_stepped", &patients()).await;
    assert!(pending.unwrap().is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the test waited for real time"
    );
}

/// A `Retry-After` longer than the scheduled delay wins, up to
/// `max_retry_after`; a shorter one leaves the schedule's delay.
async fn retry_after_is_honoured_up_to_max_retry_after(ts: TestStore) {
    let rx = Scripted::start((429, Some("36000"), String::new())).await;
    let (_sim, _relay, worker) = one_worker(&ts, &rx.url, |d| {
        d.retry_schedule = vec![HOUR; 3];
        d.max_retry_after = 3 * HOUR;
    })
    .await;
    let mut st = worker.state();
    let wall = now_ms();
    // Ten hours asked for, three allowed.
    let state = attempt_at(&worker, &mut st, &ts, wall).await;
    assert_eq!(state.next_at_ms - wall, 3 * 3_600_000);
    // Two hours asked for: more than the hour the schedule says.
    *rx.reply.lock().unwrap() = (429, Some("7200"), String::new());
    let wall = state.next_at_ms;
    let state = attempt_at(&worker, &mut st, &ts, wall).await;
    assert_eq!(state.next_at_ms - wall, 2 * 3_600_000);
    // A minute asked for: the schedule's hour (±20 %) stands.
    *rx.reply.lock().unwrap() = (429, Some("60"), String::new());
    let wall = state.next_at_ms;
    let state = attempt_at(&worker, &mut st, &ts, wall).await;
    let waits = Duration::from_millis(state.next_at_ms - wall);
    assert!(waits >= HOUR.mul_f64(0.8), "{waits:?}");
    worker.close(st).await;
}

/// A subscription whose every delivery fails for longer than
/// `disable_after` is disabled before its schedule runs out, and nothing
/// goes to the dead letters.
async fn failing_longer_than_disable_after_disables_the_subscription(ts: TestStore) {
    let rx = Scripted::start((500, None, "down".into())).await;
    let disable_after = 5 * HOUR;
    let (_sim, _relay, worker) = one_worker(&ts, &rx.url, |d| {
        d.retry_schedule = vec![HOUR; 40];
        d.disable_after = disable_after;
    })
    .await;
    let mut st = worker.state();
    let first = now_ms();
    let mut wall = first;
    loop {
        assert_eq!(step_at(&worker, &mut st, wall).await, Step::Busy, "a send");
        st.answers().await;
        if step_at(&worker, &mut st, wall).await == Step::Disabled {
            break;
        }
        let failing = Duration::from_millis(wall - first);
        assert!(failing <= disable_after, "enabled after {failing:?}");
        wall = retry_state(&ts).await.next_at_ms;
    }
    worker.close(st).await;
    assert!(Duration::from_millis(wall - first) > disable_after);
    let sub = ts.store.subscription("sub_stepped").await.unwrap().unwrap();
    assert!(!sub.enabled);
    let reason = sub.disabled_reason.unwrap_or_default();
    assert!(reason.contains("disable_after"), "{reason}");
    assert!(
        ts.store
            .dead_letters("sub_stepped")
            .await
            .unwrap()
            .is_empty()
    );
}
