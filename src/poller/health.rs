//! A table's health as its poller judges it (the rules: `crate::health`),
//! and the `_relay/health` table every transition is appended to.
//!
//! Only the instance holding a table's lease judges it, and it starts from
//! the health stored in the table's poll status, so a takeover carries on
//! rather than starting over. A transition is logged at warn, counted, and
//! sent to this instance's [`HealthWriter`], which appends it through the
//! ordinary append path (lease, epoch, index) to `_relay/health`: a
//! table-level event (record `source/resource`) and, when the source's
//! worst state changed with it, a source-level one (record `source`). The
//! stamp is the transition time in ms, raised past the table's last stamp
//! so it strictly increases; docs/events.md lists the event types.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::{json, value::to_raw_value};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::{
    events::now_ms,
    health::{Health, Outcome, SourceHealth, State, Tracker},
    record::UpstreamRecord,
    store::{AppendBatch, Refusal, Store, StoreError, StoreResult, Table, alerts::Marks},
    table::RELAY_SOURCE,
};

/// The table health transitions are appended to.
pub fn health_table() -> Table {
    Table::new(RELAY_SOURCE, "health")
}

/// What the poller keeps to judge its table.
pub(super) struct Judge {
    tracker: Tracker,
    /// The alert marks as of the last poll judged: new ones degrade.
    marks: Marks,
}

/// A transition on its way to `_relay/health`.
#[derive(Debug)]
pub struct Note {
    pub table: Table,
    pub from: State,
    pub to: Health,
}

/// Where pollers send their transitions; cheap to clone.
#[derive(Clone)]
pub struct HealthLog(mpsc::UnboundedSender<Note>);

impl Poller {
    /// Judges a finished poll; answers the table's health to store. `None`
    /// when this instance did not poll under the lease (it forgets its
    /// judge then: the holder judges).
    pub(super) async fn judge(
        &mut self,
        result: &Result<PollReport, PollError>,
        now: u64,
        next: u64,
    ) -> Option<Health> {
        let outcome = match result {
            Ok(r) if !r.leased => None,
            Err(PollError::Store(e)) if e.refusal() == Some(Refusal::LeaseLost) => None,
            Err(PollError::Cancelled) => None,
            Ok(_) => Some(Outcome::Ok { alerts: vec![] }),
            Err(e) => Some(Outcome::Failed {
                failure: e.failure(),
                reason: e.to_string(),
            }),
        };
        let Some(mut outcome) = outcome else {
            if let Some(j) = self.judge.take() {
                self.metrics
                    .health(&self.table, Some(j.tracker.health().state), None);
            }
            return None;
        };
        if self.judge.is_none() {
            let stored = self.store.poll_status(&self.table).await.ok().flatten();
            let (health, ok_ms) = stored.map_or((None, None), |s| (s.health, s.ok_ms));
            let interval = self.settings.poll_interval.as_millis() as u64;
            let after = self.settings.failing_after_intervals;
            let tracker = Tracker::new(now, health, ok_ms, interval, after);
            let marks = self.alerts().clone();
            self.metrics
                .health(&self.table, None, Some(tracker.health().state));
            self.judge = Some(Judge { tracker, marks });
        }
        let marks = self.alerts().clone();
        // Only unpaused tables are polled: a poll ends a pause.
        if self.judge.as_ref()?.tracker.health().state == State::Paused {
            self.feed(Outcome::Resumed, now, Some(next));
        }
        let judge = self.judge.as_mut()?;
        if let Outcome::Ok { alerts } = &mut outcome {
            *alerts = raised(&judge.marks, &marks);
        }
        judge.marks = marks;
        self.feed(outcome, now, Some(next))
    }

    /// Feeds the judge and reports a transition; answers the health.
    fn feed(&mut self, outcome: Outcome, now: u64, next: Option<u64>) -> Option<Health> {
        let judge = self.judge.as_mut()?;
        let transition = judge.tracker.feed(outcome, now, next);
        let health = judge.tracker.health().clone();
        if let Some(t) = transition {
            self.transition(t.from, &t.to);
        }
        Some(health)
    }

    /// The table leaves this instance's schedule, `paused` or removed.
    /// When this instance judged it (it polled it last under the lease), a
    /// pause shows in its health, the stored status too, and the transition
    /// is reported; either way this instance stops counting the table.
    pub async fn retire_health(&mut self, paused: bool) {
        if paused
            && let Some(health) = self.feed(Outcome::Paused, now_ms(), None)
            && let Ok(Some(mut status)) = self.store.poll_status(&self.table).await
        {
            status.health = Some(health);
            if let Err(e) = self.store.put_poll_status(&self.table, &status).await {
                tracing::debug!(table = %self.table, error = %e, "cannot record the paused health");
            }
        }
        if let Some(j) = self.judge.take() {
            let state = j.tracker.health().state;
            self.metrics.health(&self.table, Some(state), None);
        }
    }

