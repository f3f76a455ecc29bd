//! Retention (docs/redis-layout.md): trims a table's stream by age or length, never
//! past what an enabled subscription has yet to deliver unless the hard cap
//! says so, and never its last event, whose stamp is the cursor.
//!
//! It runs as a task of its own ([`run`]), trimming only the tables whose
//! last poll by this instance held the lease, so one instance trims each.
//! Readers learn what was removed from `Store::trimmed_through`.

use std::sync::{Arc, atomic::Ordering};

use tokio_util::sync::CancellationToken;

use crate::{
    config::RetentionConfig,
    events::{StreamId, now_ms},
    metrics::{Metrics, table_labels},
    store::{Standing, standing},
    store::{Store, StoreResult, Table},
    topology::Topology,
};

/// Events read per pass at most: a first pass over a long stream removes
/// this many, later passes go on from there.
pub const SCAN: usize = 10_000;
/// The age scan reads the oldest events in chunks of this many.
const AGE_CHUNK: usize = 500;

/// Trims every table of the topology whose flag says this instance holds
/// its lease, every `cfg.interval`, until `cancel`. A failed trim is logged
/// and tried again at the next interval.
pub async fn run(
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    cfg: RetentionConfig,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    if !cfg.enabled() {
        return;
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
        for table in topology.entries() {
            let t = &table.table;
            if cancel.is_cancelled() || !table.status.holds_lease.load(Ordering::Relaxed) {
                continue;
            }
            match trim_table(store.as_ref(), t, &cfg, now_ms()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(table = %t, removed = n, "retention trimmed the stream");
                    metrics.trimmed.get_or_create(&table_labels(t)).inc_by(n);
                }
                Err(e) => {
                    tracing::warn!(table = %t, error = %e, "retention could not trim the stream; it tries again later")
                }
            }
        }
    }
}

/// Trims `t` once; returns how many events went.
pub async fn trim_table(
    store: &dyn Store,
    t: &Table,
    cfg: &RetentionConfig,
    now_ms: u64,
) -> StoreResult<u64> {
    if !cfg.enabled() {
        return Ok(0);
    }
    let len = store.stream_len(t).await?;
    if len <= 1 {
        return Ok(0);
    }
    let last = store.last_id(t).await?;
    let mut soft = None;
    if let Some(max) = cfg.max_events {
        soft = soft.max(first_kept_by_count(store, t, len, max).await?);
    }
    if let Some(age) = cfg.max_age {
        let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
        soft = soft.max(first_kept_by_age(store, t, cutoff).await?);
    }
    let soft = match soft {
        Some(k) => Some(k.min(undelivered_floor(store, t).await?.unwrap_or(k))),
        None => None,
    };
    let hard = match cfg.hard_max_events {
        Some(max) => first_kept_by_count(store, t, len, max).await?,
        None => None,
    };
    match soft.max(hard) {
        // Never the last event: the cursor is its stamp.
        Some(keep_from) => store.trim(t, keep_from.min(last)).await,
        None => Ok(0),
    }
}

/// The first event to keep so that at most `max` remain.
async fn first_kept_by_count(
    store: &dyn Store,
    t: &Table,
    len: u64,
    max: u64,
) -> StoreResult<Option<StreamId>> {
    let excess = len.saturating_sub(max) as usize;
    if excess == 0 {
        return Ok(None);
    }
    let head = store
        .read(t, StreamId::ZERO, (excess + 1).min(SCAN))
        .await?;
    Ok(head.last().map(|e| e.id))
}

/// The first event observed at or after `cutoff`, or, when every event
/// scanned is older, the last one scanned (the next pass goes on from it).
async fn first_kept_by_age(
    store: &dyn Store,
    t: &Table,
    cutoff: u64,
) -> StoreResult<Option<StreamId>> {
    let mut after = StreamId::ZERO;
    let mut scanned = 0;
    let mut last_old = None;
    loop {
        let chunk = store.read(t, after, AGE_CHUNK).await?;
        if let Some(young) = chunk.iter().find(|e| e.observed >= cutoff) {
            return Ok(Some(young.id));
        }
        scanned += chunk.len();
        if let Some(e) = chunk.last() {
            last_old = Some(e.id);
            after = e.id;
        }
        if chunk.len() < AGE_CHUNK || scanned >= SCAN {
            return Ok(last_old);
        }
    }
}

/// The oldest event an enabled subscription covering `t` has yet to
/// deliver, dead letters included; none when no enabled subscription covers `t`.
pub async fn undelivered_floor(store: &dyn Store, t: &Table) -> StoreResult<Option<StreamId>> {
    let mut floor: Option<StreamId> = None;
    for sub in store.subscriptions().await? {
        if !sub.enabled || !sub.covers(t) {
            continue;
        }
        let mut oldest = match standing(store, &sub, t).await? {
            Standing::Pending(id) => id,
            // Trimming keeps IDs at or above this: everything after it.
            Standing::After(p) => StreamId::new(p.stamp, p.seq + 1),
        };
        // Dead letters stay redrivable: they hold the floor too. Pending is
        // read again after them: an event the worker moves to the dead
        // letters is written there first, one a redrive moves back is
        // written to pending first, so one of the three reads sees it.
        let name = t.to_string();
        for d in store.dead_letters(&sub.id).await? {
            if d.table == name
                && let Ok(id) = d.id.parse::<StreamId>()
            {
                oldest = oldest.min(id);
            }
        }
        if let Some((e, _)) = store.pending(&sub.id, t).await?.first() {
            oldest = oldest.min(e.id);
        }
        floor = Some(floor.map_or(oldest, |f| f.min(oldest)));
    }
    Ok(floor)
}
