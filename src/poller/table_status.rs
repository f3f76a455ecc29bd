//! What a poll leaves behind besides events: the status every surface
//! shows (kept in the store by the lease holder), the append rate, the log
//! line.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use serde::Serialize;

use super::{PollError, PollReport, Poller};
use crate::{
    events::now_ms,
    store::{
        PollStatus,
        alerts::{self, Alert, Marks},
    },
};

/// Live facts about a table, shared with the status surfaces.
#[derive(Debug, Default)]
pub struct TableStatus {
    /// Poked after every append, so live tails need not wait for their tick.
    pub wake: Arc<tokio::sync::Notify>,
    /// True while the poll loop runs; a loop that ended (or panicked) is not ready.
    pub running: AtomicBool,
    pub pages: AtomicU64,
    pub fetched: AtomicU64,
    pub appended: AtomicU64,
    pub polls: AtomicU64,
    pub last: Mutex<LastPoll>,
    /// Store resets noticed on this table (see epoch.rs), the time of the
    /// last one (unix ms, 0 for none), and whether its reload still runs.
    pub resets: AtomicU64,
    pub last_reset_ms: AtomicU64,
    pub reloading: AtomicBool,
    /// What this table's poller noticed that breaks an assumption of the
    /// sync (store/alerts.rs); written into the stored poll status.
    pub alerts: Mutex<Marks>,
    /// This instance's last poll of the table held its lease: retention
    /// trims only such tables, so one instance trims each.
    pub holds_lease: Arc<AtomicBool>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct LastPoll {
    pub finished_ms: Option<u64>,
    pub ok_ms: Option<u64>,
    pub error: Option<String>,
    pub cursor: Option<String>,
    pub walks: u32,
}

impl Poller {
    /// Notes a poll's result in the shared status, the log, and (when this
    /// instance polled) the store, where every instance's status surfaces
    /// read it.
    pub(super) async fn record(&mut self, result: &Result<PollReport, PollError>) {
        self.note(result);
        self.wait = self.next_wait(result);
        let now = now_ms();
        let health = self
            .judge(result, now, now + self.wait.as_millis() as u64)
            .await;
        if matches!(result, Ok(r) if !r.leased) {
            // Another instance polls this table and writes its status, and
            // reloads it after a reset.
            self.samples.clear();
            self.status.reloading.store(false, Ordering::Relaxed);
            return;
        }
        if let Ok(r) = result {
            self.last_ok_ms = Some(now);
            // A reset table's reload is done once a poll of it succeeds.
            self.status.reloading.store(false, Ordering::Relaxed);
            self.saw_success = true;
            if r.loading {
                // The load is complete.
                self.load_sweep_due = self.settings.reconcile_after_load;
                if let Err(e) = self.store.set_loading(&self.table, false).await {
                    tracing::warn!(error = %e, "cannot record that the initial load completed; the next poll tries again");
                }
            }
        } else if self.last_ok_ms.is_none() {
            // Keep the last success another instance (or run) recorded; if
            // that cannot be read, write nothing rather than erase it.
            match self.store.poll_status(&self.table).await {
                Ok(stored) => self.last_ok_ms = stored.and_then(|s| s.ok_ms),
                Err(_) => return,
            }
        }
        let status = PollStatus {
            holder: self.holder.clone(),
            finished_ms: now,
            ok_ms: self.last_ok_ms,
            error: result.as_ref().err().map(|e| e.to_string()),
            rate_per_min: self.rate(now),
            alerts: self.alerts().clone(),
            upstream_cursor: self.era,
            health,
        };
        if let Err(e) = self.store.put_poll_status(&self.table, &status).await {
            tracing::debug!(table = %self.table, error = %e, "cannot record the poll status");
        }
    }

    /// The table's alert marks.
    pub(super) fn alerts(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.status.alerts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `n` more of `alert` in its metric and the table's marks; the
    /// caller logs it, in its own words.
    pub(super) fn alert(&self, alert: Alert, n: u64) {
        self.metrics.alert(alert, &self.table, n);
        alerts::raise(&mut self.alerts(), alert, n, now_ms());
    }

    /// Events appended per minute over about the last minute, from the
    /// samples this instance took while it held the lease.
    fn rate(&mut self, now: u64) -> f64 {
        const WINDOW_MS: u64 = 60_000;
        let total = self.status.appended.load(Ordering::Relaxed);
        self.samples.push_back((now, total));
        // Keep one sample at or before the window's start as the baseline.
        while self.samples.len() > 2 && self.samples[1].0 + WINDOW_MS <= now {
            self.samples.pop_front();
        }
        let (t0, a0) = self.samples[0];
        // Over a full minute even when the samples span less: a first poll
        // that loads 30 records in 4 ms shows 30/min, not 450,000.
        (total - a0) as f64 * 60_000.0 / now.saturating_sub(t0).max(WINDOW_MS) as f64
    }

    /// Notes a poll's result in this process's status and the log.
    fn note(&self, result: &Result<PollReport, PollError>) {
        let mut last = self.status.last.lock().unwrap_or_else(|p| p.into_inner());
        last.finished_ms = Some(now_ms());
        match result {
            Ok(r) => {
                last.ok_ms = last.finished_ms;
                last.error = None;
                last.cursor = Some(r.after.to_string());
                last.walks = r.walks;
                if r.outcome.appended() > 0 || r.rejected > 0 {
                    tracing::info!(table = %self.table, appended = r.outcome.appended(),
                        late = r.outcome.late, rejected = r.rejected, cursor = %r.after, "poll appended events");
                }
            }
            Err(e) => {
                last.error = Some(e.to_string());
                tracing::warn!(table = %self.table, error = %e, "poll failed; the cursor did not move");
            }
        }
    }

    pub(super) fn observe(&self, report: &PollReport, result: &Result<(), PollError>) {
        use crate::metrics::{ErrorLabels, OpLabels, table_labels};
        let m = &self.metrics;
        let labels = table_labels(&self.table);
        m.cursor
            .get_or_create(&labels)
            .set(report.after.stamp as i64);
        if report.walks > 0 {
            m.walks
                .get_or_create(&labels)
                .inc_by(u64::from(report.walks));
        }
        if report.settle_pages > 0 {
            m.settle_pages
                .get_or_create(&labels)
                .inc_by(u64::from(report.settle_pages));
        }
        if report.unsettled {
            m.unsettled.get_or_create(&labels).inc();
        }
        m.poll_duration
            .get_or_create(&labels)
            .observe(report.duration_ms as f64 / 1000.0);
        let o = &report.outcome;
        for (op, n) in [
            ("created", o.created),
            ("updated", o.updated),
            ("deleted", o.deleted),
            ("restored", o.restored),
        ] {
            if n > 0 {
                let l = OpLabels {
                    source: labels.source.clone(),
                    resource: labels.resource.clone(),
                    op: op.into(),
                };
                m.appended.get_or_create(&l).inc_by(n);
            }
        }
        if report.rejected > 0 {
            m.rejected.get_or_create(&labels).inc_by(report.rejected);
        }
        if let Err(e) = result
            && !matches!(e, PollError::Cancelled)
        {
            let l = ErrorLabels {
                source: labels.source.clone(),
                resource: labels.resource.clone(),
                kind: e.kind().into(),
            };
            m.upstream_errors.get_or_create(&l).inc();
        }
    }
}
