//! A PainChek-compatible upstream for tests, the demo and benchmarks.
//!
//! It serves the update-stamp delta feed the relay polls (docs/upstream.md):
//! five tables with their own stamp sequences, soft deletes and restores, DRF
//! paging under `/api/{table}/`, the OAuth token endpoint, and a chosen result
//! order. On top of that it injects the trouble a real upstream causes:
//! errors, 429s, slow and truncated answers, writes while a client pages, and
//! stamps that commit late. An admin surface under `/_sim/` (and the same
//! operations as methods, for in-process tests) makes changes and reads the
//! ground truth.
//!
//! Code map: `records` generates and encodes PainChek-like records, `table`
//! stores one table and pages through it (with `index` for stamp order),
//! `dataset` drives writes from the seeded RNG, `faults` decides each list
//! request's faults, `api` and `auth` serve the upstream contract, `admin` the
//! `/_sim/` routes, and `cli` the `simulate` command.
//!
//! Invariant: every write takes the table's highest stamp + 1 (+ a gap),
//! whether it becomes visible at once or late.

mod admin;
mod answer;
mod api;
mod auth;
mod breaks;
mod cli;
mod dataset;
mod faults;
mod index;
mod records;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub use cli::{AuthKind, SimArgs, run};
pub use faults::{Faults, HANG};
pub use records::Kind;

use dataset::{Dataset, Late};
use faults::FaultState;

/// How many list requests [`Simulator::requests`] remembers.
const REQUEST_LOG_LEN: usize = 1000;

/// Order of `results` in list answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Stamp ascending: the only order keyset paging may rely on.
    Stamp,
    /// Surname, first name for people; name for sites; a fixed per-record key
    /// for the rest. PainChek's public sample looks sorted this way.
    Name,
    /// A fixed pseudo-random order (a hash of seed and id).
    Random,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimAuth {
    None,
    /// Tokens from `POST /api/integration/auth/`, valid for `token_ttl`.
    OAuth {
        client_id: String,
        client_secret: String,
        token_ttl: Duration,
    },
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds the data, the writes and the fault draws.
    pub seed: u64,
    pub order: Order,
    /// Larger `page_size` requests are silently capped to this.
    pub max_page_size: usize,
    pub default_page_size: usize,
    pub auth: SimAuth,
    /// Initial record count per table name.
    pub initial: Vec<(String, usize)>,
    /// Background random writes per second across tables while serving; 0 = off.
    pub change_rate: f64,
    pub faults: Faults,
    /// Probability that a write skips 1-3 stamps.
    pub stamp_gap_rate: f64,
    /// Records per stamp, as a bulk update gives many rows one stamp: the
    /// initial records, and the writes of one [`Simulator::random_writes`]
    /// call, take a new stamp only every `stamp_group` writes per table.
    /// 0 and 1 mean one stamp per write. Grouped writes never commit late.
    pub stamp_group: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            order: Order::Name,
            max_page_size: 1000,
            default_page_size: 50,
            auth: SimAuth::None,
            initial: Vec::new(),
            change_rate: 0.0,
            faults: Faults::default(),
            stamp_gap_rate: 0.0,
            stamp_group: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Delete,
    Restore,
}

/// A write requested by a test. `fields` are merged into the record (for a
/// create, over generated values); `id` picks the record (for a create, its
/// uuid). Without an id, an update, delete or restore picks a random record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub table: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Map<String, Value>>,
}

impl Change {
    pub fn new(table: &str, op: Op) -> Change {
        Change {
            table: table.to_owned(),
            op,
            id: None,
            fields: None,
        }
    }

    pub fn with_id(mut self, id: &str) -> Change {
        self.id = Some(id.to_owned());
        self
    }

    /// Sets the fields to merge; `fields` must be a JSON object (anything
    /// else sets none).
    pub fn with_fields(mut self, fields: Value) -> Change {
        self.fields = match fields {
            Value::Object(map) => Some(map),
            _ => None,
        };
        self
    }
}

