//! The Redis append: read, plan in Rust, apply under a guard. One script
//! (`append_read.lua`) reads what the planner (`store/plan.rs`) needs in
//! one round trip; the plan is made here; a second script
//! (`append_apply.lua`) applies its writes only while the fences hold and
//! the stream's last generated ID and the trimmed marker are what the read
//! saw. The lease holder is the only appender, so only a trim can move
//! them in between: then the append reads and plans again.
//!
//! Bulk loads skip the read. After a chunk whose records were all new to
//! the index, the store remembers the stream as it left it ([`Fresh`]);
//! the table's next chunk is planned on that, with its records assumed new
//! too, and the apply checks, under the same guard, that none of them is
//! in the index. So a first load or a new source's snapshot costs one
//! round trip a chunk; a chunk that updates records (the steady state)
//! reads first as above, and a failed check reads and plans again.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use redis::{AsyncCommands, RedisWrite, Script};

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

/// A table's stream as this process's last append left it, when that
/// append's records were all new to the index: what the next chunk of a
/// bulk load is planned on without a read (see the module's docs).
#[derive(Debug, Clone)]
pub(super) struct Fresh {
    issued: String,
    trimmed: String,
}

/// [`Fresh`] per table; a table whose last append updated a record (or
/// failed) has none.
#[derive(Debug, Default)]
pub(super) struct FreshTables(Mutex<HashMap<Table, Fresh>>);

impl FreshTables {
    fn take(&self, t: &Table) -> Option<Fresh> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(t)
    }

    fn put(&self, t: &Table, fresh: Fresh) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(t.clone(), fresh);
    }
}

impl RedisStore {
    /// Appends the chunk: without a read when the table's last append
    /// found its records all new, else reading and planning again (at most
    /// `TRIES` times) when a trim raced it.
    pub(super) async fn append_planned(
        &self,
        t: &Table,
        batch: &AppendBatch<'_>,
    ) -> StoreResult<AppendOutcome> {
        if let Some(out) = self.try_fresh(t, batch).await? {
            return Ok(out);
        }
        for _ in 0..TRIES {
            if let Some(out) = self.try_append(t, batch).await? {
                return Ok(out);
            }
        }
        Err(StoreError::refused(t, Refusal::Raced))
    }

    /// The append planned on the table's [`Fresh`] state, its records
    /// assumed new; `None` when there is none, or when the plan needs what
    /// only a read gives (a lost tail, nothing to write), or when the apply
    /// found the stream moved or a record in the index: then the caller
    /// reads. A refusal by the fences is final.
    async fn try_fresh(
        &self,
        t: &Table,
        batch: &AppendBatch<'_>,
    ) -> StoreResult<Option<AppendOutcome>> {
        let Some(fresh) = self.fresh.take(t) else {
            return Ok(None);
        };
        let issued = parse_id(&fresh.issued)?;
        let index = vec![None; batch.records.len()];
        let held = Held {
            index: &index,
            top: issued,
            issued,
            trimmed: trimmed_mark(&fresh.trimmed)?,
        };
        let Ok(plan) = plan::plan(batch.records, held, self.rules(t, batch)) else {
            return Ok(None);
        };
        if plan.events.is_empty() {
            return Ok(None);
        }
        let guard = (fresh.issued.as_str(), fresh.trimmed.as_str());
        let keys = self.keys(t);
        if !self
            .write_plan(t, &keys, batch, guard, &plan, (&[], true))
            .await?
        {
            return Ok(None);
        }
        self.applied(t, batch, &plan, (true, fresh.trimmed));
        Ok(Some(plan.outcome))
    }

    /// Notes a plan applied: the table's highest ID, and its [`Fresh`]
    /// state when the plan wrote events and `all_new`, none of the chunk's
    /// records was in the index.
    fn applied(
        &self,
        t: &Table,
        batch: &AppendBatch<'_>,
        plan: &Plan,
        (all_new, trimmed): (bool, String),
    ) {
        self.highest.raise(t, batch.epoch, plan.last);
        // Event IDs rise in the plan's order (each XADD goes above the last).
        if let (true, Some(last)) = (all_new, plan.events.last()) {
            let issued = last.id.to_string();
            self.fresh.put(t, Fresh { issued, trimmed });
        }
    }

