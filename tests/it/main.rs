//! One integration-test binary with a shared harness (see harness.rs).

mod harness;

mod cli;
mod crash;
mod faults;
mod serve;
mod sync;
