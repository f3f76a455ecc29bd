//! Where events live. Two backends keep one contract (docs/redis-layout.md):
//! Redis streams for production and several instances, and an embedded
//! SQLite file for a single instance with nothing installed (or SQLite's
//! in-memory database, for tests). `contract` states the promises once as a
//! suite every engine runs.
//!
//! Invariant: the cursor of a table is the stamp part of its last event ID;
//! no other state says how far a table has synced, so the two can never
//! disagree.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    config::StoreConfig,
    events::{AppendOutcome, Event, IndexEntry, Rejected, StreamId},
    record::UpstreamRecord,
};

pub mod alerts;
#[doc(hidden)]
pub mod contract;
mod delivery;
pub mod documents;
mod highest;
mod plan;
pub mod records;
pub mod redis;
pub mod sqlite;
mod standing;

/// Every store call names its table; re-exported here for the callers.
pub use crate::table::Table;
pub use delivery::{ATTEMPTS_KEPT, DeliveryStore, update_subscription};
pub(crate) use delivery::{decode_subscription, decode_subscriptions};
pub use documents::{Document, Documents, update_document};
pub use standing::{Standing, lag, position_or_start, standing};

/// The last poll of a table as its lease holder saw it, kept in the store
/// so every instance, the status page and `stamp-relay status` show the
/// same facts whichever instance polls.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PollStatus {
    /// The instance that polled (its lease holder name).
    pub holder: String,
    pub finished_ms: u64,
    /// The last poll that succeeded, possibly before `finished_ms`.
    pub ok_ms: Option<u64>,
    /// Why the last poll failed; none when it succeeded.
    pub error: Option<String>,
    /// Events appended per minute, over about the last minute.
    pub rate_per_min: f64,
    /// What the poller noticed that breaks an assumption of the sync.
    #[serde(skip_serializing_if = "alerts::Marks::is_empty")]
    pub alerts: alerts::Marks,
    /// After an upstream reset, the upstream's own cursor while it is below
    /// the stream's (poller/rebase.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_cursor: Option<u64>,
    /// The table's health as its poller last judged it (health.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::Health>,
}

impl PollStatus {
    /// The rate as the status surfaces show it, to one decimal.
    pub fn rate_shown(&self) -> f64 {
        (self.rate_per_min * 10.0).round() / 10.0
    }
}

/// What a poll reads before it fetches (`Store::begin_poll`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollStart {
    /// The lease was taken or extended for the holder; the fields below
    /// are read only then.
    pub leased: bool,
    /// The table's epoch; none before its first use.
    pub epoch: Option<String>,
    /// The stream's last event ID (`Store::last_id`).
    pub last: StreamId,
    /// Whether the initial load still runs (`TableState::loading`).
    pub loading: bool,
    /// False when the store saw no reconcile request; true when one may be
    /// pending (`TableState::take_reconcile_request` takes it).
    pub reconcile: bool,
}

/// A sorted chunk of record versions to append atomically.
#[derive(Debug)]
pub struct AppendBatch<'a> {
    /// The lease holder; the append is refused if another instance holds the lease.
    pub holder: &'a str,
    /// The table's epoch when the poll began; the append is refused if the
    /// store holds another one (or none): it lost the table's data meanwhile.
    pub epoch: &'a str,
    pub snapshot: bool,
    pub observed: u64,
    pub records: &'a [UpstreamRecord],
    /// A reload after an upstream reset (poller/rebase.rs): a version
    /// whose stamp differs from the indexed one, lower or not, is appended
    /// and becomes the record's indexed version ([`crate::events::reclassify`]).
    pub rebase: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer, or answered with an error of its own.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Corrupt(String),
    /// The store refused the write on purpose: a fact the caller acts on.
    #[error("{}", refusal.explain(what))]
    Refused {
        /// What was refused: a table, or a subscription.
        what: String,
        refusal: Refusal,
    },
}

