//! The HTTP surface (DESIGN §6): health, readiness and the OpenAPI document
//! unauthenticated; everything under `/v1` behind bearer tokens. Every
//! error is an RFC 9457 problem. `openapi.yaml` describes exactly these
//! routes; a test walks both and fails on any difference.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    middleware,
    response::IntoResponse,
    routing::{get, post},
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};

use crate::{app::Shared, cloudevents::EventSource, store::Target, tail::Tails};

pub mod auth;
mod deliveries;
pub mod problem;
mod resources;
mod status;
mod subscriptions;

use problem::Problem;

/// Everything a handler may need, cloned per request (all `Arc`s).
#[derive(Clone)]
pub struct ApiState {
    pub shared: Shared,
    pub tokens: Arc<Vec<auth::ApiToken>>,
    pub sources: Arc<HashMap<Target, Arc<EventSource>>>,
    pub tails: Tails,
    pub secret_grace: Duration,
    /// For `POST /v1/subscriptions/{id}/test`.
    pub sender: Arc<crate::delivery::sender::Sender>,
    pub type_prefix: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub request_timeout: Duration,
    /// Ends live streams when the server stops.
    pub cancel: CancellationToken,
}

pub fn router(state: ApiState) -> Router {
    let read = Router::new()
        .route("/v1/resources", get(resources::list))
        .route(
            "/v1/resources/{source}/{resource}/events",
            get(resources::events),
        )
        .route_layer(middleware::from_fn_with_state(
            state.tokens.clone(),
            auth::require_read,
        ));
    let admin = Router::new()
        .route(
            "/v1/subscriptions",
            post(subscriptions::create).get(subscriptions::list),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(subscriptions::get)
                .patch(subscriptions::patch)
                .delete(subscriptions::delete),
        )
        .route(
            "/v1/subscriptions/{id}/rotate-secret",
            post(subscriptions::rotate_secret),
        )
        .route("/v1/subscriptions/{id}/replay", post(deliveries::replay))
        .route("/v1/subscriptions/{id}/test", post(deliveries::test))
        .route("/v1/subscriptions/{id}/attempts", get(deliveries::attempts))
        .route(
            "/v1/subscriptions/{id}/dead-letters",
            get(deliveries::dead_letters),
        )
        .route(
            "/v1/subscriptions/{id}/dead-letters/redrive",
            post(deliveries::redrive),
        )
        .route_layer(middleware::from_fn_with_state(
            state.tokens.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/openapi.yaml", get(openapi))
        .route(
            "/",
            get(status::page).route_layer(middleware::from_fn_with_state(
                state.tokens.clone(),
                auth::require_read,
            )),
        )
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(
                state.tokens.clone(),
                auth::require_read,
            )),
        )
        .merge(read)
        .merge(admin)
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "no such route; see /openapi.yaml",
            )
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see /openapi.yaml",
            )
        })
        .layer(DefaultBodyLimit::max(problem::BODY_LIMIT))
        .layer(middleware::map_response(close_after_too_large))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A 413 leaves the request body unread, so the connection cannot carry
/// another request: say so, or a client's pool sends its next request on a
/// connection the server is closing (and it fails with no answer).
async fn close_after_too_large(mut r: axum::response::Response) -> axum::response::Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    r
}

/// The API description, compiled in so it always matches this binary.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        OPENAPI,
    )
}

/// Prometheus text; store-derived gauges are refreshed per scrape.
async fn metrics(State(s): State<ApiState>) -> Result<impl IntoResponse, Problem> {
    use crate::metrics::SubLabels;
    let m = &s.metrics;
    for sub in s.shared.store.subscriptions().await? {
        let l = SubLabels {
            subscription: sub.id.clone(),
        };
        let dead = s.shared.store.dead_letters(&sub.id).await?.len() as i64;
        m.disabled.get_or_create(&l).set(i64::from(!sub.enabled));
        m.dead_letters.get_or_create(&l).set(dead);
    }
    m.live_clients.set(s.tails.clients() as i64);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    ))
}

/// Ready when the store answers and every poll loop runs; the body lists
/// each target's last poll.
async fn readyz(State(s): State<ApiState>) -> impl IntoResponse {
    use std::sync::atomic::Ordering;
    let targets: Vec<_> = s
        .shared
        .targets
        .iter()
        .map(|(t, st)| {
            let last = st.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let running = st.running.load(Ordering::Relaxed);
            json!({"target": t.to_string(), "running": running, "last_ok_ms": last.ok_ms, "last_error": last.error})
        })
        .collect();
    let stopped: Vec<String> = s
        .shared
        .targets
        .iter()
        .filter(|(_, st)| !st.running.load(Ordering::Relaxed))
        .map(|(t, _)| t.to_string())
        .collect();
    if !stopped.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "pollers stopped", "error": format!("not polling: {}", stopped.join(", "))}),
            ),
        );
    }
    // Tables whose store lost their data under this relay (poller/epoch.rs):
    // not ready while they reload, and named afterwards too.
    let resets: Vec<_> = s
        .shared
        .targets
        .iter()
        .filter(|(_, st)| st.resets.load(Ordering::Relaxed) > 0)
        .map(|(t, st)| {
            json!({"target": t.to_string(), "at_ms": st.last_reset_ms.load(Ordering::Relaxed),
                "reloading": st.reloading.load(Ordering::Relaxed)})
        })
        .collect();
    if resets.iter().any(|r| r["reloading"] == true) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "store reset", "part": "store", "store_resets": resets, "targets": targets}),
            ),
        );
    }
    match s.shared.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "targets": targets, "store_resets": resets})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store unavailable", "error": e.to_string()})),
        ),
    }
}

pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await?;
    Ok(())
}
