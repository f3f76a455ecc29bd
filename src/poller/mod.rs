//! The poller: one per (source, resource) table (see ARCHITECTURE.md).
//!
//! A poll takes the table's lease, reads the cursor from the stream, fetches
//! the delta since `cursor - overlap` with the source's paging strategy
//! (see [`paging`]), and appends sorted chunks atomically. Nothing here
//! stores a cursor: a failed or interrupted poll leaves the stream as the
//! last committed chunk left it, and the next poll resumes from there.

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Paging,
    events::{AppendOutcome, StreamId, now_ms},
    http::backoff,
    record::{RejectedRecord, UpstreamRecord},
    store::{AppendBatch, Refusal, Store, StoreError, Table},
};

mod breaks;
mod epoch;
mod health;
pub use health::{HealthLog, HealthWriter, Note, TablesOf, health_table};
mod idle;
mod keyset;
mod lease;
mod paging;
pub use paging::Pages;
mod rebase;
mod reconcile;
mod table_status;
mod traced;
pub use table_status::{LastPoll, TableStatus};
mod error;
mod settings;
mod walk;
pub use error::PollError;
pub use settings::PollSettings;

pub use reconcile::ReconcileReport;

/// What one poll did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollReport {
    /// False when another instance held the lease and nothing was fetched.
    pub leased: bool,
    /// This poll was (part of) the initial load: its events say `snapshot=1`.
    pub loading: bool,
    /// The cursor the poll started from (see rebase.rs), and `sync` below it.
    pub cursor: u64,
    pub sync: u64,
    /// The highest stamp the poll appended or proved (rebase.rs's cursor).
    pub top: u64,
    pub before: StreamId,
    pub after: StreamId,
    pub pages: u32,
    pub walks: u32,
    /// Settle walks (see walk.rs) and the pages they took.
    pub settles: u32,
    pub settle_pages: u32,
    /// The upstream changed too fast to settle; the poll committed up to
    /// the last floor only.
    pub unsettled: bool,
    pub fetched: u64,
    pub rejected: u64,
    pub outcome: AppendOutcome,
    pub duration_ms: u64,
}

pub struct Poller {
    pub table: Table,
    store: Arc<dyn Store>,
    /// The upstream client in production (paging.rs).
    upstream: Arc<dyn Pages>,
    holder: String,
    settings: PollSettings,
    lease: Option<lease::LeaseKeeper>,
    /// The table's epoch as this poller first saw it (see epoch.rs).
    epoch: Option<String>,
    /// After a store failover, the stamp polls start from until one
    /// completes (see epoch.rs).
    resume: Option<u64>,
    /// After an upstream reset, the upstream's cursor while it is below the
    /// stream's (rebase.rs); read once from the poll status.
    era: Option<u64>,
    era_loaded: bool,
    /// Appends reclassify (rebase.rs), during a reload after a reset.
    rebasing: bool,
    /// An upstream reset was reported and no poll has succeeded since.
    reset_seen: bool,
    last_reconcile: Option<Instant>,
    /// An initial load completed and `reconcile_after_load` asks for a sweep.
    load_sweep_due: bool,
    pub status: Arc<TableStatus>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Hashes of rejected records already written, so a bad record that
    /// the upstream keeps returning is recorded once per process.
    rejected: HashSet<u64>,
    /// (time, events appended so far) after each poll, over about a minute:
    /// the append rate shown on the status surfaces.
    samples: std::collections::VecDeque<(u64, u64)>,
    /// The last poll that succeeded while this instance held the lease.
    last_ok_ms: Option<u64>,
    /// A poll of this table succeeded in this process (see `loading`).
    saw_success: bool,
    /// The running poll's spans and start time (traced.rs).
    spans: Option<Arc<traced::PollSpans>>,
    /// Two records of this table were seen sharing a stamp, so a page's
    /// `count` no longer bounds the top (walk.rs).
    shared_stamps: bool,
    /// The table's health while this instance polls it (health.rs).
    judge: Option<health::Judge>,
    health_log: Option<HealthLog>,
    /// Failed polls in a row, and the wait before the next poll.
    failures: u32,
    wait: Duration,
    /// Versions known to be in the index while nothing else wrote (idle.rs).
    known: idle::Known,
    /// False when the poll's start saw no reconcile request (reconcile.rs).
    reconcile_asked: bool,
}