/// Why a store refused a write. The engines return it as data (Redis maps
/// its scripts' error codes in one function, `refusal` in `redis/mod.rs`; SQLite
/// returns it from the transaction); callers match it, never an error's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another instance holds the table's lease.
    LeaseLost,
    /// The table's epoch is not the one the poll began with: the store lost
    /// the table's data meanwhile, and the table reloads.
    EpochChanged,
    /// The stream ends at `top`, below `highest`, which this process
    /// appended: a failover to a replica that was behind, or an older copy
    /// of the store.
    Failover {
        /// The stream's last entry now.
        top: StreamId,
        /// The highest ID this process had appended, now gone.
        highest: StreamId,
    },
    /// A compare-and-set lost to other writes every time it was tried.
    Raced,
}

impl Refusal {
    fn explain(&self, what: &str) -> String {
        match self {
            Refusal::LeaseLost => {
                format!("lease on {what} is held by another instance; this append was not made")
            }
            Refusal::EpochChanged => format!(
                "the store lost the data of {what} (its epoch changed) during this poll; this append was not made and the table reloads"
            ),
            Refusal::Failover { top, highest } => format!(
                "the store lost the newest events of {what}: its stream ends at {top}, below {highest}, which this relay appended \
                 (a failover to a replica that was behind, or an older copy of the store); this append was not made, and the \
                 lost versions are fetched again and appended above {highest}"
            ),
            Refusal::Raced => {
                format!("{what} changed under {UPDATE_TRIES} updates in a row; try again")
            }
        }
    }
}

impl StoreError {
    /// The store's refusal of a write to `what`.
    pub fn refused(what: impl std::fmt::Display, refusal: Refusal) -> StoreError {
        StoreError::Refused {
            what: what.to_string(),
            refusal,
        }
    }

