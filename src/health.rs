//! Health of a table and of a source, as a pure state machine.
//!
//! The instance that polls a table feeds each poll's outcome to the table's
//! [`Tracker`] with the time; the tracker answers the transition, if any,
//! which the caller logs, counts and appends to the `_relay/health` table
//! (docs/operations.md, "Health"). The state travels in the table's stored
//! poll status, so every instance shows the same one and an instance that
//! takes the table over carries on from it. A source's health is its
//! tables', worst first ([`SourceHealth::of`]).
//!
//! The rules, in order:
//! - `paused`: the source is paused; nothing else moves it until resumed.
//! - `auth_failed`: the upstream answered 401 or 403, or the token endpoint
//!   refused the credentials. Only a good poll ends it.
//! - `quarantined`: the upstream broke the contract in a way retrying does
//!   not fix (it went back in time with `on_upstream_reset = "pause"`, pages
//!   not in stamp order, paging that does not end, a delta over the limit).
//!   Only a good poll ends it, usually after an operator's change.
//! - `failing`: polls fail and none succeeded for `failing_after_intervals`
//!   poll intervals (counted from the last good poll, or from when the
//!   tracker started if none).
//! - `degraded`: the last poll failed but a good one is recent enough, or
//!   the last poll succeeded but raised an alert (store/alerts.rs).
//! - `healthy`: the last poll succeeded and raised nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A table's or a source's state, declared worst first: sorting puts the
/// states that need an operator on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    AuthFailed,
    Failing,
    Quarantined,
    Degraded,
    Paused,
    Healthy,
}

impl State {
    pub const ALL: [State; 6] = [
        State::AuthFailed,
        State::Failing,
        State::Quarantined,
        State::Degraded,
        State::Paused,
        State::Healthy,
    ];

    /// Its name in the API, the metrics, event types and query strings.
    pub fn name(self) -> &'static str {
        match self {
            State::AuthFailed => "auth_failed",
            State::Failing => "failing",
            State::Quarantined => "quarantined",
            State::Degraded => "degraded",
            State::Paused => "paused",
            State::Healthy => "healthy",
        }
    }

    /// Reads a name as [`State::name`] writes it (`?state=failing`).
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.name() == s)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A table's health: its state, why, since when (unix ms) and when the
/// next poll is due (unix ms), if one is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
}

impl Health {
    /// A table nobody has polled yet is healthy until a poll says otherwise.
    pub fn new(now: u64) -> Self {
        Health {
            state: State::Healthy,
            reason: None,
            since: now,
            next_attempt: None,
        }
    }
}

/// Why a poll failed, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401/403 from the upstream, or the token endpoint refused.
    Auth,
    /// A contract break retrying does not fix.
    Contract,
    /// Anything else: timeouts, 5xx, 429, a store error.
    Transient,
}

/// What happened to a table, fed to [`Tracker::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A poll succeeded; `alerts` names what it raised (empty for none).
    Ok {
        alerts: Vec<String>,
    },
    Failed {
        failure: Failure,
        reason: String,
    },
    Paused,
    Resumed,
}

/// A change of state, for the log, the metrics and the health table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: Health,
}

/// A table's health and what its rules need to remember.
#[derive(Debug, Clone)]
pub struct Tracker {
    health: Health,
    /// The last good poll, or when tracking began: where `failing` counts from.
    good_ms: u64,
    interval_ms: u64,
    failing_after: u32,
}

