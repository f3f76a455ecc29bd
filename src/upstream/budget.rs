//! The request budget of one upstream host (or source, `poll.budget_per`):
//! at most `host_max_concurrent` requests in flight and
//! `host_max_per_second` started per second, over every table and poll
//! that shares it. A 429 with `Retry-After` holds back this budget only,
//! so one rate-limited host never slows the others.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};

use crate::config::{BudgetPer, PollConfig, Source};

pub struct Budget {
    in_flight: Semaphore,
    /// Between two request starts; zero: no pacing.
    spacing: Duration,
    pace: Mutex<Pace>,
}

#[derive(Default)]
struct Pace {
    /// The earliest start of the next request.
    next: Option<Instant>,
    /// A `Retry-After` holds every request back until then.
    held: Option<Instant>,
}

impl Pace {
    /// The start of a request asked for at `now`: not before the last
    /// start plus `spacing`, nor before a hold ends.
    fn reserve(&mut self, now: Instant, spacing: Duration) -> Instant {
        let start = [Some(now), self.next, self.held]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now);
        self.next = Some(start + spacing);
        start
    }
}

impl Budget {
    pub fn new(max_concurrent: usize, per_second: u32) -> Budget {
        Budget {
            in_flight: Semaphore::new(max_concurrent.max(1)),
            spacing: Duration::from_secs(1) / per_second.max(1),
            pace: Mutex::default(),
        }
    }

    /// No limit: for a client made on its own (benchmarks, tools).
    pub fn unlimited() -> Budget {
        Budget {
            in_flight: Semaphore::new(Semaphore::MAX_PERMITS),
            spacing: Duration::ZERO,
            pace: Mutex::default(),
        }
    }

    /// Waits for a turn: a slot in flight, then the request's start time.
    /// The request runs while the permit lives.
    pub async fn enter(&self) -> SemaphorePermit<'_> {
        let permit = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let start = {
            let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
            pace.reserve(Instant::now(), self.spacing)
        };
        tokio::time::sleep_until(start).await;
        permit
    }

    /// Holds every request of this budget back for `wait` (a `Retry-After`).
    pub fn hold(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        pace.held = pace.held.max(Some(until));
    }
}

/// The budgets of this instance, one per host or source.
pub struct Budgets {
    config: PollConfig,
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
}

impl Budgets {
    pub fn new(config: &PollConfig) -> Budgets {
        Budgets {
            config: config.clone(),
            budgets: Mutex::default(),
        }
    }

    /// The budget `source`'s requests share.
    pub fn of(&self, source: &Source) -> Arc<Budget> {
        let key = match self.config.budget_per {
            BudgetPer::Source => format!("source {}", source.name()),
            BudgetPer::Host => {
                let u = &source.base_url;
                let port = u.port_or_known_default().unwrap_or(0);
                format!("{}://{}:{port}", u.scheme(), u.host_str().unwrap_or(""))
            }
        };
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let c = &self.config;
        budgets
            .entry(key)
            .or_insert_with(|| Arc::new(Budget::new(c.host_max_concurrent, c.host_max_per_second)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_spaced_and_a_hold_delays_the_next() {
        let (mut pace, t0, gap) = (Pace::default(), Instant::now(), Duration::from_millis(100));
        assert_eq!(pace.reserve(t0, gap), t0);
        assert_eq!(pace.reserve(t0, gap), t0 + gap, "asked at once: spaced");
        assert_eq!(
            pace.reserve(t0 + gap * 5, gap),
            t0 + gap * 5,
            "idle: at once"
        );
        pace.held = Some(t0 + Duration::from_secs(9));
        assert_eq!(pace.reserve(t0 + gap * 6, gap), t0 + Duration::from_secs(9));
    }

    #[tokio::test]
    async fn in_flight_is_bounded() {
        let b = Budget::new(2, 1000);
        let one = b.enter().await;
        let _two = b.enter().await;
        assert_eq!(b.in_flight.available_permits(), 0, "a third request waits");
        drop(one);
        drop(b.enter().await);
    }
}
