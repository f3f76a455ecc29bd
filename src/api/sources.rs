//! Sources as data (admin scope): `GET/POST /v1/sources`,
//! `GET/PATCH/DELETE /v1/sources/{name}`, and the nudge
//! (`POST /v1/sources/{name}/nudge`, `nudge.rs`). Validation is
//! `check-config`'s; credentials are sealed and shown as a fingerprint
//! only; the configuration file's sources answer 409 `managed_by_config`
//! to changes (docs/sources.md).

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    ApiState,
    extract::{JsonBody, PathParams, QueryParams},
    problem::{ApiResult, Problem},
};
use futures_util::StreamExt;

use crate::{
    events::now_ms,
    health::{SourceHealth, State as HealthState},
    sources::{self, ApiAuth, Credentials, Invalid, KIND, StoredSource, sync::SourceSync},
    store::update_document,
    topology::Origin,
};

pub mod nudge;

/// What the sources routes share: the sync that applies stored sources
/// to this instance's topology (holding the sealing key), and the nudge gate.
pub struct SourceAdmin {
    pub sync: Arc<SourceSync>,
    pub nudges: nudge::Gate,
}

impl SourceAdmin {
    pub fn new(sync: Arc<SourceSync>) -> SourceAdmin {
        SourceAdmin {
            sync,
            nudges: nudge::Gate::default(),
        }
    }
}

impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Problem {
        let mut p = Problem::invalid(e.field, e.problems.join("; "));
        p.extra.insert("problems".into(), e.problems.into());
        p
    }
}

/// Splits a request body into its `auth`, its `paused` and the rest.
fn take_members(body: &mut Map<String, Value>) -> ApiResult<(Option<ApiAuth>, Option<bool>)> {
    let auth = body
        .remove("auth")
        .map(|a| {
            let de = serde_path_to_error::deserialize::<_, ApiAuth>(a);
            de.map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "auth".into()
                } else {
                    format!("auth.{path}")
                };
                Problem::invalid(field, e.into_inner().to_string())
            })
        })
        .transpose()?;
    let paused = match body.remove("paused") {
        None => None,
        Some(Value::Bool(b)) => Some(b),
        Some(_) => return Err(Problem::invalid("paused", "paused: must be true or false")),
    };
    Ok((auth, paused))
}

/// 503 naming the variable: credentials and no key to seal or open them.
fn key_missing() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "source_key_missing",
        format!(
            "this source has credentials, and the relay stores them only encrypted: set {} \
             to 32 random bytes in base64 (`openssl rand -base64 32`) on every instance and \
             restart, or create the source without auth",
            sources::seal::KEY_VAR
        ),
    )
}

/// Seals `creds` for `name`; 503 naming the variable without a key.
fn seal(
    s: &ApiState,
    name: &str,
    creds: &Credentials,
) -> ApiResult<(Option<sources::Sealed>, Option<String>)> {
    if creds.0.is_empty() {
        return Ok((None, None));
    }
    let key = s.source_admin.sync.key().ok_or_else(key_missing)?;
    Ok((
        Some(key.seal(name, creds)),
        Some(key.fingerprint(name, creds)),
    ))
}

fn config_source(s: &ApiState, name: &str) -> ApiResult<()> {
    match s.shared.topology.source(name) {
        Some(src) if src.origin == Origin::Config => Err(Problem::new(
            StatusCode::CONFLICT,
            "managed_by_config",
            format!(
                "source {name:?} is declared in the configuration file ([[sources]]); change or \
                 remove it there and restart the relay"
            ),
        )),
        _ => Ok(()),
    }
}

