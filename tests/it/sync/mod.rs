//! How the poller keeps each table's stream equal to its upstream: the
//! behaviour suite of the sync algorithm and its seeded property test, page
//! walks under churn and in-place edits, shared stamps, upstream faults,
//! limits and credentials, broken contracts, an upstream gone back in time,
//! when tables are first due after a start, the scheduler's request budgets,
//! and crashes mid-load.

mod behaviour;
mod churn;
mod contract;
mod crash;
mod faults;
mod property;
mod resume;
mod schedule;
mod settle;
mod shared_stamps;
mod upstream;
mod upstream_reset;