impl Tracker {
    /// Starts at `now`, from the stored health if the table has one (another
    /// instance polled it before), and the stored last good poll.
    pub fn new(
        now: u64,
        stored: Option<Health>,
        ok_ms: Option<u64>,
        interval_ms: u64,
        failing_after: u32,
    ) -> Self {
        Tracker {
            health: stored.unwrap_or_else(|| Health::new(now)),
            good_ms: ok_ms.unwrap_or(now),
            interval_ms,
            failing_after: failing_after.max(1),
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Applies `outcome` at `now`, with the next poll due at `next`; answers
    /// the transition when the state changed. A change of reason alone
    /// updates the health without a transition.
    pub fn feed(&mut self, outcome: Outcome, now: u64, next: Option<u64>) -> Option<Transition> {
        let (state, reason) = match outcome {
            Outcome::Paused => (State::Paused, Some("paused by an operator".to_string())),
            Outcome::Resumed => (State::Healthy, None),
            _ if self.health.state == State::Paused => (State::Paused, self.health.reason.clone()),
            Outcome::Ok { alerts } => {
                self.good_ms = now;
                if alerts.is_empty() {
                    (State::Healthy, None)
                } else {
                    (
                        State::Degraded,
                        Some(format!("alerts: {}", alerts.join(", "))),
                    )
                }
            }
            Outcome::Failed { failure, reason } => (self.failed(failure, now), Some(reason)),
        };
        self.health.next_attempt = next;
        self.health.reason = reason;
        if state == self.health.state {
            return None;
        }
        let from = std::mem::replace(&mut self.health.state, state);
        self.health.since = now;
        Some(Transition {
            from,
            to: self.health.clone(),
        })
    }

    fn failed(&self, failure: Failure, now: u64) -> State {
        let window = self
            .interval_ms
            .saturating_mul(u64::from(self.failing_after));
        match failure {
            Failure::Auth => State::AuthFailed,
            Failure::Contract => State::Quarantined,
            Failure::Transient if now.saturating_sub(self.good_ms) >= window => State::Failing,
            Failure::Transient => State::Degraded,
        }
    }
}

/// A source's health from its tables': the worst table's state and reason,
/// and how many tables are in each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceHealth {
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the worst table entered its state (the earliest of them).
    pub since: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
    pub counts: Counts,
}

/// Tables (or sources) per state; only states with some are present.
pub type Counts = BTreeMap<State, usize>;

impl SourceHealth {
    /// Its tables by state in words, worst first: `failing 1, healthy 4`.
    pub fn tables_in_words(&self) -> String {
        let words: Vec<String> = self
            .counts
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        words.join(", ")
    }

    /// Folds a source's tables' health; a source without tables is healthy.
    pub fn of<'a>(tables: impl IntoIterator<Item = &'a Health>, now: u64) -> Self {
        let mut counts = Counts::new();
        let mut worst: Option<&Health> = None;
        let mut next_attempt: Option<u64> = None;
        for h in tables {
            *counts.entry(h.state).or_default() += 1;
            worst = match worst {
                Some(w) if (w.state, w.since) <= (h.state, h.since) => Some(w),
                _ => Some(h),
            };
            next_attempt = next_attempt.into_iter().chain(h.next_attempt).min();
        }
        let (state, reason, since) = worst.map_or((State::Healthy, None, now), |w| {
            (w.state, w.reason.clone(), w.since)
        });
        SourceHealth {
            state,
            reason,
            since,
            next_attempt,
            counts,
        }
    }
}

