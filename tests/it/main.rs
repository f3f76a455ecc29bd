//! One integration-test binary with a shared harness (see harness.rs).

mod harness;
mod redis_cluster;

mod api;
mod cli;
mod cluster;
mod compat;
mod crash;
mod delivery;
mod faults;
mod filters;
mod health;
mod instances;
mod layout;
mod limits;
mod live;
mod malformed;
mod metrics;
mod openapi;
mod pace;
mod property;
mod receiver;
mod records;
mod reset;
mod retention;
mod retries;
mod rules;
mod security;
mod serve;
mod settle;
mod status;
mod subscription_filters;
mod sync;
mod tail;
mod takeover;
mod upstream;
