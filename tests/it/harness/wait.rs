//! Waiting for what a relay under test does in its own time: poll, and
//! past a deadline fail naming what was awaited and the last thing seen.
//! Tests use these instead of loops of their own.

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `look` until `done` holds for what it answers, and returns that
/// answer; after `within`, fails naming `what` and the last answer.
pub async fn wait_for<T: Debug>(
    what: &str,
    within: Duration,
    look: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    wait_for_every(what, within, POLL, look, done).await
}

/// `wait_for`, looking every `every`: for a test that must act soon after
/// the condition holds (a kill before a load ends).
pub async fn wait_for_every<T: Debug>(
    what: &str,
    within: Duration,
    every: Duration,
    mut look: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = look().await;
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {within:?} waiting for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until `check` holds, failing after `within` with `what` it waited for.
pub async fn eventually(what: &str, within: Duration, check: impl AsyncFnMut() -> bool) {
    wait_for(what, within, check, |ok| *ok).await;
}

/// `eventually` outside the runtime (starting servers): blocks the thread.
pub fn eventually_blocking(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "gave up after {within:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}