    /// The refusal this error is, if it is one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            StoreError::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store:
    DeliveryStore + TableState + records::RecordStore + documents::Documents + Send + Sync + 'static
{
    /// A short description for logs and banners, without credentials.
    fn describe(&self) -> String;

    async fn ping(&self) -> StoreResult<()>;

    /// The ID of the last event of the table, or `0-0` for a new stream.
    async fn last_id(&self, t: &Table) -> StoreResult<StreamId>;

    /// The highest ID the table's stream has issued: its last event's,
    /// or above it after a failover lost a tail whose IDs are never issued
    /// again (docs/sync.md, "Store failovers"). A reader may hold any
    /// position up to it.
    async fn issued_id(&self, t: &Table) -> StoreResult<StreamId> {
        self.last_id(t).await
    }

    /// Classifies each record against the index, appends the new versions
    /// and updates the index, all in one atomic step. Re-running a batch is
    /// a no-op.
    async fn append(&self, t: &Table, batch: AppendBatch<'_>) -> StoreResult<AppendOutcome>;

    /// The most records one [`Store::append`] should carry; a chunk grows
    /// past it only to keep one stamp's rows together.
    fn append_chunk(&self) -> usize {
        APPEND_CHUNK
    }

    async fn reject(&self, t: &Table, raw: &str, reason: &str, observed: u64) -> StoreResult<()>;

    /// Events with IDs strictly after `after`, in order, at most `limit`.
    async fn read(&self, t: &Table, after: StreamId, limit: usize) -> StoreResult<Vec<Event>>;

    /// As [`Store::read`], between two reads of `trimmed_through` (the one
    /// before and the one after it): what a reader needs to tell whether
    /// its page skipped what retention removed. One round trip where the
    /// backend can pipeline them.
    async fn read_between_trims(
        &self,
        t: &Table,
        after: StreamId,
        limit: usize,
    ) -> StoreResult<(StreamId, Vec<Event>, StreamId)> {
        let before = self.trimmed_through(t).await?;
        let page = self.read(t, after, limit).await?;
        let later = self.trimmed_through(t).await?;
        Ok((before, page, later))
    }

    async fn rejects(&self, t: &Table, limit: usize) -> StoreResult<Vec<Rejected>>;

    async fn stream_len(&self, t: &Table) -> StoreResult<u64>;

    async fn index_len(&self, t: &Table) -> StoreResult<u64>;

    async fn index_entry(&self, t: &Table, record: &str) -> StoreResult<Option<IndexEntry>>;

    /// Every record id of the index with its entry (a reload after an
    /// upstream reset compares them with what the upstream returns).
    async fn index_all(&self, t: &Table) -> StoreResult<Vec<(String, IndexEntry)>>;

    /// Takes the lease for `holder`, or extends it if `holder` has it.
    /// Returns false while another holder's lease is alive.
    async fn lease(&self, t: &Table, holder: &str, ttl: Duration) -> StoreResult<bool>;

    async fn release(&self, t: &Table, holder: &str) -> StoreResult<()>;

    /// Writes `instance`'s heartbeat, alive for `ttl`, carrying `nonce`
    /// (new at every start), and forgets instances whose heartbeat expired.
    async fn heartbeat(&self, instance: &str, nonce: &str, ttl: Duration)
    -> StoreResult<Heartbeat>;

    /// Takes or extends the lease (as [`Store::lease`]) and, when it is
    /// held, reads what a poll starts from. Redis answers in one script, so
    /// an idle poll costs one round trip before its upstream request.
    async fn begin_poll(&self, t: &Table, holder: &str, ttl: Duration) -> StoreResult<PollStart> {
        if !self.lease(t, holder, ttl).await? {
            return Ok(PollStart::default());
        }
        Ok(PollStart {
            leased: true,
            epoch: self.epoch(t).await?,
            last: self.last_id(t).await?,
            loading: self.loading(t).await?,
            reconcile: true,
        })
    }
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The instances alive, this one included.
    pub live: Vec<String>,
    /// The nonce `instance`'s heartbeat carried before this one (None:
    /// none was alive): another than this process's means a second
    /// process runs under the same `instance_id`.
    pub previous: Option<String>,
}

/// What the store keeps about a table besides its events: the last poll,
/// whether its initial load still runs, and what retention removed.
#[async_trait]
pub trait TableState: Send + Sync {
    /// Removes every event before `first_kept` and remembers the last one
    /// removed; returns how many went. Callers never pass an ID past the
    /// last event: the cursor is the last event's stamp.
    async fn trim(&self, t: &Table, first_kept: StreamId) -> StoreResult<u64>;

    /// The ID of the last event retention removed; `0-0` if none was.
    async fn trimmed_through(&self, t: &Table) -> StoreResult<StreamId>;

    /// Marks a table's initial load as running (set before its first
    /// append) or done (cleared by the first poll that succeeds), so a load
    /// a crash interrupted still says `snapshot=1` after the restart.
    async fn set_loading(&self, t: &Table, loading: bool) -> StoreResult<()>;

    async fn loading(&self, t: &Table) -> StoreResult<bool>;

    /// The table's epoch: a random value written at its first use (none
    /// before). A store that lost its data shows none, or another one.
    async fn epoch(&self, t: &Table) -> StoreResult<Option<String>>;

    /// The epochs of `ts` in their order, in as few round trips as it can.
    async fn epochs(&self, ts: &[Table]) -> StoreResult<Vec<Option<String>>>;

    /// Writes `fresh` as the table's epoch unless it has one; returns the
    /// epoch the store holds afterwards (another instance may have won).
    async fn init_epoch(&self, t: &Table, fresh: &str) -> StoreResult<String>;

    /// Asks whichever instance polls the table for a reconcile sweep after
    /// its next poll (`sync --reconcile` while a relay serves the table).
    async fn request_reconcile(&self, t: &Table) -> StoreResult<()>;

    /// Whether a sweep was requested, clearing the request.
    async fn take_reconcile_request(&self, t: &Table) -> StoreResult<bool>;

    /// Records the last poll of a table (written by its lease holder).
    async fn put_poll_status(&self, t: &Table, s: &PollStatus) -> StoreResult<()>;

    /// The last poll of a table, by whichever instance made it.
    async fn poll_status(&self, t: &Table) -> StoreResult<Option<PollStatus>>;
}

/// Records per append on Redis: an append is one script, and Redis serves
/// nothing else while it runs.
pub const APPEND_CHUNK: usize = 500;

/// Writes checked against a version, retried this often before giving up.
pub(crate) const UPDATE_TRIES: usize = 16;

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    what: &str,
    json: &str,
) -> StoreResult<T> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("stored {what} is unreadable: {e}")))
}

/// Opens the backend the configuration names: Redis when `redis_url` or
/// `redis_cluster` is set, else the embedded store in `data_dir`.
pub async fn open(cfg: &StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(if cfg.uses_redis() {
        Arc::new(redis::RedisStore::connect(cfg).await?)
    } else {
        Arc::new(sqlite::SqliteStore::open(&cfg.data_dir)?)
    })
}
