//! `POST /v1/filters/preview`: which recent events of the tables named
//! would pass the filters (and ops) given, before a subscription is made
//! or changed with them. The portal shows it beside the filter editor.

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiState,
    extract::JsonBody,
    messages::{back, parse_limit},
    principal::Principal,
    problem::ApiResult,
    subscriptions::known_tables,
};
use crate::{
    cloudevents::EventSource,
    events::{Op, StreamId},
    filter::{EventView, Selection},
    store::Store,
    subscription as sub,
};

/// The body: the fields of a subscription that decide what passes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    resources: Vec<String>,
    #[serde(default)]
    ops: Vec<String>,
    filters: Option<Value>,
    /// How many of the newest events of each table to try, 1 to 1000 (50).
    limit: Option<u32>,
}

pub async fn preview(
    State(s): State<ApiState>,
    who: Principal,
    JsonBody(req): JsonBody<PreviewRequest>,
) -> ApiResult<Json<Value>> {
    // A table the caller may not see is named as unknown, as elsewhere.
    let mut known = known_tables(&s);
    known.retain(|t| who.sees(t));
    let resources = sub::parse_resources(&req.resources, &known)?;
    let ops = sub::parse_ops(&req.ops)?;
    let keep = parse_limit(req.limit.map(|l| l.to_string()).as_deref(), 50)?;
    crate::filter::subscription_fields(req.filters.as_ref(), None)?;
    let mut events = Vec::new();
    for t in resources.of(&known) {
        let Some(src) = s.shared.event_source(&t) else {
            continue;
        };
        let selection = Selection::from_json(req.filters.as_ref(), None, &src.fields)?;
        events.extend(preview_table(s.shared.store.as_ref(), &src, &selection, &ops, keep).await?);
    }
    let matching = events.iter().filter(|e| e["matches"] == true).count();
    Ok(Json(
        json!({ "examined": events.len(), "matching": matching, "events": events }),
    ))
}

/// The recent events of the tables `selection` is for, each marked with
/// whether it passes: what `POST /v1/filters/preview` answers.
async fn preview_table(
    store: &dyn Store,
    src: &EventSource,
    selection: &Selection,
    ops: &[Op],
    keep: usize,
) -> ApiResult<Vec<Value>> {
    let whole = (None, StreamId::ZERO);
    let mut events = back(store, &src.table, whole, keep, keep, |_| true)
        .await?
        .events;
    events.reverse();
    Ok(events
        .iter()
        .map(|e| {
            let passes = (ops.is_empty() || ops.contains(&e.op))
                && selection.matches(&EventView::new(src, e));
            json!({
                "event_id": src.id(e), "target": src.table.to_string(), "record": e.record,
                "type": src.ty(e), "observed_ms": e.observed, "matches": passes,
                "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
            })
        })
        .collect())
}
