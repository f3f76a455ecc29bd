//! stamp-relay: turns an update-stamp delta feed into exactly-once change
//! events on Redis streams (or an embedded SQLite store). See ARCHITECTURE.md.

pub mod api;
pub mod app;
pub mod bench;
pub mod catalog;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub mod consumer;
pub mod declared;
pub mod delivery;
pub mod demo;
pub mod events;
pub mod filter;
pub mod health;
pub mod http;
pub mod metrics;
pub mod poller;
pub mod previous;
pub mod record;
pub mod retention;
pub mod scheduler;
pub mod shutdown;
pub mod sources;
pub mod status;
pub mod store;
pub mod subscription;
pub mod table;
pub mod tail;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod upstream;

#[cfg(test)]
mod layering;
