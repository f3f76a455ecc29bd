//! `POST /v1/subscriptions/{id}/dead-letters/redrive`: dead letters go back
//! into the pending set, due now, except those a redrive would send out of
//! order. A dead letter is superseded when the receiver already accepted a
//! newer version of its record: an event of the same record after it that
//! the subscription wants (its ops and filters), claimed and no longer
//! pending or dead, so delivered. Sending it would hand the receiver an old
//! version after a newer one, against "events of one record arrive in stamp
//! order"; it is dropped and listed as `superseded`.

use std::collections::{BTreeMap, HashSet};

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::{
    ApiState,
    extract::PathParams,
    principal::Principal,
    problem::{ApiResult, Problem},
    subscriptions::load,
};
use crate::{
    events::StreamId,
    filter::EventView,
    store::Table,
    subscription::{Subscription, state::DeadLetter},
};

/// Events read per page while looking for newer versions.
const PAGE: usize = 1000;

/// What a redrive did with the dead letters.
#[derive(Default)]
struct Redriven {
    count: usize,
    trimmed: Vec<String>,
    superseded: Vec<String>,
}

/// Puts every dead letter back into the pending set, due now, but those
/// superseded (see the module's doc) or trimmed.
pub async fn redrive(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    let sub = load(&s, &who, &id).await?;
    let store = &s.shared.store;
    // Back into pending before they leave the dead letters, so an event is
    // always in one of the two, where retention sees it. Letters that arrive
    // during the redrive are taken below and queued too.
    let seen = store.dead_letters(&id).await?;
    let mut done = Redriven::default();
    queue_again(&s, &sub, &seen, &mut done).await?;
    let taken = store.take_dead_letters(&id).await?;
    let late: Vec<DeadLetter> = taken
        .into_iter()
        .filter(|d| !seen.iter().any(|x| x.key() == d.key()))
        .collect();
    queue_again(&s, &sub, &late, &mut done).await?;
    tracing::info!(subscription = %id, count = done.count, trimmed = done.trimmed.len(), superseded = done.superseded.len(), "dead letters redriven");
    let labels = crate::metrics::SubLabels {
        subscription: id.clone(),
    };
    s.metrics
        .superseded
        .get_or_create(&labels)
        .inc_by(done.superseded.len() as u64);
    Ok(Json(json!({
        "redriven": done.count, "trimmed": done.trimmed, "superseded": done.superseded,
    })))
}

/// Puts dead letters back into pending, except those whose event retention
/// removed (only a hard cap does that), which it names in `trimmed`, and
/// those superseded, named in `superseded`.
async fn queue_again(
    s: &ApiState,
    sub: &Subscription,
    dead: &[DeadLetter],
    done: &mut Redriven,
) -> ApiResult<()> {
    let mut by_table: BTreeMap<&str, Vec<&DeadLetter>> = BTreeMap::new();
    for d in dead {
        by_table.entry(d.table.as_str()).or_default().push(d);
    }
    for (name, letters) in by_table {
        let Some((source, resource)) = name.split_once('/') else {
            continue;
        };
        let t = Table::new(source, resource);
        let ids: Vec<StreamId> = letters.iter().filter_map(|d| d.id.parse().ok()).collect();
        let through = s.shared.store.trimmed_through(&t).await?;
        let (gone, kept): (Vec<StreamId>, Vec<StreamId>) =
            ids.iter().partition(|sid| **sid <= through);
        let newer = superseded(s, sub, &t, &kept).await?;
        let kept: Vec<StreamId> = kept.into_iter().filter(|i| !newer.contains(i)).collect();
        s.shared.store.add_pending(&sub.id, &t, &kept).await?;
        done.count += kept.len();
        done.trimmed
            .extend(gone.iter().map(|sid| format!("{name}@{sid}")));
        let ids_of = letters
            .iter()
            .filter(|d| d.id.parse().is_ok_and(|i| newer.contains(&i)));
        done.superseded.extend(ids_of.map(|d| d.event_id.clone()));
    }
    Ok(())
}

/// Which of the dead letters `dead` on `t` are superseded: the position
/// passed a newer version of their record that is neither pending nor dead.
async fn superseded(
    s: &ApiState,
    sub: &Subscription,
    t: &Table,
    dead: &[StreamId],
) -> ApiResult<HashSet<StreamId>> {
    let store = &s.shared.store;
    let (Some(first), Some(position)) = (dead.iter().min(), store.position(&sub.id, t).await?)
    else {
        return Ok(HashSet::new());
    };
    let Some(src) = s.shared.event_source(t) else {
        return Ok(HashSet::new());
    };
    let selection = crate::delivery::selection_of(sub, &src).map_err(Problem::internal)?;
    let pending: HashSet<StreamId> = store
        .pending(&sub.id, t)
        .await?
        .iter()
        .map(|(e, _)| e.id)
        .collect();
    let dead_ids: HashSet<StreamId> = dead.iter().copied().collect();
    // The records of the dead letters, and the ones a newer version passed.
    let mut records: BTreeMap<String, Vec<StreamId>> = BTreeMap::new();
    let mut out = HashSet::new();
    let mut after = StreamId::new(first.stamp.saturating_sub(1), 0);
    'pages: loop {
        let page = store.read(t, after, PAGE).await?;
        for e in &page {
            if e.id > position {
                break 'pages;
            }
            if dead_ids.contains(&e.id) {
                records.entry(e.record.clone()).or_default().push(e.id);
                continue;
            }
            let passed = !pending.contains(&e.id)
                && (sub.ops.is_empty() || sub.ops.contains(&e.op))
                && selection.matches(&EventView::new(&src, e));
            if let (true, Some(older)) = (passed, records.get_mut(&e.record)) {
                out.extend(older.drain(..));
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.id,
            _ => break,
        }
    }
    Ok(out)
}
