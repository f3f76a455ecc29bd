//! The message log of one subscription (`GET /v1/subscriptions/{id}/messages`)
//! and the retry of one of its events: what the portal's log shows and
//! does, as API calls anyone with the same token can make.
//!
//! A message is an event of a table the subscription covers, after its
//! start, that its ops and filters pass, with the delivery state read from
//! the store (position, pending set, dead letters) and the attempts logged
//! for it. Nothing is stored for the log itself: it is derived, so it never
//! disagrees with what delivery does.

use std::collections::HashMap;

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ApiState,
    extract::{PathParams, QueryParams},
    principal::Principal,
    problem::{ApiResult, Problem},
    subscriptions::{known_tables, load},
};
use crate::{
    cloudevents::EventSource,
    events::{Event, StreamId, now_ms},
    filter::EventView,
    store::{Store, Table},
    subscription::{
        Subscription,
        state::{Attempt, DeadLetter, RetryState},
    },
};

/// Events read per page while scanning a table.
const PAGE: usize = 1000;
/// The most events one page of the log reads per table, newest first; its
/// `next` goes on from where it stopped.
pub const SCAN_LIMIT: usize = 50_000;
/// Attempts read from the log to pair with the events shown.
const ATTEMPTS_READ: usize = 1000;
/// How much of a receiver's answer each attempt shows.
const EXCERPT: usize = 300;

/// Where one event is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// After the subscription's position: not claimed yet.
    Scheduled,
    /// Claimed and being sent, no failure yet.
    Pending,
    /// Failed at least once, waiting for its next attempt.
    Retrying,
    /// Out of retries, kept as a dead letter until redriven or retried.
    Dead,
    /// Claimed and settled: the receiver accepted it.
    Delivered,
}

impl MessageState {
    const NAMES: &str = "scheduled, pending, retrying, dead, delivered";

    fn parse(s: &str) -> Option<MessageState> {
        serde_json::from_value(Value::String(s.into())).ok()
    }
}

/// `?record=&type=&state=&limit=`, read as text so a bad value gets a
/// problem naming it.
#[derive(Deserialize)]
pub struct MessagesQuery {
    record: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    state: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

/// What a query asks for, checked.
struct Search {
    record: Option<String>,
    ty: Option<String>,
    state: Option<MessageState>,
    limit: usize,
    before: Option<String>,
}

impl Search {
    fn parse(q: MessagesQuery) -> ApiResult<Search> {
        let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(MessageState::parse(s).ok_or_else(|| {
                Problem::invalid(
                    "state",
                    format!("{s:?} is not one of {}", MessageState::NAMES),
                )
            })?),
        };
        Ok(Search {
            record: q.record.filter(|r| !r.is_empty()),
            ty: q.ty.filter(|t| !t.is_empty()),
            state,
            limit: parse_limit(q.limit.as_deref(), 100)?,
            before: q.before,
        })
    }
}

/// `limit` from 1 to 1000, or `default` when absent.
pub(super) fn parse_limit(limit: Option<&str>, default: usize) -> ApiResult<usize> {
    match limit {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                Problem::invalid("limit", format!("{l:?} must be an integer from 1 to 1000"))
            }),
    }
}

/// The delivery facts of one table of one subscription.
struct Facts {
    position: StreamId,
    pending: HashMap<StreamId, RetryState>,
    dead: HashMap<String, DeadLetter>,
}

impl Facts {
    fn state_of(&self, e: &Event) -> (MessageState, Option<RetryState>) {
        if let Some(r) = self.pending.get(&e.id) {
            let state = if r.attempts > 0 {
                MessageState::Retrying
            } else {
                MessageState::Pending
            };
            return (state, Some(*r));
        }
        if self.dead.contains_key(&e.id.to_string()) {
            return (MessageState::Dead, None);
        }
        if e.id > self.position {
            (MessageState::Scheduled, None)
        } else {
            (MessageState::Delivered, None)
        }
    }
}

