//! One integration-test binary with a shared harness (see harness.rs).

mod harness;

mod api;
mod cli;
mod crash;
mod delivery;
mod faults;
mod instances;
mod metrics;
mod openapi;
mod pace;
mod receiver;
mod retention;
mod serve;
mod status;
mod sync;
mod tail;
mod takeover;