    fn rules(&self, t: &Table, batch: &AppendBatch<'_>) -> Rules {
        Rules {
            highest: self.highest.get(t, batch.epoch),
            rebase: batch.rebase,
            keep: self.keep.keeps(t),
        }
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
            trimmed: trimmed_mark(&seen.trimmed)?,
        };
        let plan = match plan::plan(batch.records, held, self.rules(t, batch)) {
            Ok(plan) => plan,
            Err(lost) => return self.tail_lost(t, batch, &keys, &seen, lost).await,
        };
        if plan.events.is_empty() && plan.keep.is_empty() {
            // Nothing to write (a chunk the index holds already): the read
            // checked the fences.
            return Ok(Some(plan.outcome));
        }
        let copies = self.kept_copies(&keys, batch.records, &plan).await?;
        let guard = (seen.issued.as_str(), seen.trimmed.as_str());
        if !self
            .write_plan(t, &keys, batch, guard, &plan, (&copies, false))
            .await?
        {
            return Ok(None);
        }
        let all_new = seen.index.iter().all(Option::is_none);
        self.applied(t, batch, &plan, (all_new, seen.trimmed));
        Ok(Some(plan.outcome))
    }

    async fn read_chunk(&self, keys: &Keys, records: &[UpstreamRecord]) -> StoreResult<Seen> {
        let mut inv = READ.prepare_invoke();
        for key in &keys.append()[..5] {
            inv.key(*key);
        }
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
            let mut inv = guarded(keys, batch, &seen.issued, &seen.trimmed);
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

    /// Applies `plan` under the guard `(issued, trimmed)`, with the kept
    /// copies it needs and whether it took every record as new
    /// ([`plan_args`]); false when the guard found the stream moved.
    async fn write_plan(
        &self,
        t: &Table,
        keys: &Keys,
        batch: &AppendBatch<'_>,
        (issued, trimmed): (&str, &str),
        plan: &Plan,
        (copies, assumed_new): (&[Option<String>], bool),
    ) -> StoreResult<bool> {
        let mut inv = guarded(keys, batch, issued, trimmed);
        // No ID to raise: the plan's writes follow.
        inv.arg("");
        plan_args(&mut inv, batch, plan, copies, assumed_new);
        self.apply(t, inv).await
    }

    /// Runs `append_apply.lua` (loading it first when the server lacks
    /// it); false when its guard found the stream moved.
    async fn apply(&self, t: &Table, inv: redis::Cmd) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let no_script = redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
        let mut answer = inv.query_async::<i64>(&mut c).await;
        if answer.as_ref().is_err_and(|e| e.kind() == no_script) {
            APPLY.load_async(&mut c).await.map_err(|e| self.err(e))?;
            answer = inv.query_async::<i64>(&mut c).await;
        }
        match answer {
            Ok(_) => Ok(true),
            Err(e) => match refusal(&e) {
                Some(Refusal::Raced) => Ok(false),
                Some(r) => Err(StoreError::refused(t, r)),
                None => Err(self.err(e)),
            },
        }
    }
}

/// The trimmed marker as read (`""` for none).
fn trimmed_mark(mark: &str) -> StoreResult<StreamId> {
    match mark {
        "" => Ok(StreamId::ZERO),
        mark => parse_id(mark),
    }
}

/// `append_apply.lua` with the table's keys and its guard: the fences, and
/// the last generated ID and the trimmed marker the plan was made on. It
/// is one `EVALSHA` command whose arguments are written straight into its
/// buffer (a chunk's records are most of a megabyte; a
/// `ScriptInvocation` holds each argument apart and copies them all again).
fn guarded(keys: &Keys, batch: &AppendBatch<'_>, issued: &str, trimmed: &str) -> redis::Cmd {
    let mut inv = redis::cmd("EVALSHA");
    let append = keys.append();
    inv.arg(APPLY.get_hash()).arg(append.len()).arg(&append[..]);
    inv.arg(batch.holder)
        .arg(batch.epoch)
        .arg(issued)
        .arg(trimmed);
    inv
}

/// The plan's writes as `append_apply.lua` takes them, after its raise
/// argument: compact and positional. `assumed_new`: the plan took every
/// record as new without reading the index, which the apply checks.
fn plan_args(
    inv: &mut redis::Cmd,
    batch: &AppendBatch<'_>,
    plan: &Plan,
    copies: &[Option<String>],
    assumed_new: bool,
) {
    inv.arg(if batch.snapshot { "1" } else { "0" })
        .arg(batch.observed)
        .arg(plan.events.len())
        .arg(plan.index.len());
    let absent = if assumed_new { batch.records } else { &[] };
    inv.arg(absent.len());
    for r in absent {
        inv.arg(&r.id);
    }
    for e in &plan.events {
        let r = &batch.records[e.record];
        inv.write_arg_fmt(e.id);
        inv.arg(e.op.as_str()).arg(&r.id).arg(r.stamp);
        match e.prev_stamp() {
            Some(stamp) => inv.arg(stamp),
            None => inv.arg(""),
        };
        match e.prev_id() {
            Some(id) => inv.write_arg_fmt(id),
            None => inv.write_arg(b""),
        };
        inv.arg(r.raw.get());
    }
    for (i, entry) in &plan.index {
        inv.arg(&batch.records[*i].id).write_arg_fmt(entry);
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