/// A write as applied: the stamp it took, and whether it is still hidden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub table: String,
    pub id: String,
    pub stamp: u64,
    pub op: Op,
    pub late: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "unknown table '{0}'; the simulator has patients, assessments, users, sites and comments"
    )]
    UnknownTable(String),
    #[error("no record '{id}' in {table}")]
    UnknownRecord { table: &'static str, id: String },
    #[error("record '{id}' already exists in {table}; create needs a new id")]
    DuplicateId { table: &'static str, id: String },
    #[error("record '{id}' in {table} is already deleted")]
    AlreadyDeleted { table: &'static str, id: String },
    #[error("record '{id}' in {table} is not deleted, so it cannot be restored")]
    NotDeleted { table: &'static str, id: String },
    #[error("no record in {table} can take a random {op:?}; give an id or create records first")]
    NothingToChange { table: &'static str, op: Op },
    #[error("invalid faults: {0}")]
    InvalidFaults(String),
}

/// One list request as the simulator saw it. `sync`, `page` and `page_size`
/// are the effective values (defaults when absent or unparsable, page size
/// after the cap); `query` is the raw query string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLog {
    pub table: String,
    pub sync: u64,
    pub page: i64,
    pub page_size: usize,
    pub status: u16,
    /// The injected fault, if any: hang, slow, fail, error, rate_limit, truncate.
    pub fault: Option<String>,
    pub query: String,
    /// The request's W3C `traceparent` header, when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

pub struct Simulator {
    config: SimConfig,
    data: Mutex<Dataset>,
    faults: Mutex<FaultState>,
    requests: Mutex<VecDeque<RequestLog>>,
    /// Issued OAuth tokens and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
    /// How many OAuth tokens were issued (for tests counting refreshes).
    tokens_issued: std::sync::atomic::AtomicU64,
    /// Cancelled when serving stops, so hanging and slow answers end early
    /// instead of holding up graceful shutdown.
    halt: CancellationToken,
    /// List requests answered in all, in flight now, and the most in flight
    /// at once (`GET /_sim/traffic`): what tests of a client's budget read.
    traffic: Traffic,
}

/// Counts of list requests, kept whatever the request log keeps.
#[derive(Debug, Default)]
pub struct Traffic {
    total: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicU64,
    max_in_flight: std::sync::atomic::AtomicU64,
}

/// What [`Traffic`] counted so far.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrafficCounts {
    pub total: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
}

/// One request in flight; counted out when dropped.
pub(crate) struct InFlight<'a>(&'a Traffic);

impl Traffic {
    pub(crate) fn enter(&self) -> InFlight<'_> {
        use std::sync::atomic::Ordering::SeqCst;
        self.total.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        InFlight(self)
    }

    fn counts(&self) -> TrafficCounts {
        use std::sync::atomic::Ordering::SeqCst;
        TrafficCounts {
            total: self.total.load(SeqCst),
            in_flight: self.in_flight.load(SeqCst),
            max_in_flight: self.max_in_flight.load(SeqCst),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Locks a mutex even if a panicking test thread poisoned it: the state is
/// only ever changed by whole operations.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Simulator {
    /// Generates the initial records (seconds for a million) and the state.
    pub fn new(config: SimConfig) -> Arc<Simulator> {
        Arc::new(Simulator {
            data: Mutex::new(Dataset::new(&config)),
            faults: Mutex::new(FaultState::new(config.faults.clone(), config.seed)),
            requests: Mutex::new(VecDeque::new()),
            tokens: Mutex::new(HashMap::new()),
            tokens_issued: std::sync::atomic::AtomicU64::new(0),
            halt: CancellationToken::new(),
            traffic: Traffic::default(),
            config,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    fn late(&self) -> Late {
        let faults = &lock(&self.faults).faults;
        Late {
            rate: faults.late_rate,
            after: faults.late_after,
        }
    }

    /// Applies one change (late with the current `late_rate`).
    pub fn apply(&self, change: Change) -> Result<Applied, SimError> {
        let late = self.late();
        lock(&self.data).apply(&change, late)
    }

    /// `n` random writes to `table`, or to tables weighted towards patients
    /// and assessments when None. An unknown table gets no writes.
    pub fn random_writes(&self, table: Option<&str>, n: usize) -> Vec<Applied> {
        let late = self.late();
        let mut data = lock(&self.data);
        let kind = match table.map(Kind::parse) {
            Some(None) => return Vec::new(),
            Some(kind) => kind,
            None => None,
        };
        // The writes of one call land at once, so a stamp they share is
        // never seen half written.
        let applied = (0..n)
            .map(|_| {
                let kind = kind.unwrap_or_else(|| data.random_kind());
                data.grouped(|data| data.random_write(kind, late))
            })
            .collect();
        data.end_groups();
        applied
    }

    /// Ground truth: every currently visible record of `table` (deleted ones
    /// included, raw ones not), by stamp. Empty for an unknown table.
    pub fn state(&self, table: &str) -> Vec<Value> {
        let Some(kind) = Kind::parse(table) else {
            return Vec::new();
        };
        let data = lock(&self.data);
        let parse =
            |json: &str| serde_json::from_str(json).expect("stored versions are valid JSON");
        data.table(kind).state().into_iter().map(parse).collect()
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).faults.clone()
    }

    /// Replaces the faults (and so resets the one-shot counters).
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.faults).faults = faults;
    }

    /// Makes every pending late write visible; returns how many there were.
    pub fn flush_late(&self) -> usize {
        lock(&self.data).flush_late()
    }

    /// Adds an arbitrary record to `table`'s listing, after the regular ones.
    pub fn add_raw(&self, table: &str, record: Value) -> Result<(), SimError> {
        let kind = Kind::parse(table).ok_or_else(|| SimError::UnknownTable(table.to_owned()))?;
        lock(&self.data).add_raw(kind, &record);
        Ok(())
    }

    /// How many OAuth tokens `POST /api/integration/auth/` issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.tokens_issued
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Revokes every issued OAuth token: list requests bearing one answer
    /// 401 "Invalid token." until the client fetches a new one.
    pub fn revoke_tokens(&self) {
        lock(&self.tokens).clear();
    }

    /// The most recent list requests, oldest first.
    /// List requests answered in all, in flight, and most at once.
    pub fn traffic(&self) -> TrafficCounts {
        self.traffic.counts()
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.requests).iter().cloned().collect()
    }

    fn log_request(&self, entry: RequestLog) {
        let mut log = lock(&self.requests);
        if log.len() == REQUEST_LOG_LEN {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// Every route: the upstream under `/api`, the admin surface under `/_sim`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::routes()
            .merge(admin::routes())
            .fallback(answer::not_found)
            .with_state(Arc::clone(self))
    }

    /// Serves until `shutdown`, running the background writes of
    /// `change_rate` meanwhile.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let stop = shutdown.child_token();
        let writer = tokio::spawn(Arc::clone(&self).write_steadily(stop.clone()));
        let halt = self.halt.clone();
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                halt.cancel();
            })
            .await;
        stop.cancel();
        // The writer only ends by cancellation; a panic in it is already logged.
        let _ = writer.await;
        served
    }

    /// The background change-rate task: `change_rate` random writes per
    /// second, made in small batches so that low and high rates both work.
    async fn write_steadily(self: Arc<Self>, stop: CancellationToken) {
        let rate = self.config.change_rate;
        if rate <= 0.0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut owed, mut last) = (0.0, tokio::time::Instant::now());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                now = tick.tick() => {
                    owed += rate * (now - last).as_secs_f64();
                    last = now;
                }
            }
            let due = owed.floor();
            owed -= due;
            self.random_writes(None, due as usize);
        }
    }
}
