//! The Redis append: read, plan in Rust, apply under a guard. One script
//! (`append_read.lua`) reads what the planner (`store/plan.rs`) needs in
//! one round trip; the plan is made here; a second script
//! (`append_apply.lua`) applies its writes only while the fences hold and
//! the stream's last generated ID and the trimmed marker are what the read
//! saw. The lease holder is the only appender, so only a trim can move
//! them in between: then the append reads and plans again.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::{Keys, RedisStore, entries::parse_id, refusal};
use crate::events::{AppendOutcome, IndexEntry, StreamId};
use crate::record::UpstreamRecord;
use crate::store::plan::{self, Held, Keep, Plan, Rules, TailLost};
use crate::store::{AppendBatch, Refusal, StoreError, StoreResult, Table};

static READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("append_read.lua")));
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("append_apply.lua")));

/// How many times an append reads and plans again when a trim moved the
/// stream under it, before it is refused as [`Refusal::Raced`].
const TRIES: usize = 3;

/// What `append_read.lua` saw.
struct Seen {
    lease: Option<String>,
    epoch: Option<String>,
    top: StreamId,
    /// The stream's last generated ID and the trimmed marker as read, the
    /// apply's guard.
    issued: String,
    trimmed: String,
    index: Vec<Option<IndexEntry>>,
}

impl RedisStore {
    /// Appends the chunk, reading and planning again (at most `TRIES`
    /// times) when a trim raced it.
    pub(super) async fn append_planned(
        &self,
        t: &Table,
        batch: &AppendBatch<'_>,
    ) -> StoreResult<AppendOutcome> {
        for _ in 0..TRIES {
            if let Some(out) = self.try_append(t, batch).await? {
                return Ok(out);
            }
        }
        Err(StoreError::refused(t, Refusal::Raced))
    }

    /// One read, plan and apply; `None` when the guard found the stream
    /// moved since the read.
    async fn try_append(
        &self,
        t: &Table,
        batch: &AppendBatch<'_>,
    ) -> StoreResult<Option<AppendOutcome>> {
        let keys = self.keys(t);
        let seen = self.read_chunk(&keys, batch.records).await?;
        if seen.lease.as_deref() != Some(batch.holder) {
            return Err(StoreError::refused(t, Refusal::LeaseLost));
        }
        if seen.epoch.as_deref() != Some(batch.epoch) {
            return Err(StoreError::refused(t, Refusal::EpochChanged));
        }
        let held = Held {
            index: &seen.index,
            top: seen.top,
            issued: parse_id(&seen.issued)?,
            trimmed: match seen.trimmed.as_str() {
                "" => StreamId::ZERO,
                mark => parse_id(mark)?,
            },
        };
        let rules = Rules {
            highest: self.highest.get(t, batch.epoch),
            rebase: batch.rebase,
            keep: self.keep.keeps(t),
        };
        let plan = match plan::plan(batch.records, held, rules) {
            Ok(plan) => plan,
            Err(lost) => return self.tail_lost(t, batch, &keys, &seen, lost).await,
        };
        if plan.events.is_empty() && plan.keep.is_empty() {
            // Nothing to write (a chunk the index holds already): the read
            // checked the fences.
            return Ok(Some(plan.outcome));
        }
        let copies = self.kept_copies(&keys, batch.records, &plan).await?;
        let mut inv = guarded(&keys, batch, &seen);
        inv.arg("");
        plan_args(&mut inv, batch, &plan, &copies);
        if !self.apply(t, inv).await? {
            return Ok(None);
        }
        self.highest.raise(t, batch.epoch, plan.last);
        Ok(Some(plan.outcome))
    }

    async fn read_chunk(&self, keys: &Keys, records: &[UpstreamRecord]) -> StoreResult<Seen> {
        let mut inv = READ.prepare_invoke();
        inv.key(&keys.events)
            .key(&keys.index)
            .key(&keys.lease)
            .key(&keys.epoch)
            .key(&keys.trimmed);
        for r in records {
            inv.arg(&r.id);
        }
        let mut c = self.conn.clone();
        let reply: Vec<Option<String>> = inv.invoke_async(&mut c).await.map_err(|e| self.err(e))?;
        let corrupt =
            || StoreError::Corrupt(format!("append_read.lua answered {} values", reply.len()));
        if reply.len() != 5 + records.len() {
            return Err(corrupt());
        }
        let mut values = reply.into_iter();
        let mut next = || values.next().flatten();
        let (lease, epoch, top, issued, trimmed) = (next(), next(), next(), next(), next());
        let (Some(top), Some(issued)) = (top, issued) else {
            return Err(StoreError::Corrupt(
                "append_read.lua answered no stream IDs".into(),
            ));
        };
        Ok(Seen {
            lease,
            epoch,
            top: parse_id(&top)?,
            issued,
            trimmed: trimmed.unwrap_or_default(),
            index: values
                .map(|v| v.as_deref().and_then(IndexEntry::decode))
                .collect(),
        })
    }

