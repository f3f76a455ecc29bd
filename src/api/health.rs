//! `GET /readyz`: ready or not, and which part is not. Unauthenticated, so
//! it names parts only: upstream URLs and error text stay behind the read
//! token in `GET /v1/resources`.

use std::sync::atomic::Ordering;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::json;

use super::ApiState;

/// One thing readiness depends on. A new check is one more entry in the
/// list [`parts`] builds.
#[derive(Debug, Serialize)]
pub struct Part {
    /// `store`, `poller:<source>/<resource>`, or `store_reset:<source>/<resource>`
    /// for a table reloaded after its store lost its data.
    pub name: String,
    pub ready: bool,
}

/// Every part, in a stable order: the store, then each poll loop.
async fn parts(s: &ApiState) -> Vec<Part> {
    let mut parts = vec![Part {
        name: "store".into(),
        ready: s.shared.store.ping().await.is_ok(),
    }];
    let tables = s.shared.entries();
    // Paused tables and internal ones have no poll loop to be ready; an
    // upstream's health is never a part of readiness (docs/operations.md).
    parts.extend(tables.iter().filter(|t| t.polled()).map(|t| Part {
        name: format!("poller:{}", t.table),
        ready: t.status.running.load(Ordering::Relaxed),
    }));
    // A table whose store lost its data under this relay (poller/epoch.rs):
    // not ready while it reloads, and still named afterwards.
    parts.extend(
        tables
            .iter()
            .filter(|t| t.status.resets.load(Ordering::Relaxed) > 0)
            .map(|t| Part {
                name: format!("store_reset:{}", t.table),
                ready: !t.status.reloading.load(Ordering::Relaxed),
            }),
    );
    parts
}

/// 200 with every part when all are ready, else a 503 problem naming the
/// parts that are not.
pub async fn readyz(State(s): State<ApiState>) -> Response {
    let parts = parts(&s).await;
    let down: Vec<&str> = parts
        .iter()
        .filter(|p| !p.ready)
        .map(|p| p.name.as_str())
        .collect();
    if down.is_empty() {
        return Json(json!({"status": "ready", "parts": parts})).into_response();
    }
    let body = json!({
        "type": "urn:stamp-relay:problem:not_ready",
        "title": "Service Unavailable",
        "status": 503,
        "code": "not_ready",
        "detail": format!("not ready: {}", down.join(", ")),
        "parts": parts,
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
