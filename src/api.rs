//! The HTTP surface. For now health and readiness; the versioned API of
//! DESIGN §6 grows here.

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::Shared;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/openapi.yaml", get(openapi))
        .with_state(shared)
}

/// The API description, compiled in so it always matches this binary.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        OPENAPI,
    )
}

/// Ready when the store answers; the body lists each target's last poll.
async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    let targets: Vec<_> = shared
        .targets
        .iter()
        .map(|(t, s)| {
            let last = s.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            json!({"target": t.to_string(), "last_ok_ms": last.ok_ms, "last_error": last.error})
        })
        .collect();
    match shared.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "targets": targets})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store unavailable", "error": e.to_string()})),
        ),
    }
}

pub async fn serve(
    listener: TcpListener,
    shared: Shared,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await?;
    Ok(())
}
