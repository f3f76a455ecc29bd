//! `GET /v1/resources`, and replay of one table's events:
//! `GET /v1/resources/{source}/{resource}/events` (with `Accept:
//! text/event-stream` the live stream, `live.rs`).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{
    ApiState,
    extract::{PathParams, QueryParams},
    positions::{check_position, oldest_kept_flag, read_page},
    principal::Principal,
    problem::{ApiResult, Problem},
};
use crate::{
    cloudevents::{EventSource, Writer},
    events::StreamId,
    filter::Selection,
    status,
    store::Table,
};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Serialize)]
pub struct ResourceView {
    pub source: String,
    pub resource: String,
    /// The stamp part of the last stream ID; the upstream `sync` position.
    pub cursor: u64,
    pub last_id: String,
    pub stream_length: u64,
    pub records: u64,
    pub last_poll_ms: Option<u64>,
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Events appended per minute over about the last minute.
    pub rate_per_min: f64,
    /// The instance that made the last poll.
    pub polled_by: Option<String>,
    /// Store resets this instance noticed on the table (its data lost
    /// under the relay; see poller/epoch.rs), the last one's time, and
    /// whether the table is still reloading since.
    pub store_resets: u64,
    pub last_store_reset_ms: Option<u64>,
    pub reloading: bool,
    /// What the table's poller noticed that breaks an assumption of the
    /// sync, by kind (store/alerts.rs): how often, and when last.
    pub alerts: crate::store::alerts::Marks,
    /// The table's health as its poller last judged it (health.rs); none
    /// before its first poll.
    pub health: Option<crate::health::Health>,
}

pub async fn list(State(s): State<ApiState>, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    let mut live = s.shared.source_tables();
    live.retain(|t| who.sees(&t.table));
    let keys: Vec<_> = live.iter().map(|t| t.table.clone()).collect();
    let tables = status::tables(s.shared.store.as_ref(), &keys).await?;
    let out: Vec<ResourceView> = tables
        .into_iter()
        .zip(live.iter().map(|t| &t.status))
        .map(|(v, st)| ResourceView {
            source: v.table.source,
            resource: v.table.resource,
            cursor: v.last_id.stamp,
            last_id: v.last_id.to_string(),
            stream_length: v.stream_length,
            records: v.records,
            last_poll_ms: (v.poll.finished_ms > 0).then_some(v.poll.finished_ms),
            last_ok_ms: v.poll.ok_ms,
            rate_per_min: v.poll.rate_shown(),
            last_error: v.poll.error,
            alerts: v.poll.alerts,
            health: v.poll.health,
            polled_by: (!v.poll.holder.is_empty()).then_some(v.poll.holder),
            // This instance's own count of the resets it found.
            store_resets: st.resets.load(Ordering::Relaxed),
            last_store_reset_ms: Some(st.last_reset_ms.load(Ordering::Relaxed))
                .filter(|&ms| ms > 0),
            reloading: st.reloading.load(Ordering::Relaxed),
        })
        .collect();
    Ok(Json(serde_json::json!({ "resources": out })))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<String>,
    limit: Option<String>,
    /// `true`: events carry previous values (src/previous.rs).
    previous: Option<String>,
    filter: Option<String>,
    fields: Option<String>,
    /// `true`: `after=0` on a table whose retention removed events starts
    /// at the oldest event kept instead of answering 410 (positions.rs).
    from_oldest_kept: Option<String>,
}

/// The table and how its events look; the same 404 for a table `who` may
/// not see as for one that does not exist.
fn table_of(
    s: &ApiState,
    who: &Principal,
    source: String,
    resource: String,
) -> ApiResult<(Table, Arc<EventSource>)> {
    let t = Table { source, resource };
    match s.shared.event_source(&t).filter(|_| who.sees(&t)) {
        Some(src) => Ok((t, src)),
        None => Err(Principal::unseen(&t)),
    }
}

fn parse_after(raw: Option<&str>, field: &str) -> ApiResult<Option<StreamId>> {
    raw.map(|a| {
        if Problem::is_out_of_range(a) {
            return Err(Problem::out_of_range(field, a));
        }
        a.parse::<StreamId>()
            .map_err(|e| Problem::invalid(field, e))
    })
    .transpose()
}

