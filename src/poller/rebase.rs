//! Upstream resets: an upstream that went back in time under the relay (a
//! UAT environment refreshed from an older copy, a database restored from a
//! backup). Its stamps start again below the cursor, so every later change
//! would be dropped as older than what the index holds.
//!
//! Two pieces of evidence, both impossible for an upstream that keeps
//! `docs/upstream.md` (stamps only grow, records are never removed): an
//! answer to `sync < cursor` that shows no stamp at or above the cursor
//! (the record the cursor came from, or its newer version, must be there),
//! and a `sync=0` count well below the records the relay holds. Either one
//! logs `UPSTREAM RESET`, counts it and marks the table; then
//! `on_upstream_reset` says what to do. `pause` appends nothing and fails
//! every poll until the evidence is gone. `resnapshot` walks the table from
//! `sync=0` and appends, with `snapshot=1`, every version that differs from
//! the index, lower stamps included (`events::reclassify`), and a `deleted`
//! event with stamp 0 for each record the upstream no longer returns. The
//! stream's IDs keep growing (those events are late events), so the
//! upstream's own cursor is kept apart from the stream's (the `era`) until
//! the upstream's stamps pass the stream's top again.

use std::collections::HashSet;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, Poller};
use crate::{config::OnUpstreamReset, record::UpstreamRecord, store::alerts::Alert};

/// Whether a `sync=0` count is well below the records held: more than a
/// tenth (and at least ten) fewer, more than a few hard deletes explain.
fn well_below(count: u64, held: u64) -> bool {
    count + (held / 10).max(10) < held
}

impl Poller {
    /// The cursor polls start from: the stream's, or below it the
    /// upstream's own after a reload (kept in the poll status, so a restart
    /// or another instance continues from it).
    pub(super) async fn cursor(&mut self, stream: u64) -> u64 {
        if !self.era_loaded {
            self.era_loaded = true;
            if let Ok(Some(s)) = self.store.poll_status(&self.table).await {
                self.era = s.upstream_cursor;
                // The marks another instance (or run) raised stay shown.
                let mut marks = self.alerts();
                for (alert, mark) in s.alerts {
                    marks.entry(alert).or_insert(mark);
                }
            }
        }
        self.era = self.era.filter(|&e| e < stream);
        let cursor = self.era.unwrap_or(stream);
        self.resume.map_or(cursor, |r| r.min(cursor))
    }

    /// Fails with [`PollError::UpstreamReset`] when a poll's answers show
    /// the upstream went back in time: `count` is the first answer's, and
    /// `seen_max` the highest stamp the poll saw, `None` when its answers
    /// may have missed rows (rows removed or moved during a `pages` walk
    /// shift the others across page boundaries), so a missing stamp is no
    /// evidence.
    pub(super) async fn check_upstream(
        &mut self,
        report: &PollReport,
        count: u64,
        seen_max: Option<u64>,
    ) -> Result<(), PollError> {
        let cursor = report.cursor;
        if cursor == 0 || report.loading {
            return Ok(());
        }
        if let Some(seen_max) = seen_max
            && report.sync < cursor
            && seen_max < cursor
        {
            return Err(PollError::UpstreamReset(format!(
                "asked for sync={} it shows no stamp at or above the cursor {cursor} (its highest is {seen_max})",
                report.sync
            )));
        }
        if report.sync == 0 {
            let held = match self.known.held {
                Some(held) => held,
                None => {
                    // Records found gone (stamp 0) are not held any more.
                    let index = self.store.index_all(&self.table).await?;
                    index.iter().filter(|(_, e)| e.stamp > 0).count() as u64
                }
            };
            self.known.held = Some(held);
            if well_below(count, held) {
                return Err(PollError::UpstreamReset(format!(
                    "sync=0 counts {count} records while the relay holds {held}"
                )));
            }
        }
        Ok(())
    }

    /// Says so once per episode, then pauses or reloads the table.
    pub(super) async fn upstream_reset(
        &mut self,
        evidence: String,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let action = self.settings.on_upstream_reset;
        if !self.reset_seen {
            tracing::error!(table = %self.table, %evidence, ?action,
                "UPSTREAM RESET: the upstream went back in time (restored or reset); without action every \
                 later change would be dropped as older than the index. on_upstream_reset = \"resnapshot\" \
                 reloads the table as a snapshot, \"pause\" stops appending until the upstream shows the cursor again");
            self.alert(Alert::UpstreamReset, 1);
        }
        self.reset_seen = true;
        match action {
            OnUpstreamReset::Pause => Err(PollError::UpstreamReset(evidence)),
            OnUpstreamReset::Resnapshot => self.resnapshot(report, cancel).await,
        }
    }

    /// Reloads the table from `sync=0` over the index (see the module doc).
    /// Only versions at or below the walk's floor are appended, as for an
    /// unsettled poll; the polls go on from there.
    async fn resnapshot(
        &mut self,
        report: &mut PollReport,
        cancel: &CancellationToken,
    ) -> Result<(), PollError> {
        let mut seen_max = 0;
        let set = self.walk_set(0, &mut seen_max, report, cancel).await?;
        let returned: HashSet<String> = set.union.keys().cloned().collect();
        let mut records: Vec<UpstreamRecord> = (set.union.into_values())
            .filter(|r| r.stamp <= set.floor)
            .collect();
        records.sort_unstable_by_key(|r| r.stamp);
        // A walk that may have missed rows proves no row gone.
        let gone = if set.complete {
            self.gone(&returned).await?
        } else {
            Vec::new()
        };
        self.rebasing = true;
        let mut result = self.commit(&records, true, report, cancel).await;
        if result.is_ok() {
            result = self.commit(&gone, true, report, cancel).await;
        }
        self.rebasing = false;
        result?;
        if !gone.is_empty() {
            self.alert(Alert::HardDeletes, gone.len() as u64);
        }
        tracing::warn!(table = %self.table, reloaded = report.outcome.appended(), gone = gone.len(),
            cursor = set.floor, "reloaded the table after an upstream reset (snapshot=1)");
        self.era = Some(set.floor);
        report.top = set.floor;
        Ok(())
    }

    /// Records the index holds (not deleted) that the upstream no longer
    /// returns, as `deleted` versions with stamp 0 and their last data.
    pub(super) async fn gone(
        &self,
        returned: &HashSet<String>,
    ) -> Result<Vec<UpstreamRecord>, PollError> {
        let mut out = Vec::new();
        for (id, entry) in self.store.index_all(&self.table).await? {
            if entry.deleted || returned.contains(&id) {
                continue;
            }
            let data = match self.store.record(&self.table, &id).await? {
                Some(r) => r.data,
                None => serde_json::json!({ self.settings.fields.id.as_str(): id }).to_string(),
            };
            let raw = RawValue::from_string(data)
                .map_err(|e| crate::store::StoreError::Corrupt(format!("record {id}: {e}")))?;
            out.push(UpstreamRecord {
                id,
                stamp: 0,
                deleted: true,
                raw,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_count_is_well_below_when_more_than_hard_deletes_explain() {
        assert!(super::well_below(54, 118));
        assert!(!super::well_below(110, 118));
        assert!(!super::well_below(0, 9), "small tables need ten missing");
    }
}