pub async fn list(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<MessagesQuery>,
) -> ApiResult<Json<Value>> {
    let search = Search::parse(q)?;
    let sub = load(&s, &who, &id).await?;
    let store = s.shared.store.as_ref();
    let attempts = store.attempts(&sub.id, ATTEMPTS_READ).await?;
    let tables = sub.resources.of(&known_tables(&s));
    let cursor = cursor_of(search.before.as_deref(), tables.len())?;
    let mut found = Vec::with_capacity(tables.len());
    for (t, before) in tables.iter().zip(cursor) {
        let src = s.shared.event_source(t);
        found.push(match (src, before) {
            (Some(src), b) if b != Some(StreamId::ZERO) => {
                table_messages(store, &sub, &src, &search, &attempts, b).await?
            }
            _ => (Vec::new(), StreamId::ZERO),
        });
    }
    let (messages, next) = page(found, search.limit);
    let mut body = json!({ "messages": messages });
    if let Some(next) = next {
        body["next"] = next.into();
    }
    Ok(Json(body))
}

/// The cursor `before` of a next page: one stream ID per table of the
/// subscription, in order (`0-0` for a table read to its start); none for
/// the first page.
fn cursor_of(before: Option<&str>, tables: usize) -> ApiResult<Vec<Option<StreamId>>> {
    let Some(before) = before.filter(|b| !b.is_empty()) else {
        return Ok(vec![None; tables]);
    };
    let bad = || {
        Problem::invalid(
            "before",
            format!(
                "{before:?} is not a `next` of this log (its tables changed?); start again without it"
            ),
        )
    };
    let ids: Vec<Option<StreamId>> = (before.split(','))
        .map(|id| id.parse().map(Some).map_err(|_| bad()))
        .collect::<ApiResult<_>>()?;
    if ids.len() == tables {
        Ok(ids)
    } else {
        Err(bad())
    }
}

/// The newest `limit` of every table's messages (each newest first, with
/// where its scan goes on) and the cursor of the next page: per table, the
/// oldest message shown, or where its scan stopped when all were shown.
/// None when every table was read to its start.
type Found = (Vec<((u64, StreamId), Value)>, StreamId);
fn page(found: Vec<Found>, limit: usize) -> (Vec<Value>, Option<String>) {
    let mut all: Vec<((u64, StreamId), usize, Value)> = (found.iter().enumerate())
        .flat_map(|(i, (ms, _))| ms.iter().map(move |(k, v)| (*k, i, v.clone())))
        .collect();
    all.sort_by_key(|m| std::cmp::Reverse(m.0));
    all.truncate(limit);
    let mut taken = vec![0; found.len()];
    for m in &all {
        taken[m.1] += 1;
    }
    let next: Vec<StreamId> = (found.iter().zip(taken))
        .map(|((ms, stopped), n)| match n {
            n if n == ms.len() => *stopped,
            0 => StreamId::new(ms[0].0.1.stamp, ms[0].0.1.seq.saturating_add(1)),
            n => ms[n - 1].0.1,
        })
        .collect();
    let more = next.iter().any(|id| *id != StreamId::ZERO);
    let cursor = next.iter().map(ToString::to_string).collect::<Vec<_>>();
    let messages = all.into_iter().map(|(_, _, v)| v).collect();
    (messages, more.then(|| cursor.join(",")))
}

/// The messages of one table matching `search` before `before`, newest
/// first, each keyed by its observation time (then stream id) for the
/// merge across tables, and where a next page goes on.
async fn table_messages(
    store: &dyn Store,
    sub: &Subscription,
    src: &EventSource,
    search: &Search,
    attempts: &[Attempt],
    before: Option<StreamId>,
) -> ApiResult<Found> {
    let t = &src.table;
    let facts = facts(store, sub, t).await?;
    let selection = crate::delivery::selection_of(sub, src).map_err(Problem::internal)?;
    let wanted = |e: &Event| {
        (sub.ops.is_empty() || sub.ops.contains(&e.op))
            && selection.matches(&EventView::new(src, e))
            && search.record.as_deref().is_none_or(|r| r == e.record)
            && search.ty.as_deref().is_none_or(|ty| ty == src.ty(e))
            && search.state.is_none_or(|st| facts.state_of(e).0 == st)
    };
    let after = sub.start_of(t).min(facts.position);
    let found = back(store, t, (before, after), search.limit, SCAN_LIMIT, wanted).await?;
    let messages = (found.events.iter())
        .map(|e| ((e.observed, e.id), message(src, e, &facts, attempts)))
        .collect();
    Ok((messages, found.next))
}

