//! When each table the scheduler takes on (at its start, or added, resumed
//! or changed later) is first due, from the last poll the store remembers
//! (whichever instance or run made it):
//!
//! - never loaded (no poll status, or no poll of it ever succeeded): at
//!   once, within the pool and the host budgets;
//! - polled before: at that poll's end plus the interval, so a restart
//!   neither polls every table at once nor delays them by an interval;
//! - overdue (the relay was down longer than the interval, or the last
//!   poll failed): soon, spread by a stable offset over a tenth of the
//!   interval so the overdue tables of a long outage do not all start at
//!   one instant.
//!
//! The statuses are read in the background, in chunks of concurrent reads
//! (pipelined on one Redis connection), and each chunk's due times are sent
//! back as they come, so a large topology starts polling before the last
//! status is read. A table whose status cannot be read is spread over its
//! interval from the start.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures_util::{StreamExt, stream};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    events::now_ms,
    store::{PollStatus, Store, Table},
};

/// Overdue tables are spread over a tenth of their interval, at most this.
const OVERDUE_SPREAD: Duration = Duration::from_secs(5);

/// Status reads in flight at once.
const READS: usize = 64;

/// A table's first due time.
pub(super) type Resumed = (Table, Instant);

/// Reads the last poll of each of `tables` (with its interval) and sends
/// their due times to `tx`.
pub(super) fn look_up(
    store: Arc<dyn Store>,
    tables: Vec<(Table, Duration)>,
    tx: mpsc::UnboundedSender<Resumed>,
) {
    if tables.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut reads = stream::iter(tables)
            .map(|(t, interval)| {
                let store = store.clone();
                async move {
                    let status = store.poll_status(&t).await;
                    (t, interval, status)
                }
            })
            .buffer_unordered(READS);
        while let Some((t, interval, status)) = reads.next().await {
            let due = match status {
                Ok(status) => due_at(&t, status.as_ref(), interval, now_ms(), Instant::now()),
                Err(e) => {
                    tracing::debug!(table = %t, error = %e, "cannot read the last poll; spreading the first over the interval");
                    Instant::now() + offset(&t, interval)
                }
            };
            if tx.send((t, due)).is_err() {
                return;
            }
        }
    });
}

/// When `t` is first due, from its stored last poll, at `now_ms` (unix
/// ms) which is `now`.
fn due_at(
    t: &Table,
    status: Option<&PollStatus>,
    interval: Duration,
    now_ms: u64,
    now: Instant,
) -> Instant {
    let Some(s) = status.filter(|s| s.ok_ms.is_some()) else {
        return now;
    };
    let next = s.finished_ms.saturating_add(interval.as_millis() as u64);
    if s.error.is_none() && next > now_ms {
        return now + Duration::from_millis(next - now_ms);
    }
    now + offset(t, (interval / 10).min(OVERDUE_SPREAD))
}

/// A stable offset of `t` within `within`.
pub(super) fn offset(t: &Table, within: Duration) -> Duration {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    let nanos = within.as_nanos().max(1) as u64;
    Duration::from_nanos(h.finish() % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_due_at_its_last_poll_plus_its_interval() {
        let t = Table::new("s", "patients");
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let at = 1_000_000;
        let polled = |finished_ms, ok: bool, error: Option<&str>| PollStatus {
            finished_ms,
            ok_ms: ok.then_some(finished_ms),
            error: error.map(str::to_string),
            ..PollStatus::default()
        };
        assert_eq!(due_at(&t, None, minute, at, now), now, "never polled");
        let failed_load = polled(at - 1_000, false, Some("503"));
        assert_eq!(due_at(&t, Some(&failed_load), minute, at, now), now);
        let recent = polled(at - 20_000, true, None);
        let due = due_at(&t, Some(&recent), minute, at, now);
        assert_eq!(due, now + Duration::from_secs(40));
        let long_ago = polled(at - 600_000, true, None);
        let due = due_at(&t, Some(&long_ago), minute, at, now);
        assert!(due >= now && due < now + minute / 10, "overdue: soon");
        let failing = polled(at - 20_000, true, Some("503"));
        let due = due_at(&t, Some(&failing), minute, at, now);
        assert!(due < now + minute / 10, "a failing table is tried soon");
    }
}
