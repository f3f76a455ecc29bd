//! One integration-test binary with a shared harness (see harness.rs); its
//! suites are grouped by subject, one folder each.

mod harness;

mod api;
mod consumers;
mod delivery;
mod hardening;
mod operations;
mod store;
mod sync;