async fn facts(store: &dyn Store, sub: &Subscription, t: &Table) -> ApiResult<Facts> {
    let position = store.position(&sub.id, t).await?.unwrap_or(StreamId::ZERO);
    let pending = store
        .pending(&sub.id, t)
        .await?
        .into_iter()
        .map(|(e, r)| (e.id, r))
        .collect();
    let name = t.to_string();
    let dead = store
        .dead_letters(&sub.id)
        .await?
        .into_iter()
        .filter(|d| d.table == name)
        .map(|d| (d.id.clone(), d))
        .collect();
    Ok(Facts {
        position,
        pending,
        dead,
    })
}

/// What one backward scan of a table found.
pub(super) struct Back {
    /// The events `wanted` passed, newest first.
    pub events: Vec<Event>,
    /// Where a next scan goes on (strictly before it): the oldest event
    /// kept when `keep` were found, else where the scan stopped;
    /// [`StreamId::ZERO`] once it reached `after`.
    pub next: StreamId,
}

/// Reads table `t` backwards from `before` (its last event when none) down
/// to `after` (excluded): the newest `keep` events `wanted` passes, reading
/// at most `scan` events.
pub(super) async fn back(
    store: &dyn Store,
    t: &Table,
    (before, after): (Option<StreamId>, StreamId),
    keep: usize,
    scan: usize,
    wanted: impl Fn(&Event) -> bool,
) -> ApiResult<Back> {
    let (mut events, mut read, mut cursor) = (Vec::new(), 0, before);
    while read < scan {
        let page = store.read_back(t, cursor, PAGE.min(scan - read)).await?;
        let full = page.len() == PAGE.min(scan - read);
        read += page.len();
        for e in page {
            if e.id <= after {
                return Ok(Back {
                    events,
                    next: StreamId::ZERO,
                });
            }
            cursor = Some(e.id);
            if wanted(&e) {
                let id = e.id;
                events.push(e);
                if events.len() == keep {
                    return Ok(Back { events, next: id });
                }
            }
        }
        if !full {
            return Ok(Back {
                events,
                next: StreamId::ZERO,
            });
        }
    }
    Ok(Back {
        events,
        next: cursor.unwrap_or(StreamId::ZERO),
    })
}

/// One message as the API shows it.
fn message(src: &EventSource, e: &Event, facts: &Facts, attempts: &[Attempt]) -> Value {
    let event_id = src.id(e);
    let (state, retry) = facts.state_of(e);
    let tries: Vec<Value> = attempts
        .iter()
        .filter(|a| a.event_ids.contains(&event_id))
        .map(attempt_view)
        .collect();
    let mut v = json!({
        "event_id": event_id, "target": src.table.to_string(), "stream_id": e.id.to_string(),
        "stamp": e.stamp, "record": e.record, "type": src.ty(e), "op": e.op,
        "observed_ms": e.observed, "state": state, "attempts": tries,
    });
    if let Some(r) = retry {
        v["failures"] = r.attempts.into();
        v["next_attempt_ms"] = r.next_at_ms.into();
    }
    if let Some(d) = facts.dead.get(&e.id.to_string()) {
        v["failures"] = d.attempts.into();
        v["last_error"] = d.last_error.clone().into();
    }
    v
}

/// An attempt with its answer cut to an excerpt and the reason it failed.
fn attempt_view(a: &Attempt) -> Value {
    let excerpt: String = a.response.chars().take(EXCERPT).collect();
    json!({
        "at_ms": a.at_ms, "outcome": a.outcome, "status": a.status, "latency_ms": a.latency_ms,
        "response_excerpt": excerpt, "error": a.error, "reason": a.failure(),
    })
}