    /// The kept copies of the records the plan may keep a copy of (a
    /// duplicate of a version whose event was trimmed: a rare path, read
    /// only when the plan has one), in the plan's order.
    async fn kept_copies(
        &self,
        keys: &Keys,
        records: &[UpstreamRecord],
        plan: &Plan,
    ) -> StoreResult<Vec<Option<String>>> {
        let ids: Vec<&str> = plan
            .keep
            .iter()
            .filter_map(|k| match k {
                Keep::DuplicateOfTrimmed { record, .. } => Some(records[*record].id.as_str()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let mut got = Vec::with_capacity(ids.len());
        for slice in ids.chunks(500) {
            let part: Vec<Option<String>> = c
                .hmget(&keys.records, slice)
                .await
                .map_err(|e| self.err(e))?;
            got.extend(part);
        }
        Ok(got)
    }

    /// A lost tail: raises the stream's last generated ID under the guard
    /// when the plan says so, then refuses the append.
    async fn tail_lost(
        &self,
        t: &Table,
        batch: &AppendBatch<'_>,
        keys: &Keys,
        seen: &Seen,
        lost: TailLost,
    ) -> StoreResult<Option<AppendOutcome>> {
        if lost.raise {
            let mut inv = guarded(keys, batch, seen);
            inv.arg(lost.highest.to_string());
            if !self.apply(t, inv).await? {
                return Ok(None);
            }
        }
        // The stream's ID is raised; from now on the stream's last entry
        // is what this process appended.
        self.highest.set(t, batch.epoch, lost.top);
        Err(StoreError::refused(t, lost.refusal()))
    }

    /// Runs `append_apply.lua`; false when its guard found the stream moved.
    async fn apply(&self, t: &Table, inv: redis::ScriptInvocation<'_>) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        match inv.invoke_async::<i64>(&mut c).await {
            Ok(_) => Ok(true),
            Err(e) => match refusal(&e) {
                Some(Refusal::Raced) => Ok(false),
                Some(r) => Err(StoreError::refused(t, r)),
                None => Err(self.err(e)),
            },
        }
    }
}

/// `append_apply.lua` with the table's keys and its guard: the fences and
/// what the read saw.
fn guarded(keys: &Keys, batch: &AppendBatch<'_>, seen: &Seen) -> redis::ScriptInvocation<'static> {
    let mut inv = APPLY.prepare_invoke();
    inv.key(&keys.events)
        .key(&keys.index)
        .key(&keys.lease)
        .key(&keys.epoch)
        .key(&keys.trimmed)
        .key(&keys.records)
        .key(&keys.stamps)
        .key(&keys.late);
    inv.arg(batch.holder)
        .arg(batch.epoch)
        .arg(&seen.issued)
        .arg(&seen.trimmed);
    inv
}

/// The plan's writes as `append_apply.lua` takes them, after its raise
/// argument: compact and positional.
fn plan_args(
    inv: &mut redis::ScriptInvocation<'_>,
    batch: &AppendBatch<'_>,
    plan: &Plan,
    copies: &[Option<String>],
) {
    let text = |v: Option<StreamId>| v.map(|v| v.to_string()).unwrap_or_default();
    inv.arg(if batch.snapshot { "1" } else { "0" })
        .arg(batch.observed)
        .arg(plan.events.len())
        .arg(plan.index.len());
    for e in &plan.events {
        let r = &batch.records[e.record];
        inv.arg(e.id.to_string())
            .arg(e.op.as_str())
            .arg(&r.id)
            .arg(r.stamp)
            .arg(e.prev_stamp().map(|s| s.to_string()).unwrap_or_default())
            .arg(text(e.prev_id()))
            .arg(r.raw.get());
    }
    for (i, entry) in &plan.index {
        inv.arg(&batch.records[*i].id).arg(entry.encode());
    }
    let mut copies = copies.iter();
    for k in &plan.keep {
        let (code, record, a, b) = match *k {
            Keep::PrevTrimmed { record } => ("S", record, String::new(), String::new()),
            Keep::NowLate { record, stamp } => ("L", record, stamp.to_string(), String::new()),
            Keep::NoLongerLate { record } => ("l", record, String::new(), String::new()),
            Keep::DuplicateOfTrimmed { record, entry } => {
                let kept = copies
                    .next()
                    .and_then(|c| c.as_deref().and_then(copy_stamp));
                if !plan::needs_copy(kept, entry.stamp) {
                    continue;
                }
                let head = IndexEntry { at: None, ..entry }.encode();
                let copy = format!("{head} {}", batch.records[record].raw.get());
                ("K", record, copy, entry.stamp.to_string())
            }
        };
        inv.arg(code).arg(&batch.records[record].id).arg(a).arg(b);
    }
}

/// The stamp a kept copy `<stamp>[:deleted] <JSON>` starts with.
fn copy_stamp(copy: &str) -> Option<u64> {
    let digits = copy
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(copy.len());
    copy[..digits].parse().ok()
}