/// How many of `states` are in each state, every state present (zeros
/// included), worst first: the line on top of the status surfaces.
pub fn count(states: impl IntoIterator<Item = State>) -> Vec<(State, usize)> {
    let mut counts: Vec<(State, usize)> = State::ALL.iter().map(|s| (*s, 0)).collect();
    for s in states {
        counts[s as usize].1 += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: u64 = 1_000;

    fn tracker() -> Tracker {
        Tracker::new(0, None, None, INTERVAL, 3)
    }

    fn fail(failure: Failure) -> Outcome {
        Outcome::Failed {
            failure,
            reason: "upstream answered HTTP 503".into(),
        }
    }

    fn ok() -> Outcome {
        Outcome::Ok { alerts: vec![] }
    }

    fn to(t: Option<Transition>) -> Option<(State, State)> {
        t.map(|t| (t.from, t.to.state))
    }

    #[test]
    fn errors_degrade_then_fail_after_the_intervals_and_a_good_poll_recovers() {
        let mut t = tracker();
        assert_eq!(to(t.feed(ok(), 1_000, Some(2_000))), None);
        let first = t
            .feed(fail(Failure::Transient), 2_000, Some(3_000))
            .unwrap();
        assert_eq!(
            (first.from, first.to.state),
            (State::Healthy, State::Degraded)
        );
        assert_eq!(first.to.since, 2_000);
        assert_eq!(first.to.next_attempt, Some(3_000));
        assert_eq!(
            first.to.reason.as_deref(),
            Some("upstream answered HTTP 503")
        );
        // Still within three intervals of the good poll at 1,000.
        assert_eq!(to(t.feed(fail(Failure::Transient), 3_999, None)), None);
        assert_eq!(
            to(t.feed(fail(Failure::Transient), 4_000, None)),
            Some((State::Degraded, State::Failing))
        );
        assert_eq!(to(t.feed(fail(Failure::Transient), 9_000, None)), None);
        assert_eq!(t.health().since, 4_000);
        let back = t.feed(ok(), 10_000, Some(11_000)).unwrap();
        assert_eq!((back.from, back.to.state), (State::Failing, State::Healthy));
        assert_eq!(back.to.reason, None);
    }

    #[test]
    fn a_table_never_polled_well_fails_counting_from_when_tracking_began() {
        let mut t = tracker();
        assert_eq!(
            to(t.feed(fail(Failure::Transient), 500, None)),
            Some((State::Healthy, State::Degraded))
        );
        assert_eq!(
            to(t.feed(fail(Failure::Transient), 3_000, None)),
            Some((State::Degraded, State::Failing))
        );
    }

    #[test]
    fn the_stored_last_good_poll_counts_after_a_takeover() {
        let stored = Health {
            state: State::Degraded,
            reason: Some("timeout".into()),
            since: 50,
            next_attempt: None,
        };
        let mut t = Tracker::new(10_000, Some(stored), Some(100), INTERVAL, 3);
        assert_eq!(t.health().since, 50);
        assert_eq!(
            to(t.feed(fail(Failure::Transient), 10_000, None)),
            Some((State::Degraded, State::Failing))
        );
    }

    #[test]
    fn auth_failures_and_contract_breaks_hold_until_a_good_poll() {
        let mut t = tracker();
        assert_eq!(
            to(t.feed(fail(Failure::Auth), 100, None)),
            Some((State::Healthy, State::AuthFailed))
        );
        // However long it lasts, and whatever fails next, it is not "failing".
        assert_eq!(to(t.feed(fail(Failure::Auth), 60_000, None)), None);
        assert_eq!(
            to(t.feed(fail(Failure::Contract), 61_000, None)),
            Some((State::AuthFailed, State::Quarantined))
        );
        assert_eq!(
            to(t.feed(ok(), 62_000, None)),
            Some((State::Quarantined, State::Healthy))
        );
    }

    #[test]
    fn an_alert_on_a_good_poll_degrades_until_a_clean_one() {
        let mut t = tracker();
        let alerts = vec!["count_shrank x1".to_string()];
        let d = t.feed(Outcome::Ok { alerts }, 1_000, None).unwrap();
        assert_eq!(d.to.state, State::Degraded);
        assert_eq!(d.to.reason.as_deref(), Some("alerts: count_shrank x1"));
        assert_eq!(
            to(t.feed(ok(), 2_000, None)),
            Some((State::Degraded, State::Healthy))
        );
    }

    #[test]
    fn a_paused_table_stays_paused_whatever_polls_say_until_resumed() {
        let mut t = tracker();
        assert_eq!(
            to(t.feed(Outcome::Paused, 1_000, None)),
            Some((State::Healthy, State::Paused))
        );
        assert_eq!(to(t.feed(fail(Failure::Auth), 2_000, None)), None);
        assert_eq!(to(t.feed(ok(), 3_000, None)), None);
        assert_eq!(
            to(t.feed(Outcome::Resumed, 4_000, None)),
            Some((State::Paused, State::Healthy))
        );
    }

    #[test]
    fn a_new_reason_in_the_same_state_is_no_transition() {
        let mut t = tracker();
        t.feed(fail(Failure::Transient), 100, None);
        let again = Outcome::Failed {
            failure: Failure::Transient,
            reason: "timeout".into(),
        };
        assert_eq!(to(t.feed(again, 200, None)), None);
        assert_eq!(t.health().reason.as_deref(), Some("timeout"));
        assert_eq!(t.health().since, 100);
    }

    #[test]
    fn a_source_takes_its_worst_table_and_counts_them() {
        let h = |state, since| Health {
            state,
            reason: Some(format!("{state} since {since}")),
            since,
            next_attempt: Some(since + 10),
        };
        let tables = [
            h(State::Healthy, 1),
            h(State::Failing, 30),
            h(State::Degraded, 5),
            h(State::Failing, 20),
        ];
        let s = SourceHealth::of(&tables, 99);
        assert_eq!(s.state, State::Failing);
        assert_eq!(s.since, 20, "the earliest of the worst");
        assert_eq!(s.reason.as_deref(), Some("failing since 20"));
        assert_eq!(s.next_attempt, Some(11));
        assert_eq!(
            s.counts,
            Counts::from([
                (State::Failing, 2),
                (State::Degraded, 1),
                (State::Healthy, 1)
            ])
        );
        let none = SourceHealth::of(&[], 99);
        assert_eq!((none.state, none.since), (State::Healthy, 99));
    }

    #[test]
    fn states_sort_worst_first_and_read_back_from_their_names() {
        let mut all = State::ALL;
        all.sort();
        assert_eq!(all, State::ALL);
        for s in State::ALL {
            assert_eq!(State::parse(s.name()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert_eq!(State::parse("fine"), None);
        let c = count([State::Failing, State::Healthy, State::Failing]);
        assert_eq!(c[0], (State::AuthFailed, 0));
        assert_eq!(c[1], (State::Failing, 2));
        assert_eq!(c[5], (State::Healthy, 1));
    }
}