impl Poller {
    pub fn new(
        table: Table,
        store: Arc<dyn Store>,
        upstream: Arc<dyn Pages>,
        holder: &str,
        settings: PollSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Poller {
            metrics,
            table,
            store,
            upstream,
            holder: holder.to_string(),
            settings,
            lease: None,
            epoch: None,
            resume: None,
            era: None,
            era_loaded: false,
            rebasing: false,
            reset_seen: false,
            last_reconcile: None,
            load_sweep_due: false,
            status: Arc::default(),
            rejected: HashSet::new(),
            samples: Default::default(),
            last_ok_ms: None,
            saw_success: false,
            spans: None,
            shared_stamps: false,
            judge: None,
            health_log: None,
            failures: 0,
            wait: Duration::ZERO,
            known: idle::Known::default(),
            reconcile_asked: true,
        }
    }

    /// Sends this table's health transitions to `log` (`_relay/health`).
    pub fn report_health(&mut self, log: HealthLog) {
        self.health_log = Some(log);
    }

    /// One poll of the table, its result recorded in the status surfaces.
    /// Public so tests and `sync --once` drive it.
    pub async fn poll_once(&mut self, cancel: &CancellationToken) -> Result<PollReport, PollError> {
        if self.samples.is_empty() {
            // The baseline of the append rate: before this poll's appends.
            let appended = self.status.appended.load(Ordering::Relaxed);
            self.samples.push_back((now_ms(), appended));
        }
        let spans = self.begin_trace(false);
        let result = spans.run(self.poll(cancel)).await;
        // The poll's spans end here (and are exported), not at the next poll.
        self.spans = None;
        drop(spans);
        if !matches!(result, Err(PollError::Cancelled)) {
            self.record(&result).await;
        }
        result
    }

    /// Whether the table's initial load is still running: its stream was
    /// empty when a poll began, and no poll of it (by any instance) has
    /// succeeded since. Until then every event says `snapshot=1`, also after
    /// a crash mid-load, when the stream is no longer empty. Read from the
    /// store on every poll: another instance may have started or finished
    /// the load while this one did not hold the lease.
    async fn loading(&mut self, before: StreamId, stored: bool) -> Result<bool, PollError> {
        // Once this instance saw a poll succeed, an empty stream is an empty
        // table, and its first records are changes.
        if before == StreamId::ZERO && !self.saw_success {
            self.store.set_loading(&self.table, true).await?;
            return Ok(true);
        }
        Ok(stored)
    }

    async fn poll(&mut self, cancel: &CancellationToken) -> Result<PollReport, PollError> {
        let started = Instant::now();
        let mut report = PollReport::default();
        let start = self
            .store
            .begin_poll(&self.table, &self.holder, self.settings.lease_ttl)
            .await?;
        if !start.leased {
            tracing::debug!(table = %self.table, "another instance holds the lease; not polling");
            return Ok(report);
        }
        self.keep_lease_renewed();
        report.leased = true;
        let result = self.leased_poll(&mut report, start, cancel).await;
        match (&result, &self.epoch) {
            (Ok(()), Some(epoch)) => self.known.end(report.after, epoch, &self.table),
            _ => self.known.forget(),
        }
        self.lease = None;
        self.note_failover(&result);
        report.duration_ms = started.elapsed().as_millis() as u64;
        self.observe(&report, &result);
        tracing::debug!(table = %self.table, sync = report.sync, pages = report.pages,
            settle_pages = report.settle_pages, fetched = report.fetched,
            appended = report.outcome.appended(), ok = result.is_ok(), "poll finished");
        self.status.polls.fetch_add(1, Ordering::Relaxed);
        result.map(|()| report)
    }

