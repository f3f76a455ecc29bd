//! `GET /v1/resources/{source}/{resource}/records/{id}`: a record's latest
//! version from the latest-record store (src/store/records.rs).

use axum::{Json, extract::State};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    ApiState, extract::PathParams, principal::Principal, problem::ApiResult, problem::Problem,
};
use crate::store::Table;

#[derive(Serialize)]
pub struct RecordView {
    id: String,
    /// The stamp of the latest version.
    stamp: u64,
    /// Whether the latest version is soft-deleted.
    deleted: bool,
    /// The latest version exactly as the upstream sent it.
    record: Box<RawValue>,
}

pub async fn get(
    State(s): State<ApiState>,
    who: Principal,
    PathParams((source, resource, id)): PathParams<(String, String, String)>,
) -> ApiResult<Json<RecordView>> {
    let t = Table::new(source, resource);
    if !who.sees(&t) {
        return Err(Principal::unseen(&t));
    }
    s.compat.kept(&t)?;
    let Some(r) = s.shared.store.record(&t, &id).await? else {
        return Err(Problem::not_found(format!("{t} has no record {id:?}")));
    };
    let record = RawValue::from_string(r.data)
        .map_err(|e| crate::store::StoreError::Corrupt(format!("stored record {id}: {e}")))?;
    let view = RecordView {
        id: r.id,
        stamp: r.stamp,
        deleted: r.deleted,
        record,
    };
    Ok(Json(view))
}
