//! The relay as an operator runs it: the binary and its configuration
//! errors, `serve`, health and readiness, the status page and `/metrics`,
//! sources as data and by the thousand, the topology at run time, several
//! instances sharing leases and taking over after a crash, the cost of an
//! idle poll, and traces end to end.

mod cli;
mod config_errors;
mod health;
mod idle;
mod instances;
mod many_sources;
mod metrics;
mod serve;
mod shares;
mod source_health;
mod sources;
mod status;
mod takeover;
mod topology;
mod traces;
