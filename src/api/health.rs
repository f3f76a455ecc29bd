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
    // The relay's own tables have no poll loop; an upstream's health is
    // never a part of readiness (docs/operations.md, "Health").
    let polled = s.shared.targets.iter().filter(|(t, _)| !t.is_internal());
    parts.extend(polled.map(|(t, st)| Part {
        name: format!("poller:{t}"),
        ready: st.running.load(Ordering::Relaxed),
    }));
    // A table whose store lost its data under this relay (poller/epoch.rs):
    // not ready while it reloads, and still named afterwards.
    parts.extend(
        s.shared
            .targets
            .iter()
            .filter(|(_, st)| st.resets.load(Ordering::Relaxed) > 0)
            .map(|(t, st)| Part {
                name: format!("store_reset:{t}"),
                ready: !st.reloading.load(Ordering::Relaxed),
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