/// The `previous` query flag. Previous values and a field projection do
/// not combine yet: the projection would have to apply to both versions.
fn previous_flag(raw: Option<&str>, sel: &Selection) -> ApiResult<bool> {
    let previous = match raw {
        None | Some("false") => false,
        Some("true") => true,
        Some(p) => {
            return Err(Problem::invalid(
                "previous",
                format!("{p:?} must be true or false"),
            ));
        }
    };
    if previous && sel.fields.is_some() {
        return Err(Problem::invalid(
            "fields",
            "fields cannot be combined with previous=true; ask for one or the other",
        ));
    }
    Ok(previous)
}

/// A replay page's JSON, `{"events": [...], "next_after", "has_more"}`,
/// rendered into one buffer from the stored bytes: filtered, then
/// projected or with previous values.
fn page_body(
    src: &EventSource,
    sel: &Selection,
    previous: bool,
    page: &[crate::events::Event],
    next_after: &str,
    has_more: bool,
) -> Vec<u8> {
    let size: usize = page.iter().map(|e| e.data.len() + 480).sum();
    let mut out = Vec::with_capacity(size + 64);
    out.extend_from_slice(b"{\"events\":[");
    let mut w = Writer::new(src);
    let mut first = true;
    for e in page {
        let mark = out.len();
        if !first {
            out.push(b',');
        }
        if sel.write(&mut w, &mut out, e, previous) {
            first = false;
        } else {
            out.truncate(mark);
        }
    }
    out.extend_from_slice(b"],\"next_after\":");
    crate::cloudevents::string(&mut out, next_after);
    out.extend_from_slice(if has_more {
        b",\"has_more\":true}"
    } else {
        b",\"has_more\":false}"
    });
    out
}

/// The `limit` query parameter.
fn limit_of(raw: Option<&str>) -> ApiResult<usize> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(Problem::invalid(
                "limit",
                format!("{l:?} must be an integer from 1 to {MAX_LIMIT}"),
            )),
        },
    }
}

pub async fn events(
    State(s): State<ApiState>,
    who: Principal,
    credential: Option<axum::Extension<super::principal::Credential>>,
    PathParams((source, resource)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (t, src) = table_of(&s, &who, source, resource)?;
    let sel = crate::filter::from_query(q.filter.as_deref(), q.fields.as_deref(), &src.fields)?;
    let after = parse_after(q.after.as_deref(), "after")?;
    let previous = previous_flag(q.previous.as_deref(), &sel)?;
    let oldest_kept = oldest_kept_flag(q.from_oldest_kept.as_deref())?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        let resume = parse_after(
            headers.get("last-event-id").and_then(|v| v.to_str().ok()),
            "Last-Event-ID",
        )?;
        // The position actually followed: a reconnect's Last-Event-ID
        // replaces a stale `after` in the URL.
        let field = if resume.is_some() {
            "Last-Event-ID"
        } else {
            "after"
        };
        let from = resume.or(after);
        if let Some(from) = from {
            check_position(&s, &t, from, field, oldest_kept).await?;
        }
        let read = super::live::Reading {
            sel,
            previous,
            oldest_kept,
            until: who.expires_at(),
            recheck: credential
                .filter(|_| !who.is_admin())
                .map(|axum::Extension(c)| c),
        };
        return super::live::live(s, t, src, from, read).await;
    }
    let limit = limit_of(q.limit.as_deref())?;
    let after = after.unwrap_or(StreamId::ZERO);
    let mut page = read_page(&s, &t, after, limit + 1, oldest_kept).await?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    if let Some(last) = page.last().filter(|_| has_more) {
        // A reader paging through asks for the next page next.
        s.read_ahead
            .start(s.shared.store.clone(), &t, last.id, limit + 1, oldest_kept);
    }
    if previous {
        s.shared.store.fill_previous(&t, &mut page).await?;
    }
    let next_after = page.last().map(|e| e.id).unwrap_or(after).to_string();
    let body = page_body(&src, &sel, previous, &page, &next_after, has_more);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Bytes::from(body),
    )
        .into_response())
}