    /// A poll while this instance holds the lease.
    async fn leased_poll(
        &mut self,
        report: &mut PollReport,
        start: crate::store::PollStart,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        self.check_epoch(start.epoch).await?;
        self.reconcile_asked = start.reconcile;
        report.before = start.last;
        self.known
            .begin(report.before, self.epoch.as_deref().unwrap_or_default());
        // The initial load says `snapshot=1`: a new stream, or one whose
        // load never completed (a crash mid-load).
        let snapshot = self.loading(report.before, start.loading).await?;
        report.loading = snapshot;
        report.cursor = self.cursor(report.before.stamp).await;
        report.sync = report.cursor.saturating_sub(self.settings.overlap);
        let result = match self.settings.paging {
            Paging::Keyset => self.keyset(report, snapshot, cancel).await,
            Paging::Pages => self.pages(report, snapshot, cancel).await,
        };
        let result = match result {
            Err(PollError::UpstreamReset(evidence)) => {
                self.upstream_reset(evidence, report, cancel).await
            }
            result => result,
        };
        if result.is_ok() {
            self.reset_seen = false;
            self.era = self.era.map(|e| e.max(report.top));
            if !report.unsettled {
                self.resume = None;
            }
        }
        // A poll that appended nothing left the stream where it was.
        report.after = if report.outcome.appended() == 0 {
            report.before
        } else {
            self.store
                .last_id(&self.table)
                .await
                .unwrap_or(report.before)
        };
        result
    }

    /// Takes (or extends) the lease and keeps it renewed in the background
    /// until `self.lease` is cleared; false while another instance holds it.
    async fn take_lease(&mut self) -> Result<bool, PollError> {
        let taken = self
            .store
            .lease(&self.table, &self.holder, self.settings.lease_ttl)
            .await?;
        if taken {
            self.keep_lease_renewed();
        }
        Ok(taken)
    }

    /// Renews the lease just taken in the background until `self.lease`
    /// is cleared.
    fn keep_lease_renewed(&mut self) {
        self.lease = Some(lease::LeaseKeeper::start(
            self.store.clone(),
            self.table.clone(),
            self.holder.clone(),
            self.settings.lease_ttl,
        ));
    }

    /// Ok while the lease taken at the start of this poll is held.
    fn keep_lease(&self) -> Result<(), PollError> {
        match &self.lease {
            Some(lease) => Ok(lease.check()?),
            None => Err(StoreError::refused(&self.table, Refusal::LeaseLost).into()),
        }
    }

    /// Appends stamp-sorted records in atomic chunks, stopping between
    /// chunks when cancelled (every committed prefix is a valid cursor).
    async fn commit(
        &mut self,
        records: &[UpstreamRecord],
        snapshot: bool,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let records = self.within_jump(records, report).await?;
        for chunk in paging::stamp_chunks(records, self.store.append_chunk()) {
            if cancel.is_cancelled() {
                return Err(PollError::Cancelled);
            }
            self.keep_lease()?;
            if !self.rebasing && self.known.holds_all(chunk) {
                // Versions the index holds (idle.rs): duplicates, unsent.
                report.outcome.duplicates += chunk.len() as u64;
                report.top = report.top.max(chunk.last().map_or(0, |r| r.stamp));
                continue;
            }
            let batch = AppendBatch {
                holder: &self.holder,
                epoch: self.epoch.as_deref().unwrap_or_default(),
                snapshot,
                observed: self.spans.as_ref().map_or_else(now_ms, |s| s.observed),
                records: chunk,
                rebase: self.rebasing,
            };
            let span = self.spans.as_ref().map(|s| s.append());
            let appending = self.store.append(&self.table, batch);
            let out = tracing::Instrument::instrument(
                appending,
                span.unwrap_or_else(tracing::Span::none),
            )
            .await?;
            if out.appended() > 0 {
                // Live tails and delivery workers need not wait for their tick.
                self.status.wake.notify_waiters();
            }
            self.status
                .appended
                .fetch_add(out.appended(), Ordering::Relaxed);
            if out.regressions > 0 {
                tracing::warn!(table = %self.table, regressions = out.regressions,
                    "the upstream showed records with a stamp below their last one (stamps from clocks? \
                     docs/sync.md, \"What the relay detects\"); those versions were not appended");
                self.alert(
                    crate::store::alerts::Alert::StampRegression,
                    out.regressions,
                );
            }
            self.known.note(chunk, out.appended(), out.regressions == 0);
            report.outcome.add(&out);
            // Chunks are in stamp order; stamp 0 marks records found gone.
            report.top = report.top.max(chunk.last().map_or(0, |r| r.stamp));
        }
        Ok(())
    }

