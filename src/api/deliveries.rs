//! Delivery operations on a subscription (admin scope): replay from a
//! stamp, a signed test ping, the attempt log, dead letters and redrive.

use std::collections::BTreeMap;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiState,
    extract::{JsonBody, PathParams, QueryParams},
    positions::check_position,
    principal::Principal,
    problem::{ApiResult, Problem},
    requests::StartSpec,
    subscriptions::{known_tables, load},
};
use crate::{
    delivery::sender::Message,
    events::{StreamId, now_ms},
    store::Table,
    subscription::{Start, state::Attempt},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// `"beginning"` or `{"source/resource": stamp}`: delivery restarts after these stamps.
    from: Option<StartSpec>,
    /// RFC 3339: delivery restarts at the first event each table observed
    /// at or after this time; instead of `from`.
    from_time: Option<String>,
    /// `from` 0 may begin at the oldest event kept (api/positions.rs).
    #[serde(default)]
    from_oldest_kept: bool,
}

pub async fn replay(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<ReplayRequest>,
) -> ApiResult<Json<Value>> {
    let sub = load(&s, &who, &id).await?;
    let tables = sub.resources.of(&known_tables(&s));
    let positions = match (req.from, req.from_time.as_deref()) {
        (Some(from), None) => from_stamps(from, &tables)?,
        (None, Some(time)) => from_time(&s, time, &tables).await?,
        _ => {
            return Err(Problem::invalid(
                "from",
                "give exactly one of from (stamps) and from_time (RFC 3339)",
            ));
        }
    };
    let oldest_kept = req.from_oldest_kept;
    let mut warnings = Vec::new();
    for (t, after) in &positions {
        let field = format!("from.{t}");
        warnings.extend(check_position(&s, t, *after, &field, oldest_kept).await?);
    }
    let mut moved = Vec::new();
    for t in &tables {
        if let Some(after) = positions.get(t) {
            let old = s.shared.store.position(&sub.id, t).await?;
            s.shared.store.reposition(&sub.id, t, *after).await?;
            moved.push((t, old));
            // Again after the move: a trim that read the old position just
            // before it may have removed what the new one needs. Then the
            // replay is refused as a whole, with every position put back.
            if let Err(gone) =
                check_position(&s, t, *after, &format!("from.{t}"), oldest_kept).await
            {
                for (t, old) in moved {
                    if let Some(old) = old {
                        s.shared.store.reposition(&sub.id, t, old).await?;
                    }
                }
                return Err(gone);
            }
        }
    }
    let shown: BTreeMap<String, String> = positions
        .iter()
        .map(|(t, id)| (t.to_string(), id.to_string()))
        .collect();
    tracing::info!(subscription = %id, "delivery replay requested");
    let mut body = json!({ "id": sub.id, "replaying_after": shown });
    if !warnings.is_empty() {
        body["warnings"] = warnings.into();
    }
    Ok(Json(body))
}

/// Where `from` puts each table: after its stamp, or at its start.
fn from_stamps(from: StartSpec, tables: &[Table]) -> ApiResult<BTreeMap<Table, StreamId>> {
    Ok(match from.parse("from", tables, false)? {
        Start::Beginning => tables.iter().map(|t| (t.clone(), StreamId::ZERO)).collect(),
        Start::Stamps(m) => m
            .into_iter()
            .map(|(t, s)| (t, StreamId::new(s, 0)))
            .collect(),
        // Not allowed in a replay: nothing moves.
        Start::Now => BTreeMap::new(),
    })
}

/// Where `from_time` puts each table: after the last event observed before
/// that time (at its start when there is none).
async fn from_time(
    s: &ApiState,
    time: &str,
    tables: &[Table],
) -> ApiResult<BTreeMap<Table, StreamId>> {
    let at = humantime::parse_rfc3339_weak(time)
        .map_err(|e| Problem::invalid("from_time", format!("{time:?} is not RFC 3339: {e}")))?;
    let at_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let store = s.shared.store.as_ref();
    let mut out = BTreeMap::new();
    for t in tables {
        // Read back from the end to the last event observed before `at`,
        // however far back it lies.
        let whole = (None, StreamId::ZERO);
        let before = super::messages::back(store, t, whole, 1, usize::MAX, |e| e.observed < at_ms);
        let after = before.await?.events.pop().map_or(StreamId::ZERO, |e| e.id);
        out.insert(t.clone(), after);
    }
    Ok(out)
}

/// Sends a signed ping now and answers with what the receiver said.
pub async fn test(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    let sub = load(&s, &who, &id).await?;
    let ping_id = format!("ping:{}", uuid::Uuid::new_v4().simple());
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let body = json!({
        "specversion": "1.0", "id": ping_id, "source": "stamp-relay", "type": format!("{}.ping", s.type_prefix),
        "subject": sub.id, "time": time, "datacontenttype": "application/json", "data": {"subscription": sub.id},
    });
    let mut secrets = vec![sub.secret.as_str()];
    if let Some((old, until)) = &sub.previous_secret
        && *until > now_ms()
    {
        secrets.push(old.as_str());
    }
    let sent = s
        .sender
        .send(Message {
            url: &sub.url,
            headers: &sub.headers,
            id: &ping_id,
            body: serde_json::to_vec(&body).map_err(Problem::internal)?,
            content_type: crate::cloudevents::CONTENT_TYPE,
            secrets,
        })
        .await;
    // Listed with the attempts, where a receiver's setup is checked.
    let attempt = Attempt {
        at_ms: now_ms(),
        table: String::new(),
        ping: true,
        event_ids: vec![ping_id],
        outcome: sent.outcome,
        status: sent.status,
        latency_ms: sent.latency.as_millis() as u64,
        response: sent.response.clone(),
        error: sent.error.clone(),
    };
    s.shared.store.log_attempts(&sub.id, &[attempt]).await?;
    Ok(Json(json!({
        "outcome": sent.outcome, "status": sent.status, "latency_ms": sent.latency.as_millis() as u64,
        "response": sent.response, "error": sent.error,
    })))
}

/// Makes every waiting retry of the subscription due now, on each of its
/// tables: in the store, and through the subscription's `retry_requested_ms`
/// in the memory of the workers delivering it (on any instance).
pub async fn retry(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    let sub = load(&s, &who, &id).await?;
    let now = now_ms();
    let mut due = 0;
    for t in sub.resources.of(&known_tables(&s)) {
        due += s.shared.store.retry_now(&sub.id, &t, now).await?;
    }
    crate::store::update_subscription(s.shared.store.as_ref(), &id, |cur| {
        cur.retry_requested_ms = Some(now);
        Ok::<_, crate::store::StoreError>(())
    })
    .await?;
    tracing::info!(subscription = %id, due, "waiting retries made due now");
    Ok(Json(json!({ "id": sub.id, "due_now": due })))
}

#[derive(Deserialize)]
pub struct AttemptsQuery {
    limit: Option<String>,
}

pub async fn attempts(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<AttemptsQuery>,
) -> ApiResult<Json<Value>> {
    load(&s, &who, &id).await?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                Problem::invalid("limit", format!("{l:?} must be an integer from 1 to 1000"))
            })?,
    };
    let all = s.shared.store.attempts(&id, limit).await?;
    Ok(Json(json!({ "attempts": all })))
}

pub async fn dead_letters(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Value>> {
    load(&s, &who, &id).await?;
    let all = s.shared.store.dead_letters(&id).await?;
    Ok(Json(json!({ "dead_letters": all })))
}