    fn transition(&self, from: State, to: &Health) {
        tracing::warn!(source = %self.table.source, resource = %self.table.resource,
            from = %from, to = %to.state, reason = to.reason.as_deref().unwrap_or(""),
            "table health changed (docs/operations.md, \"Health\")");
        self.metrics.health(&self.table, Some(from), Some(to.state));
        if let Some(log) = &self.health_log {
            let note = Note {
                table: self.table.clone(),
                from,
                to: to.clone(),
            };
            // A closed log is a relay shutting down.
            let _ = log.0.send(note);
        }
    }
}

/// The alerts raised since `before`, in words (`count_shrank x1`).
fn raised(before: &Marks, now: &Marks) -> Vec<String> {
    now.iter()
        .filter_map(|(alert, m)| {
            let n = m.count - before.get(alert).map_or(0, |b| b.count.min(m.count));
            (n > 0).then(|| format!("{} x{n}", alert.name()))
        })
        .collect()
}

/// The tables of a source, as the relay knows them now.
pub type TablesOf = Arc<dyn Fn(&str) -> Vec<Table> + Send + Sync>;

/// Appends this instance's transitions to `_relay/health`, one at a time.
pub struct HealthWriter {
    rx: mpsc::UnboundedReceiver<Note>,
    store: Arc<dyn Store>,
    holder: String,
    lease_ttl: Duration,
    /// A source's tables, to fold its health from theirs.
    tables_of: TablesOf,
    /// Poked after each append, for the live tails and delivery.
    wake: Arc<Notify>,
}

impl HealthLog {
    pub fn new(
        store: Arc<dyn Store>,
        holder: &str,
        lease_ttl: Duration,
        tables_of: TablesOf,
        wake: Arc<Notify>,
    ) -> (HealthLog, HealthWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = HealthWriter {
            rx,
            store,
            holder: holder.to_string(),
            lease_ttl,
            tables_of,
            wake,
        };
        (HealthLog(tx), writer)
    }
}

impl HealthWriter {
    /// Writes transitions as they come until cancelled, then the ones
    /// already sent; a store error is retried, so none is dropped while the
    /// relay runs.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let note = tokio::select! {
                () = cancel.cancelled() => break,
                note = self.rx.recv() => note,
            };
            let Some(note) = note else { return };
            while let Err(e) = self.write(&note).await {
                tracing::warn!(error = %e, table = %note.table, "cannot append a health transition to _relay/health; trying again");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        while let Ok(note) = self.rx.try_recv() {
            let _ = self.write(&note).await;
        }
    }

    /// Appends one transition, and its source's when that changed, under
    /// the lease of `_relay/health` (instances take turns).
    pub async fn write(&self, note: &Note) -> StoreResult<()> {
        let table = health_table();
        // Another instance writes its own transitions meanwhile; its lease
        // ends within a TTL, so waiting longer means something is wrong.
        let give_up = tokio::time::Instant::now() + self.lease_ttl;
        while !self
            .store
            .lease(&table, &self.holder, self.lease_ttl)
            .await?
        {
            if tokio::time::Instant::now() > give_up {
                return Err(StoreError::refused(&table, Refusal::LeaseLost));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let epoch = self.store.init_epoch(&table, &fresh).await?;
        let records = self.records(note).await?;
        let mut stamp = self.store.last_id(&table).await?.stamp;
        for (id, data) in records {
            stamp = now_ms().max(stamp + 1);
            let record = UpstreamRecord {
                id,
                stamp,
                deleted: false,
                raw: to_raw_value(&data).expect("a JSON value serialises"),
            };
            let batch = AppendBatch {
                holder: &self.holder,
                epoch: &epoch,
                snapshot: false,
                observed: now_ms(),
                records: std::slice::from_ref(&record),
                rebase: false,
            };
            self.store.append(&table, batch).await?;
        }
        self.wake.notify_waiters();
        self.store.release(&table, &self.holder).await
    }

    /// The records of a transition: the table's, then its source's when
    /// the source's worst state moved with it.
    async fn records(&self, note: &Note) -> StoreResult<Vec<(String, serde_json::Value)>> {
        let t = &note.table;
        let mut out = vec![(
            t.to_string(),
            json!({
                "source": t.source, "resource": t.resource, "state": note.to.state,
                "from": note.from, "reason": note.to.reason, "since": note.to.since,
                "next_attempt": note.to.next_attempt,
            }),
        )];
        let mut others = Vec::new();
        for other in (self.tables_of)(&t.source).iter().filter(|o| *o != t) {
            let stored = self.store.poll_status(other).await?;
            others.extend(stored.and_then(|s| s.health));
        }
        let before = Health {
            state: note.from,
            ..note.to.clone()
        };
        let now = now_ms();
        let was = SourceHealth::of(others.iter().chain([&before]), now);
        let is = SourceHealth::of(others.iter().chain([&note.to]), now);
        if was.state != is.state {
            let counts: BTreeMap<&str, usize> =
                is.counts.iter().map(|(s, n)| (s.name(), *n)).collect();
            out.push((
                t.source.clone(),
                json!({
                    "source": t.source, "state": is.state, "from": was.state,
                    "reason": is.reason, "since": is.since, "next_attempt": is.next_attempt,
                    "tables": counts,
                }),
            ));
        }
        Ok(out)
    }
}
