//! The HTTP surface: health, readiness and the OpenAPI document
//! unauthenticated; everything under `/v1` behind bearer tokens (see
//! `auth.rs` for why writes need the Bearer header). Every error is an
//! RFC 9457 problem, also those of layers and extractors (`problem.rs`).
//! `openapi.yaml` describes exactly these routes; a test walks both and
//! fails on any difference.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::{
    cloudevents::EventSource,
    store::{Store, Table},
    tail::Tails,
    topology::{TableEntry, Topology},
};

pub mod auth;
pub mod compat;
mod compat_auth;
mod consumers;
mod deliveries;
pub mod extract;
mod health;
mod live;
mod messages;
mod portal;
mod positions;
mod preview;
pub mod principal;
pub mod problem;
mod read_ahead;
mod records;
mod redrive;
mod requests;
mod resources;
pub mod server;
pub mod sources;
mod stall;
mod status_page;
mod subscriptions;
mod throttle;

use problem::Problem;

/// What the HTTP layer and status surfaces can see.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    /// What exists now: read per request, so added sources show at once.
    pub topology: Arc<Topology>,
}

impl Shared {
    /// Every table's key, in order.
    pub fn tables(&self) -> Vec<Table> {
        self.topology.snapshot().tables()
    }

    /// Every table's entry, in order.
    pub fn entries(&self) -> Vec<Arc<TableEntry>> {
        self.topology.entries()
    }

    /// How `t`'s events look downstream; None for an unknown table.
    pub fn event_source(&self, t: &Table) -> Option<Arc<EventSource>> {
        Some(self.topology.table(t)?.event_source.clone())
    }
}

impl Shared {
    /// Every table of a source, paused ones too, in order: what the status
    /// surfaces list (the relay's own `_relay/health` is read by replay).
    pub fn source_tables(&self) -> Vec<Arc<TableEntry>> {
        let mut tables = self.entries();
        tables.retain(|t| t.source.is_some());
        tables
    }
}

/// Everything a handler may need, cloned per request (all `Arc`s).
#[derive(Clone)]
pub struct ApiState {
    pub shared: Shared,
    pub tokens: Arc<auth::Tokens>,
    pub tails: Tails,
    pub secret_grace: Duration,
    /// `delivery.max_waiting_retries`, shown on the status page.
    pub max_waiting_retries: usize,
    /// For `POST /v1/subscriptions/{id}/test`.
    pub sender: Arc<crate::delivery::sender::WebhookClient>,
    pub type_prefix: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub request_timeout: Duration,
    /// One permit per open live stream (`api.max_sse_clients`).
    pub live_slots: Arc<Semaphore>,
    pub limits: server::Limits,
    /// Ends live streams when the server stops.
    pub cancel: CancellationToken,
    /// Per table: the record store's setting and the upstream's API shape.
    pub compat: Arc<compat::Tables>,
    /// `GET /v1/event-types`.
    pub catalog: Arc<crate::catalog::Catalog>,
    /// `/v1/sources`: applying stored sources, the sealing key, nudges.
    pub source_admin: Arc<sources::SourceAdmin>,
    /// Consumers, their tokens and the portal links' key.
    pub consumers: Arc<crate::consumer::Book>,
    /// Replay pages read before their reader asks (`read_ahead.rs`).
    pub read_ahead: Arc<read_ahead::ReadAhead>,
}

/// Everything under `/v1` that any token may call: the tables a
/// principal sees (`principal.rs`).
fn read_routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route("/v1/resources", get(resources::list))
        .route("/v1/event-types", get(event_types))
        .route(
            "/v1/resources/{source}/{resource}/events",
            get(resources::events),
        )
        .route(
            "/v1/resources/{source}/{resource}/records/{id}",
            get(records::get),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_read,
        ))
}

/// The compatible API: read with a configured token or a bearer its own
/// OAuth route issued (`compat_auth.rs`), which checks the credentials it
/// is given itself.
fn compat_routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route("/compat/{source}/api/{resource}/", get(compat::list))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_compat,
        ))
        .route(
            "/compat/{source}/api/integration/auth/",
            post(compat_auth::issue),
        )
}

