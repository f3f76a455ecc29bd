//! Alerts: what a table's poller noticed that breaks an assumption of the
//! sync (`docs/sync.md`, "What the relay detects"), each logged, counted in
//! its own metric and marked on the table's status, which every status
//! surface shows (`GET /v1/resources`, the status page, `stamp-relay
//! status`). The marks travel in the table's [`PollStatus`](super::PollStatus),
//! so every instance shows the same ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// The store lost the newest events this relay appended (a Redis
    /// failover to a replica that was behind, an older copy of the file).
    StoreFailover,
    /// The upstream went back in time (its top stamp below the cursor, or
    /// far fewer records than the relay holds): restored or reset.
    UpstreamReset,
    /// A `count` that shrank for the same `sync`: rows were removed.
    CountShrank,
    /// A record came back with a stamp below its last one (clocks as stamps).
    StampRegression,
    /// Stamps far sparser than the records counted: a counter shared with
    /// other tables.
    SparseStamps,
    /// The reconcile sweep found records the upstream no longer returns.
    HardDeletes,
}

impl Alert {
    pub const ALL: [Alert; 6] = [
        Alert::StoreFailover,
        Alert::UpstreamReset,
        Alert::CountShrank,
        Alert::StampRegression,
        Alert::SparseStamps,
        Alert::HardDeletes,
    ];

    /// Its name on the status surfaces, as in `GET /v1/resources`.
    pub fn name(self) -> &'static str {
        match self {
            Alert::StoreFailover => "store_failover",
            Alert::UpstreamReset => "upstream_reset",
            Alert::CountShrank => "count_shrank",
            Alert::StampRegression => "stamp_regression",
            Alert::SparseStamps => "sparse_stamps",
            Alert::HardDeletes => "hard_deletes",
        }
    }

    /// The metric counting it (`stamp_relay_<name>_total`) and its help.
    pub fn metric(self) -> (&'static str, &'static str) {
        match self {
            Alert::StoreFailover => (
                "store_failovers",
                "Times the store was found to have lost the newest events this relay appended (a failover)",
            ),
            Alert::UpstreamReset => (
                "upstream_resets",
                "Times a table's upstream went back in time (top stamp below the cursor, or far fewer records)",
            ),
            Alert::CountShrank => (
                "upstream_count_shrinks",
                "Times the upstream's count for one sync shrank within a poll: rows were removed",
            ),
            Alert::StampRegression => (
                "stamp_regressions",
                "Record versions whose stamp is below the record's last one (stamps not monotonic)",
            ),
            Alert::SparseStamps => (
                "sparse_stamps",
                "Polls whose stamps were far sparser than the records counted (a counter shared with other tables)",
            ),
            Alert::HardDeletes => (
                "hard_deletes",
                "Records the reconcile sweep found gone from the upstream",
            ),
        }
    }
}

/// How often an alert was raised on a table, and when last (unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub count: u64,
    pub last_ms: u64,
}

/// A table's alerts by kind; only the raised ones are present.
pub type Marks = BTreeMap<Alert, Mark>;

/// Notes `n` more of `alert` at `now`.
pub fn raise(marks: &mut Marks, alert: Alert, n: u64, now: u64) {
    let m = marks.entry(alert).or_default();
    m.count += n;
    m.last_ms = now;
}

/// The marks in words for the text and HTML surfaces, e.g.
/// `store_failover x1`; empty when none were raised.
pub fn describe(marks: &Marks) -> String {
    let words: Vec<String> = marks
        .iter()
        .map(|(a, m)| format!("{} x{}", a.name(), m.count))
        .collect();
    words.join(", ")
}