/// `POST /v1/subscriptions/{id}/messages/{event_id}/retry`: one event is
/// sent again, due now: a dead letter leaves the dead letters, a waiting
/// retry stops waiting (keeping its count of failures), a delivered event
/// is delivered once more. One not
/// claimed yet or being sent is left alone (409). Order per record holds: a retried event goes through the
/// pending set like any retry.
pub async fn retry(
    State(s): State<ApiState>,
    who: Principal,
    PathParams((id, event_id)): PathParams<(String, String)>,
) -> ApiResult<Json<Value>> {
    let sub = load(&s, &who, &id).await?;
    let store = s.shared.store.as_ref();
    let (t, e) = find_event(&s, &sub, &event_id).await?;
    let facts = facts(store, &sub, &t).await?;
    let (before, waiting) = facts.state_of(&e);
    let busy = match before {
        MessageState::Scheduled => Some("is not claimed yet; it will be sent in its turn"),
        MessageState::Pending => Some("is being sent now"),
        _ => None,
    };
    if let Some(why) = busy {
        return Err(Problem::new(
            axum::http::StatusCode::CONFLICT,
            "not_retryable_now",
            format!("event {event_id:?} {why}"),
        ));
    }
    let now = now_ms();
    match waiting {
        // A waiting retry becomes due now and keeps its count of failures,
        // so the schedule (and dead-lettering) goes on where it was.
        Some(r) => {
            let due = RetryState {
                attempts: r.attempts,
                next_at_ms: now,
            };
            store.retry_later(&sub.id, &t, e.id, due).await?;
        }
        None => store.add_pending(&sub.id, &t, &[e.id]).await?,
    }
    if before == MessageState::Dead {
        forget_dead_letter(store, &sub.id, &t, e.id).await?;
    }
    crate::store::update_subscription(store, &id, |cur| {
        cur.retry_requested_ms = Some(now);
        Ok::<_, crate::store::StoreError>(())
    })
    .await?;
    tracing::info!(subscription = %id, event = %event_id, "one event retried");
    Ok(Json(
        json!({ "id": sub.id, "event_id": event_id, "was": before, "state": "pending" }),
    ))
}

/// Takes the one dead letter of event `id` out, the others staying.
async fn forget_dead_letter(
    store: &dyn Store,
    sub_id: &str,
    t: &Table,
    id: StreamId,
) -> ApiResult<()> {
    let key = DeadLetter::key_of(t, id);
    store.remove_dead_letter(sub_id, &key).await?;
    Ok(())
}

/// The event with CloudEvents id `<source>:<resource>:<record>:<stamp>` on
/// a table the subscription covers.
async fn find_event(s: &ApiState, sub: &Subscription, event_id: &str) -> ApiResult<(Table, Event)> {
    let missing = || Problem::not_found(format!("no event {event_id:?} for this subscription"));
    let mut parts = event_id.splitn(3, ':');
    let (Some(source), Some(resource), Some(rest)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(missing());
    };
    let (record, stamp) = rest.rsplit_once(':').ok_or_else(missing)?;
    let stamp: u64 = stamp.parse().map_err(|_| missing())?;
    let t = Table::new(source, resource);
    if !sub.resources.covers(&t) || !known_tables(s).contains(&t) {
        return Err(missing());
    }
    let store = s.shared.store.as_ref();
    let is_it = |e: &Event| e.stamp == stamp && e.record == record;
    // Most events sit at their own stamp; a late one under the top stamp
    // is found by a scan.
    let after = match stamp {
        0 => StreamId::ZERO,
        n => StreamId::new(n - 1, u64::MAX),
    };
    let page = store.read(&t, after, 64).await?;
    let mut found = page.into_iter().find(|e| is_it(e));
    if found.is_none() {
        let back = back(store, &t, (None, StreamId::ZERO), 1, SCAN_LIMIT, is_it);
        found = back.await?.events.pop();
    }
    found.map(|e| (t, e)).ok_or_else(missing)
}
