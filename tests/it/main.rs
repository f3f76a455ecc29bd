//! One integration-test binary with a shared harness (see harness.rs).

mod harness;

mod api;
mod cli;
mod crash;
mod faults;
mod openapi;
mod serve;
mod sync;