    /// The stamp-sorted `records` up to `max_stamp_jump` over the table's
    /// top before this poll; the rest are rejected, so one absurd stamp
    /// cannot move the cursor where later polls never reach back from.
    /// An empty table has no top to jump from.
    async fn within_jump<'a>(
        &mut self,
        records: &'a [UpstreamRecord],
        report: &mut PollReport,
    ) -> Result<&'a [UpstreamRecord], PollError> {
        let top = report.before.stamp;
        let Some(jump) = self.settings.max_stamp_jump.filter(|_| top > 0) else {
            return Ok(records);
        };
        let limit = top.saturating_add(jump);
        let keep = records.partition_point(|r| r.stamp <= limit);
        for r in &records[keep..] {
            let reason = format!(
                "record {:?} has stamp {}, more than sources.max_stamp_jump ({jump}) above the \
                 table's top {top}; raise max_stamp_jump if the upstream's stamps jump that far",
                r.id, r.stamp
            );
            let rejected = RejectedRecord {
                id: Some(r.id.clone()),
                raw: r.raw.get().to_string(),
                reason,
            };
            self.reject(rejected, report).await?;
        }
        Ok(&records[..keep])
    }

    async fn reject(
        &mut self,
        r: RejectedRecord,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let mut h = DefaultHasher::new();
        r.raw.hash(&mut h);
        if self.rejected.insert(h.finish()) {
            tracing::warn!(table = %self.table, reason = %r.reason, "record rejected; kept in the reject stream");
            self.store
                .reject(&self.table, &r.raw, &r.reason, now_ms())
                .await?;
            report.rejected += 1;
        }
        Ok(())
    }

    /// The wait before the next poll after the last one: the interval, or
    /// a backoff after failures in a row.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The wait before the next poll after `result`: the interval, or a
    /// backoff after failures in a row.
    fn next_wait(&mut self, result: &Result<PollReport, PollError>) -> Duration {
        let interval = self.settings.poll_interval;
        self.failures = if result.is_ok() { 0 } else { self.failures + 1 };
        if self.failures == 0 {
            return interval;
        }
        let most = Duration::from_secs(300);
        backoff(interval, most, self.failures, &mut rand::rng())
    }

    /// The source's `poll_interval`.
    pub fn interval(&self) -> Duration {
        self.settings.poll_interval
    }

    /// One unit of the poll loop (the scheduler's and [`Poller::run`]'s):
    /// a poll, then, while this instance holds the lease, a reconcile
    /// sweep when one is due.
    pub async fn step(&mut self, cancel: &CancellationToken) -> Result<PollReport, PollError> {
        let result = self.poll_once(cancel).await;
        let leased = matches!(&result, Ok(r) if r.leased);
        self.status.holds_lease.store(leased, Ordering::Relaxed);
        if leased {
            self.maybe_reconcile(cancel).await;
        }
        result
    }

    /// Polls until cancelled: every `poll_interval`, or sooner after a
    /// poll that failed (with backoff), never moving the cursor on failure.
    /// The relay runs its pollers from the scheduler instead; this loop
    /// runs one poller on its own.
    pub async fn run(mut self, cancel: CancellationToken) {
        /// Clears `running` however the loop ends, a panic included.
        struct Running(Arc<TableStatus>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.running.store(false, Ordering::Relaxed);
            }
        }
        self.status.running.store(true, Ordering::Relaxed);
        let _running = Running(self.status.clone());
        if self.settings.reconcile_after_load {
            tracing::info!(table = %self.table,
                "paging = \"pages\": a reconcile sweep follows every initial load (reconcile_after_load = false turns it off)");
        }
        while !cancel.is_cancelled() {
            let result = self.step(&cancel).await;
            if let Err(PollError::Cancelled) = result {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.wait) => {}
            }
        }
        self.status.holds_lease.store(false, Ordering::Relaxed);
        let _ = self.store.release(&self.table, &self.holder).await;
    }
}

#[cfg(test)]
mod tests;
