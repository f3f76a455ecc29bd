//! What a poller needs of its source's configuration.

use std::time::Duration;

/// What a poller needs of its source's configuration, handed to it at
/// construction rather than read back through the upstream client.
#[derive(Debug, Clone)]
pub struct PollSettings {
    pub poll_interval: Duration,
    pub paging: crate::config::Paging,
    pub overlap: u64,
    pub max_walks: u32,
    /// `sources.failing_after_intervals` (health.rs).
    pub failing_after_intervals: u32,
    pub max_delta_records: usize,
    pub reconcile_interval: Option<Duration>,
    pub on_upstream_reset: crate::config::OnUpstreamReset,
    pub hard_deletes: crate::config::HardDeletes,
    /// A sweep after every initial load (`pages` only; see reconcile.rs).
    pub reconcile_after_load: bool,
    pub fields: crate::config::FieldNames,
    /// Records per page asked for (`sources.page_size`).
    pub page_size: u32,
    /// Records whose stamp is more than this above the table's top are
    /// rejected (`sources.max_stamp_jump`); none: no limit.
    pub max_stamp_jump: Option<u64>,
    /// `store.lease_ttl`: the poll lease, renewed in the background while a
    /// poll runs (see lease.rs).
    pub lease_ttl: Duration,
}

impl PollSettings {
    pub fn new(source: &crate::config::SourceConfig, lease_ttl: Duration) -> PollSettings {
        PollSettings {
            poll_interval: source.poll_interval,
            paging: source.paging,
            overlap: source.overlap,
            max_walks: source.max_walks,
            failing_after_intervals: source.failing_after_intervals,
            max_delta_records: source.max_delta_records,
            reconcile_interval: source.reconcile_interval,
            on_upstream_reset: source.on_upstream_reset,
            hard_deletes: source.hard_deletes,
            reconcile_after_load: source.reconcile_after_load
                && source.paging == crate::config::Paging::Pages,
            fields: source.fields.clone(),
            page_size: source.page_size,
            max_stamp_jump: source.max_stamp_jump,
            lease_ttl,
        }
    }
}
