//! Why a poll failed: the kinds callers branch on, each message naming
//! the input and the setting that changes it.

use crate::{health::Failure, store::StoreError, upstream::UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "page {page} of sync={sync} is not in ascending stamp order (stamp {stamp} follows {prev}); \
         the upstream does not sort by stamp, so set paging = \"pages\" for this source"
    )]
    NotAscending {
        sync: u64,
        page: u32,
        stamp: u64,
        prev: u64,
    },
    #[error(
        "the delta since stamp {sync} holds more than {limit} records (sources.max_delta_records); \
         raise the limit, or use paging = \"keyset\" if the upstream sorts by stamp"
    )]
    TooLarge { sync: u64, limit: usize },
    #[error(
        "after {walks} walks the pages showed {seen} of the {count} records the upstream counted; \
         it changes faster than it can be paged: raise sources.max_walks or sources.page_size"
    )]
    Unstable { walks: u32, seen: u64, count: u64 },
    #[error(
        "{url} is past page {most}, the most that {count} records (the upstream's count) fill \
         with a margin; its next links do not end, so the walk stops; check the upstream's paging"
    )]
    Endless { url: String, count: u64, most: u32 },
    #[error("stopped before the poll finished; committed chunks are kept")]
    Cancelled,
    #[error(
        "UPSTREAM RESET: the upstream went back in time ({0}); the table is paused \
         (on_upstream_reset = \"pause\"): set on_upstream_reset = \"resnapshot\" to reload it"
    )]
    UpstreamReset(String),
}

impl PollError {
    /// What the failure means for the table's health (health.rs): refused
    /// credentials, a contract break retrying does not fix, or the rest.
    pub fn failure(&self) -> Failure {
        match self {
            PollError::Upstream(UpstreamError::Auth { .. })
            | PollError::Upstream(UpstreamError::Status {
                status: 401 | 403, ..
            }) => Failure::Auth,
            PollError::Upstream(UpstreamError::TooLarge { .. })
            | PollError::NotAscending { .. }
            | PollError::TooLarge { .. }
            | PollError::Endless { .. }
            | PollError::UpstreamReset(_) => Failure::Contract,
            _ => Failure::Transient,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Upstream(e) => e.kind(),
            PollError::Store(_) => "store",
            PollError::NotAscending { .. } => "not_ascending",
            PollError::TooLarge { .. } => "too_large",
            PollError::Unstable { .. } => "unstable",
            PollError::Endless { .. } => "endless",
            PollError::Cancelled => "cancelled",
            PollError::UpstreamReset(_) => "upstream_reset",
        }
    }
}
