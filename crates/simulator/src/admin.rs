//! The admin surface under `/_sim/` (no auth): what tests, the demo and
//! benchmarks use to change the upstream and to read its ground truth.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answer::error_response;
use crate::{Applied, Change, Faults, Kind, RequestLog, SimError, Simulator, TrafficCounts, lock};

pub(super) fn routes() -> Router<Arc<Simulator>> {
    Router::new()
        .route("/_sim/changes", post(changes))
        .route("/_sim/random-writes", post(random_writes))
        .route("/_sim/state/{table}", get(state))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/flush-late", post(flush_late))
        .route("/_sim/requests", get(requests))
        .route("/_sim/traffic", get(traffic))
        .route("/_sim/raw", post(raw))
}

fn status(error: &SimError) -> StatusCode {
    match error {
        SimError::UnknownTable(_) | SimError::UnknownRecord { .. } => StatusCode::NOT_FOUND,
        SimError::InvalidFaults(_) => StatusCode::BAD_REQUEST,
        SimError::DuplicateId { .. }
        | SimError::AlreadyDeleted { .. }
        | SimError::NotDeleted { .. }
        | SimError::NothingToChange { .. } => StatusCode::CONFLICT,
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        error_response(status(&self), None, &self.to_string(), json!([]))
    }
}

/// Why an admin request failed.
#[derive(Debug)]
enum AdminError {
    /// The body was not the JSON the route takes.
    Body(JsonRejection),
    Sim(SimError),
}

impl From<JsonRejection> for AdminError {
    fn from(rejection: JsonRejection) -> Self {
        AdminError::Body(rejection)
    }
}

impl From<SimError> for AdminError {
    fn from(error: SimError) -> Self {
        AdminError::Sim(error)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Body(rejection) => error_response(
                StatusCode::BAD_REQUEST,
                Some("invalid"),
                &rejection.body_text(),
                json!([]),
            ),
            AdminError::Sim(error) => error.into_response(),
        }
    }
}

fn kind(table: &str) -> Result<Kind, SimError> {
    Kind::parse(table).ok_or_else(|| SimError::UnknownTable(table.to_owned()))
}

/// Applies the changes in order. On an error the earlier changes stay
/// applied; the error names the failing change and lists those applied.
async fn changes(
    State(sim): State<Arc<Simulator>>,
    changes: Result<Json<Vec<Change>>, JsonRejection>,
) -> Result<Response, AdminError> {
    let Json(changes) = changes?;
    let mut applied = Vec::with_capacity(changes.len());
    for (n, change) in changes.into_iter().enumerate() {
        match sim.apply(change) {
            Ok(done) => applied.push(done),
            Err(error) => {
                let body = json!({ "detail": format!("change {n}: {error}"), "errors": [], "applied": applied });
                return Ok((status(&error), Json(body)).into_response());
            }
        }
    }
    Ok(Json(applied).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomWrites {
    table: Option<String>,
    count: usize,
}

async fn random_writes(
    State(sim): State<Arc<Simulator>>,
    request: Result<Json<RandomWrites>, JsonRejection>,
) -> Result<Json<Vec<Applied>>, AdminError> {
    let Json(request) = request?;
    if let Some(table) = &request.table {
        kind(table)?;
    }
    Ok(Json(
        sim.random_writes(request.table.as_deref(), request.count),
    ))
}

/// Every visible record of the table, by stamp, as stored (not re-encoded).
async fn state(
    State(sim): State<Arc<Simulator>>,
    Path(table): Path<String>,
) -> Result<Response, AdminError> {
    let kind = kind(&table)?;
    let body = format!("[{}]", lock(&sim.data).table(kind).state().join(","));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_faults(State(sim): State<Arc<Simulator>>) -> Json<Faults> {
    Json(sim.faults())
}

/// Replaces the faults; fields left out take their defaults.
async fn put_faults(
    State(sim): State<Arc<Simulator>>,
    faults: Result<Json<Faults>, JsonRejection>,
) -> Result<Json<Faults>, AdminError> {
    let Json(faults) = faults?;
    faults.validate().map_err(SimError::InvalidFaults)?;
    sim.set_faults(faults.clone());
    Ok(Json(faults))
}

async fn flush_late(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    Json(json!({ "flushed": sim.flush_late() }))
}

async fn requests(State(sim): State<Arc<Simulator>>) -> Json<Vec<RequestLog>> {
    Json(sim.requests())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    table: String,
    record: Value,
}

/// Adds an arbitrary record (say, one without `uuid` or `update_stamp`) to
/// the table's listing, to test how the relay rejects malformed records.
async fn raw(
    State(sim): State<Arc<Simulator>>,
    request: Result<Json<Raw>, JsonRejection>,
) -> Result<StatusCode, AdminError> {
    let Json(request) = request?;
    sim.add_raw(&request.table, request.record)?;
    Ok(StatusCode::CREATED)
}

/// List requests answered in all, in flight now, and the most at once.
async fn traffic(State(sim): State<Arc<Simulator>>) -> Json<TrafficCounts> {
    Json(sim.traffic())
}