pub async fn create(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Response> {
    let mut body = body;
    let (auth, paused) = take_members(&mut body)?;
    let mut settings = sources::settings_from_json(Value::Object(body))?;
    let (auth, creds) = auth.unwrap_or(ApiAuth::None).split()?;
    settings.auth = auth;
    sources::check(&settings, &creds)?;
    let name = settings.name.clone();
    config_source(&s, &name)?;
    let (credentials, fingerprint) = seal(&s, &name, &creds)?;
    let at = now_ms();
    let stored = StoredSource {
        settings,
        credentials,
        fingerprint,
        paused: paused.unwrap_or(false),
        created_ms: at,
        updated_ms: at,
    };
    let json = serde_json::to_string(&stored).map_err(Problem::internal)?;
    let store = &s.shared.store;
    if store.put_document(KIND, &name, &json, 0).await?.is_none() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "source_exists",
            format!("a source named {name:?} exists already; PATCH it, or choose another name"),
        ));
    }
    let token = nudge::issue(&s, &name).await?;
    s.source_admin.sync.apply_one(&name).await?;
    tracing::info!(source = %name, "source created through the API");
    let mut view = view_of(&s, &stored).await?;
    view["nudge_token"] = token.into();
    let location = format!("/v1/sources/{name}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// A stored source's view with its health.
async fn view_of(s: &ApiState, stored: &StoredSource) -> ApiResult<Value> {
    let mut v = stored.view();
    with_health(s, &stored.settings.name, &mut v).await?;
    Ok(v)
}

/// Adds `state` and `health` to a source's view: `paused` when paused;
/// else its tables' health as their pollers last stored it (health.rs),
/// the worst first; `failing` when the source cannot run at all.
async fn with_health(s: &ApiState, name: &str, view: &mut Value) -> ApiResult<()> {
    let now = now_ms();
    let health = match s.shared.topology.source(name) {
        None => SourceHealth {
            state: HealthState::Failing,
            reason: Some("the stored source cannot be polled; the relay's log says why".into()),
            ..SourceHealth::of([], now)
        },
        Some(src) if src.paused => SourceHealth {
            state: HealthState::Paused,
            ..SourceHealth::of([], now)
        },
        Some(src) => {
            let mut tables = Vec::new();
            for r in &src.config.settings.resources {
                let t = crate::store::Table::new(name, r);
                if let Some(h) = s.shared.store.poll_status(&t).await?.and_then(|p| p.health) {
                    tables.push(h);
                }
            }
            SourceHealth::of(&tables, now)
        }
    };
    view["state"] = health.state.name().into();
    view["health"] = serde_json::to_value(&health).map_err(Problem::internal)?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    q: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

/// Page size of `GET /v1/sources` unless `limit` says otherwise, and its most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Health reads in flight at once while `?state=` filters.
const HEALTH_READS: usize = 32;

pub async fn list(
    State(s): State<ApiState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::invalid(
            "limit",
            format!("limit: must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err(Problem::invalid("page", "page: pages count from 1"));
    }
    let wanted = match q.state.as_deref() {
        None => None,
        Some(st) => Some(HealthState::parse(st).ok_or_else(|| {
            let all: Vec<&str> = HealthState::ALL.iter().map(|s| s.name()).collect();
            Problem::invalid("state", format!("state: {st:?} is not one of {all:?}"))
        })?),
    };
    let mut all: Vec<(String, Value)> = Vec::new();
    for src in s.shared.topology.sources() {
        if src.origin == Origin::Config {
            all.push((
                src.name().into(),
                sources::config_view(&src.config.settings),
            ));
        }
    }
    for doc in s.shared.store.documents(KIND).await? {
        if let Ok(stored) = serde_json::from_str::<StoredSource>(&doc.json) {
            all.push((doc.name, stored.view()));
        }
    }
    let needle = q.q.as_deref().unwrap_or("").to_ascii_lowercase();
    all.retain(|(name, _)| name.to_ascii_lowercase().contains(&needle));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(st) = wanted {
        // Every candidate's health, a bounded number of reads at once.
        let looked = futures_util::stream::iter(all.into_iter().map(|(name, mut v)| {
            let s = s.clone();
            async move { with_health(&s, &name, &mut v).await.map(|()| (name, v)) }
        }))
        .buffered(HEALTH_READS)
        .collect::<Vec<_>>()
        .await;
        all = looked.into_iter().collect::<ApiResult<Vec<_>>>()?;
        all.retain(|(_, v)| v["state"] == st.name());
    }
    let total = all.len();
    let mut items = Vec::new();
    for (name, mut v) in all
        .into_iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
    {
        if wanted.is_none() {
            with_health(&s, &name, &mut v).await?;
        }
        items.push(v);
    }
    let next = (page.saturating_mul(limit) < total).then_some(page + 1);
    Ok(Json(json!({
        "sources": items, "page": page, "limit": limit, "total": total, "next_page": next,
    })))
}

async fn load(s: &ApiState, name: &str) -> ApiResult<StoredSource> {
    let doc = s
        .shared
        .store
        .document(KIND, name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no source {name:?}")))?;
    serde_json::from_str(&doc.json).map_err(Problem::internal)
}

pub async fn get(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<Value>> {
    if let Some(src) = s
        .shared
        .topology
        .source(&name)
        .filter(|x| x.origin == Origin::Config)
    {
        let mut v = sources::config_view(&src.config.settings);
        with_health(&s, &name, &mut v).await?;
        return Ok(Json(v));
    }
    Ok(Json(view_of(&s, &load(&s, &name).await?).await?))
}

pub async fn patch(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    config_source(&s, &name)?;
    let mut body = body;
    let (auth, paused) = take_members(&mut body)?;
    if body.get("name").is_some_and(|n| n != name.as_str()) {
        return Err(Problem::invalid(
            "name",
            "name: a source keeps its name; create another one",
        ));
    }
    let new_auth = auth.map(ApiAuth::split).transpose()?;
    let sealed = match &new_auth {
        Some((_, creds)) => Some(seal(&s, &name, creds)?),
        None => None,
    };
    let key = s.source_admin.sync.key().cloned();
    let updated = update_document(
        s.shared.store.as_ref(),
        KIND,
        &name,
        |stored: &mut StoredSource| {
            let mut merged = sources::settings_json(&stored.settings);
            merged.extend(body.clone());
            let mut settings = sources::settings_from_json(Value::Object(merged))?;
            settings.auth = match &new_auth {
                Some((a, _)) => a.clone(),
                None => stored.settings.auth.clone(),
            };
            if let Some((credentials, fingerprint)) = sealed.clone() {
                (stored.credentials, stored.fingerprint) = (credentials, fingerprint);
            }
            // Checked with the credentials it will run with.
            let creds = match &new_auth {
                Some((_, c)) => c.clone(),
                None => kept_credentials(stored, &name, key.as_ref())?,
            };
            sources::check(&settings, &creds)?;
            stored.settings = settings;
            if let Some(p) = paused {
                stored.paused = p;
            }
            stored.updated_ms = now_ms();
            Ok::<_, Problem>(())
        },
    )
    .await?
    .ok_or_else(|| Problem::not_found(format!("no source {name:?}")))?;
    s.source_admin.sync.apply_one(&name).await?;
    tracing::info!(source = %name, paused = updated.paused, "source changed through the API");
    Ok(Json(view_of(&s, &updated).await?))
}

/// The stored credentials a PATCH keeps, opened; sealed again under the
/// current key when an older one (`STAMP_RELAY_SOURCE_KEY_PREVIOUS`)
/// sealed them, so a rotation completes as sources are written.
fn kept_credentials(
    stored: &mut StoredSource,
    name: &str,
    key: Option<&sources::SourceKey>,
) -> ApiResult<Credentials> {
    let Some(sealed) = &stored.credentials else {
        return Ok(Credentials::default());
    };
    let key = key.ok_or_else(key_missing)?;
    let creds = key
        .open(name, sealed)
        .map_err(|e| Problem::invalid("auth", e))?;
    if key.is_stale(sealed) {
        stored.credentials = Some(key.seal(name, &creds));
        stored.fingerprint = Some(key.fingerprint(name, &creds));
    }
    Ok(creds)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

pub async fn delete(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<DeleteQuery>,
) -> ApiResult<StatusCode> {
    config_source(&s, &name)?;
    let stored = load(&s, &name).await?;
    let store = &s.shared.store;
    if !store.delete_document(KIND, &name).await? {
        return Err(Problem::not_found(format!("no source {name:?}")));
    }
    nudge::forget(&s, &name).await?;
    s.source_admin.sync.apply_one(&name).await?;
    tracing::info!(source = %name, purge = q.purge, "source deleted through the API");
    if q.purge {
        // Other instances drop the source within a second; a poll of theirs
        // still running then is refused by the purged epoch.
        tokio::time::sleep(sources::sync::SYNC_EVERY * 2).await;
        let subs: Vec<String> = store
            .subscriptions()
            .await?
            .into_iter()
            .map(|x| x.id)
            .collect();
        for r in &stored.settings.resources {
            store
                .purge_table(&crate::store::Table::new(&name, r), &subs)
                .await?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
