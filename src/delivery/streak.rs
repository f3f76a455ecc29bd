//! A worker's run of failed requests, as a pure state machine: it decides
//! when the log says that delivery started failing or recovered (at most
//! once per [`LOG_EVERY`] per subscription and table), and when a success
//! pulls the waiting retries forward.
//!
//! A success ends a streak. It pulls the waiting retries forward only when
//! the streak looks like an outage: requests of at least two records failed
//! and no request succeeded for [`OUTAGE_MS`]. Records the receiver refuses
//! for good fail between successes of the others and keep their schedule
//! (pulling them forward after every success would spend their retries in
//! seconds).

use std::collections::HashSet;

/// How often a worker says that delivery started failing, at most.
pub const LOG_EVERY_MS: u64 = 60_000;
/// How long nothing must have succeeded for a success to end an outage.
pub const OUTAGE_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub struct Streak {
    /// Records whose requests failed since the last success (two at most:
    /// that is all the pull-forward rule asks).
    records: HashSet<String>,
    /// The last failure's reason.
    reason: Option<String>,
    /// When the streak's first failure came.
    since: u64,
    /// When the log last said "failing", and whether it still owes a
    /// "recovered".
    said_at: Option<u64>,
    owed: bool,
    /// Streaks that started since `said_at` without a log line.
    unsaid: u32,
}

/// What a failure should say in the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Failing {
    pub reason: String,
    /// Streaks that started and ended unsaid since the last line.
    pub unsaid: u32,
}

/// What a success ends.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Say that delivery recovered (a "failing" line was said for this streak).
    pub say: bool,
    /// Make the waiting retries due now.
    pub pull_forward: bool,
}

impl Streak {
    /// A request of `records` failed at `now_ms` for `reason`: the log line
    /// to write, if this starts a streak and the last line is old enough.
    pub fn failed<'a>(
        &mut self,
        now_ms: u64,
        records: impl IntoIterator<Item = &'a str>,
        reason: &str,
    ) -> Option<Failing> {
        let starts = self.reason.is_none();
        self.reason = Some(reason.to_string());
        if starts {
            self.since = now_ms;
        }
        for r in records {
            if self.records.len() >= 2 {
                break;
            }
            self.records.insert(r.to_string());
        }
        if !starts {
            return None;
        }
        if self.said_at.is_some_and(|at| now_ms < at + LOG_EVERY_MS) {
            self.unsaid += 1;
            return None;
        }
        self.said_at = Some(now_ms);
        self.owed = true;
        Some(Failing {
            reason: reason.to_string(),
            unsaid: std::mem::take(&mut self.unsaid),
        })
    }

    /// A request was delivered at `now_ms`: the streak, if any, ends.
    pub fn delivered(&mut self, now_ms: u64) -> Recovered {
        if self.reason.take().is_none() {
            return Recovered::default();
        }
        let pull_forward = self.records.len() >= 2 && now_ms >= self.since + OUTAGE_MS;
        self.records.clear();
        Recovered {
            say: std::mem::take(&mut self.owed),
            pull_forward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_said_once_and_its_end_pulls_retries_forward() {
        let mut s = Streak::default();
        assert_eq!(s.delivered(0), Recovered::default(), "no streak to end");
        let said = s.failed(1_000, ["a", "b"], "HTTP 503");
        assert_eq!(said.map(|f| f.reason), Some("HTTP 503".into()));
        assert_eq!(s.failed(1_100, ["c"], "HTTP 503"), None, "said already");
        let back = s.delivered(1_000 + OUTAGE_MS);
        assert!(back.say && back.pull_forward);
    }

    #[test]
    fn records_refused_between_successes_keep_their_schedule() {
        let mut s = Streak::default();
        for t in 0..10 {
            s.failed(t * 10, ["a", "b"], "HTTP 422");
            assert!(!s.delivered(t * 10 + 5).pull_forward);
        }
    }

    #[test]
    fn one_record_failing_alone_keeps_its_schedule() {
        let mut s = Streak::default();
        assert!(s.failed(0, ["poison"], "HTTP 422").is_some());
        assert_eq!(s.failed(10, ["poison"], "HTTP 422"), None);
        let back = s.delivered(10 * OUTAGE_MS);
        assert!(back.say && !back.pull_forward);
    }

    #[test]
    fn flapping_is_said_once_a_minute_with_what_went_unsaid() {
        let mut s = Streak::default();
        assert!(s.failed(0, ["a"], "timed out").is_some());
        assert!(s.delivered(10).say);
        for t in 1..=3 {
            assert_eq!(s.failed(t * 1_000, ["a"], "timed out"), None);
            assert!(
                !s.delivered(t * 1_000).say,
                "its failure was not said either"
            );
        }
        let said = s.failed(LOG_EVERY_MS, ["a"], "timed out").unwrap();
        assert_eq!(said.unsaid, 3);
    }
}
