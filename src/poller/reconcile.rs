//! The reconcile sweep: a full `sync=0` walk compared with the record index.
//!
//! Settling and the overlap window keep every version in the stream as far
//! as the upstream keeps its contract; the sweep is the safety net for when
//! it does not (a stamp committed later than `overlap` covers, a record
//! restored from a backup with an old stamp). Every version at or below the
//! cursor that the index lacks is appended as a late event
//! (`<top stamp>-<top seq + 1>`); versions above the cursor are left to the
//! polls, so the cursor never passes a stamp the polls have not settled.
//! Pages are committed as they arrive, so memory stays flat. Rows that shift
//! during the sweep may be missed by it; the next sweep sees them.

use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::{
    events::AppendOutcome,
    record::{UpstreamRecord, parse_record},
};

/// What one sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// False when another instance held the lease.
    pub leased: bool,
    /// False when another instance held the lease, or the initial load runs.
    pub swept: bool,
    pub pages: u32,
    /// Records the upstream showed at or below the cursor.
    pub compared: u64,
    /// Missed versions appended as late events.
    pub repaired: u64,
    /// Records the index holds that the upstream no longer returns (hard
    /// deletes; see breaks.rs).
    pub gone: u64,
    pub outcome: AppendOutcome,
}

impl Poller {
    /// One reconcile sweep of the table. Public so `sync --reconcile` and
    /// tests run it on demand.
    pub async fn reconcile_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<ReconcileReport, PollError> {
        self.last_reconcile = Some(Instant::now());
        let mut out = ReconcileReport::default();
        if !self.take_lease().await? {
            return Ok(out);
        }
        out.leased = true;
        let spans = self.begin_trace(true);
        let result = spans.run(self.sweep(&mut out, cancel)).await;
        self.spans = None;
        drop(spans);
        self.lease = None;
        self.note_failover(&result);
        if out.repaired > 0 {
            tracing::warn!(table = %self.table, repaired = out.repaired,
                "the reconcile sweep found versions the polls missed; appended them as late events");
        }
        self.metrics
            .reconcile_repaired
            .get_or_create(&crate::metrics::table_labels(&self.table))
            .inc_by(out.repaired);
        result.map(|()| out)
    }

    async fn sweep(
        &mut self,
        out: &mut ReconcileReport,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        self.check_epoch(self.store.epoch(&self.table).await?)
            .await?;
        let top = self.store.last_id(&self.table).await?.stamp;
        if top == 0 || self.store.loading(&self.table).await? {
            return Ok(());
        }
        out.swept = true;
        let fields = self.settings.fields.clone();
        let mut report = PollReport::default();
        let mut page_no = 1;
        let (mut count, mut seen_max) = (None, 0);
        let mut ids = std::collections::HashSet::new();
        loop {
            let page = self.fetch(0, page_no, cancel).await?;
            out.pages += 1;
            count.get_or_insert(page.count);
            let more = page.next.is_some() && !page.results.is_empty();
            let mut records: Vec<UpstreamRecord> = Vec::new();
            for raw in page.results {
                match parse_record(raw, &fields) {
                    Ok(r) => {
                        ids.insert(r.id.clone());
                        // Every stamp shown counts as evidence against a
                        // reset, also one above the cursor left to the polls.
                        seen_max = seen_max.max(r.stamp);
                        if r.stamp <= top {
                            records.push(r);
                        }
                    }
                    Err(rej) => self.reject(rej, &mut report).await?,
                }
            }
            records.sort_unstable_by_key(|r| r.stamp);
            out.compared += records.len() as u64;
            self.commit(&records, false, &mut report, cancel).await?;
            if !more {
                break;
            }
            page_no += 1;
        }
        out.outcome = report.outcome;
        out.repaired = out.outcome.appended();
        let count = count.unwrap_or(0);
        // A complete sweep saw as many rows as the upstream counted: a row
        // it lacks is gone, and a stamp it lacks is missing upstream. Rows
        // removed or moved during it shift others across pages unseen.
        let complete = ids.len() as u64 >= count;
        let shown = complete.then_some(seen_max);
        self.sweep_evidence(top, count, shown, cancel).await?;
        if complete {
            out.gone = self.hard_deletes(&ids, cancel).await?;
        }
        Ok(())
    }

    /// The sweep's answers are evidence of an upstream reset as a poll's
    /// are (rebase.rs): above all, a `sync=0` count well below the records
    /// held. Only stamps at or below the cursor were appended, which a
    /// reset upstream's versions are not above, so nothing was invented.
    async fn sweep_evidence(
        &mut self,
        top: u64,
        count: u64,
        seen_max: Option<u64>,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let mut report = PollReport {
            cursor: self.cursor(top).await,
            ..PollReport::default()
        };
        match self.check_upstream(&report, count, seen_max).await {
            Err(PollError::UpstreamReset(evidence)) => {
                self.upstream_reset(evidence, &mut report, cancel).await
            }
            other => other,
        }
    }

    /// Whether `reconcile_interval` has passed since the last sweep (the
    /// first comes one interval after start), `sync --reconcile` asked, or
    /// an initial load just completed with `reconcile_after_load`.
    async fn reconcile_due(&mut self) -> bool {
        if std::mem::take(&mut self.load_sweep_due) {
            return true;
        }
        // The poll's start read whether a request waits (idle.rs).
        let asked = std::mem::replace(&mut self.reconcile_asked, true);
        let requested = asked
            && match self.store.take_reconcile_request(&self.table).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(table = %self.table, error = %e, "cannot read the reconcile request");
                    false
                }
            };
        let Some(every) = self.settings.reconcile_interval else {
            return requested;
        };
        let last = *self.last_reconcile.get_or_insert_with(Instant::now);
        requested || last.elapsed() >= every
    }

    /// Runs a due sweep from the poll loop; failures are logged and the
    /// next sweep comes an interval later. Public so tests run the loop's
    /// step after a poll.
    pub async fn maybe_reconcile(&mut self, cancel: &CancellationToken) {
        if !self.reconcile_due().await {
            return;
        }
        match self.reconcile_once(cancel).await {
            Ok(r) if r.swept => {
                tracing::info!(table = %self.table, pages = r.pages, compared = r.compared,
                    repaired = r.repaired, "reconcile sweep finished");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(table = %self.table, error = %e, "the reconcile sweep failed; the next one tries again")
            }
        }
    }
}
