//! What the stores hold and promise: the Redis key layout (a public
//! contract), the contract suite every engine runs, refusals and reads that
//! write nothing, the latest-record store and its versions, retention, Redis
//! Cluster and managed Redis, and a store that loses data under a running
//! relay (wiped, or failed over to an older copy) with the subscriptions that
//! survive it.

mod append_guard;
mod cluster;
mod failover;
mod layout;
mod records;
mod reset;
mod retention;
mod store_contract;
mod store_reads;
mod survive;
mod versions;