/// Subscriptions and their deliveries: an admin token, or a consumer's
/// credential for its own (others' ids answer 404); and reading one's own
/// consumer.
fn owner_routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
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
        .route("/v1/subscriptions/{id}/retry", post(deliveries::retry))
        .route("/v1/subscriptions/{id}/attempts", get(deliveries::attempts))
        .route("/v1/subscriptions/{id}/secret", get(subscriptions::secret))
        .route("/v1/subscriptions/{id}/messages", get(messages::list))
        .route(
            "/v1/subscriptions/{id}/messages/{event_id}/retry",
            post(messages::retry),
        )
        .route("/v1/filters/preview", post(preview::preview))
        .route(
            "/v1/subscriptions/{id}/dead-letters",
            get(deliveries::dead_letters),
        )
        .route(
            "/v1/subscriptions/{id}/dead-letters/redrive",
            post(redrive::redrive),
        )
        .route(
            "/v1/consumers/{name}",
            get(consumers::get)
                .patch(consumers::patch)
                .delete(consumers::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_owner,
        ))
}

/// Everything under `/v1` that needs an admin token.
fn admin_routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route("/v1/sources", post(sources::create).get(sources::list))
        .route(
            "/v1/sources/{name}",
            get(sources::get)
                .patch(sources::patch)
                .delete(sources::delete),
        )
        .route(
            "/v1/sources/{name}/nudge-token",
            post(sources::nudge::rotate),
        )
        .route(
            "/v1/consumers",
            post(consumers::create).get(consumers::list),
        )
        .route("/v1/consumers/{name}/tokens", post(consumers::issue_token))
        .route(
            "/v1/consumers/{name}/tokens/{id}",
            axum::routing::delete(consumers::revoke_token),
        )
        .route(
            "/v1/consumers/{name}/portal-links",
            post(consumers::portal_link),
        )
        .route(
            "/v1/consumers/{name}/portal-links/revoke",
            post(consumers::revoke_links),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ))
}

pub fn router(state: ApiState) -> Router {
    let read = read_routes(&state);
    let owner = owner_routes(&state);
    let admin = admin_routes(&state);
    let compat = compat_routes(&state);
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(health::readyz))
        .route("/openapi.yaml", get(openapi))
        .route("/asyncapi.yaml", get(asyncapi))
        .route("/portal", get(portal::slash))
        .route("/portal/", get(portal::page))
        .route("/portal/portal.js", get(portal::script))
        .route("/portal/portal.css", get(portal::style))
        .route(
            "/",
            get(status_page::page).route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::require_operator,
            )),
        )
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::require_operator,
            )),
        )
        // An admin token or the source's own nudge token (sources/nudge.rs).
        .route("/v1/sources/{name}/nudge", post(sources::nudge::nudge))
        .merge(read)
        .merge(compat)
        .merge(owner)
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
        .layer(middleware::map_response(problem::problem_for_bare_errors))
        .layer(middleware::map_response(close_after_too_large))
        .layer(middleware::map_response(no_store))
        .layer(middleware::from_fn_with_state(
            state.request_timeout,
            time_limit,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `api.request_timeout` on producing an answer (a live stream's body is
/// not timed), answered as a problem.
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took longer than api.request_timeout; try again",
        )
        .into_response(),
    }
}

/// A 413 leaves the request body unread, so the connection cannot carry
/// another request: say so, or a client's pool sends its next request on a
/// connection the server is closing (and it fails with no answer).
async fn close_after_too_large(mut r: Response) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    r
}

/// Answers carry patient records, events and secrets: no cache (a
/// browser's, a proxy's) keeps them, no browser guesses their type, and no
/// other site frames them (the status page). Health answers get the same;
/// they cost nothing to fetch again.
async fn no_store(mut r: Response) -> Response {
    use axum::http::{HeaderValue, header};
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The portal's files carry their own, stricter policy.
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
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

/// Every event type of every table with its JSON Schema (docs/tracing.md).
async fn event_types(
    State(state): State<ApiState>,
    who: principal::Principal,
) -> Result<Json<Value>, Problem> {
    let mut types = state.catalog.event_types().await.map_err(Problem::from)?;
    types.retain(|ty| {
        let part = |k: &str| ty[k].as_str().unwrap_or_default().to_string();
        who.sees(&Table::new(part("source"), part("resource")))
    });
    Ok(Json(json!({ "event_types": types })))
}

/// The events' description (AsyncAPI 3.0: webhooks, SSE, Redis streams).
pub const ASYNCAPI: &str = include_str!("../../asyncapi.yaml");

async fn asyncapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        ASYNCAPI,
    )
}

/// Prometheus text; store-derived gauges are refreshed per scrape.
async fn metrics(State(s): State<ApiState>) -> Result<impl IntoResponse, Problem> {
    use crate::metrics::SubLabels;
    let m = &s.metrics;
    let subs = s.shared.store.subscriptions().await?;
    let ids: Vec<String> = subs.iter().map(|s| s.id.clone()).collect();
    m.keep_subscriptions(&ids, &s.shared.tables());
    for sub in subs {
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

pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let limits = state.limits;
    server::run(listener, router(state), limits, cancel).await
}
