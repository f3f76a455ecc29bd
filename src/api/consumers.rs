//! Consumers (docs/consumers.md): `GET/POST /v1/consumers`,
//! `GET/PATCH/DELETE /v1/consumers/{name}`, their tokens
//! (`POST /v1/consumers/{name}/tokens`, `DELETE …/tokens/{id}`) and portal
//! links (`POST …/portal-links`, `POST …/portal-links/revoke`). All admin
//! but reading one's own consumer; another consumer's name answers 404.
//! The file's consumers and the built-in `default` answer 409 to changes
//! of their description or lists.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ApiState,
    extract::{JsonBody, PathParams, QueryParams},
    principal::Principal,
    problem::{ApiResult, Problem},
};
use crate::{
    consumer::{self, Allow, Consumer, DEFAULT, Invalid, book::fresh, tokens},
    events::now_ms,
    subscription::ManagedBy,
};

/// Portal links live this long unless asked otherwise.
pub const LINK_TTL_SECS: u64 = 3600;
/// and at most this long.
pub const MAX_LINK_TTL_SECS: u64 = 86_400;

impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Problem {
        Problem::invalid(e.field, e.message)
    }
}

/// A consumer as the API shows it: no token digests.
#[derive(Serialize)]
struct View<'a> {
    name: &'a str,
    description: &'a str,
    sources: &'a [String],
    resources: &'a [String],
    managed_by: Option<ManagedBy>,
    built_in: bool,
    tokens: Vec<Value>,
    created_ms: u64,
    updated_ms: u64,
}

fn view(c: &Consumer) -> Value {
    let v = View {
        name: &c.name,
        description: &c.description,
        sources: &c.allow.sources,
        resources: &c.allow.resources,
        managed_by: c.managed_by,
        built_in: c.name == DEFAULT,
        tokens: c
            .tokens
            .iter()
            .map(|t| json!({"id": t.id, "description": t.description, "created_ms": t.created_ms}))
            .collect(),
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
    };
    serde_json::to_value(v).unwrap_or_default()
}

fn no_consumer(name: &str) -> Problem {
    Problem::not_found(format!("no consumer {name:?}"))
}

fn admin_only(who: &Principal) -> ApiResult<()> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs a token with the admin scope",
        ))
    }
}

/// Consumer `name` if `who` may read it (admin, or the consumer itself).
async fn load(s: &ApiState, who: &Principal, name: &str) -> ApiResult<Consumer> {
    if !who.is_admin() && who.consumer() != Some(name) {
        return Err(no_consumer(name));
    }
    s.consumers
        .get(name)
        .await?
        .ok_or_else(|| no_consumer(name))
}

/// Refuses to change what the file declares or what is built in.
fn changeable(s: &ApiState, name: &str) -> ApiResult<()> {
    if s.consumers.is_declared(name) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "managed_by_config",
            format!(
                "consumer {name:?} is declared in the configuration file ([[consumers]]); \
                 change or remove it there and restart the relay"
            ),
        ));
    }
    if name == DEFAULT {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "built_in",
            "the consumer \"default\" is built in and allows every table; \
             make another consumer to limit one",
        ));
    }
    Ok(())
}

/// The consumer a subscription of `who` belongs to: the one named
/// (`consumer`, an admin's choice), the caller's own, or `default`.
pub(super) async fn owner(
    s: &ApiState,
    who: &Principal,
    named: Option<&str>,
) -> ApiResult<Consumer> {
    let name = match (who.consumer(), named) {
        (Some(own), Some(other)) if own != other => {
            return Err(Problem::invalid(
                "consumer",
                format!("consumer: this credential makes subscriptions of {own:?} only"),
            ));
        }
        (Some(own), _) => own,
        (None, Some(named)) => named,
        (None, None) => DEFAULT,
    };
    s.consumers.get(name).await?.ok_or_else(|| {
        Problem::invalid(
            "consumer",
            format!("consumer: no consumer {name:?}; see GET /v1/consumers"),
        )
    })
}

/// The tables `names` of a subscription of consumer `c`, parsed against
/// the tables `c` may receive only: a table that does not exist and one
/// outside the allow-list get the same 422 (listing the allowed tables),
/// so an answer never tells whether a table the caller may not see exists.
pub(super) fn coverage(
    c: &Consumer,
    names: &[String],
    known: &[crate::store::Table],
) -> ApiResult<crate::subscription::Coverage> {
    let allowed: Vec<crate::store::Table> = known
        .iter()
        .filter(|t| c.allow.allows(t))
        .cloned()
        .collect();
    let resources = crate::subscription::parse_resources(names, &allowed)?;
    within(c, &resources)?;
    Ok(resources)
}

/// A subscription's tables lie within its consumer's allow-list (`["*"]`
/// only for a consumer that allows everything): 422 naming `resources`.
fn within(c: &Consumer, resources: &crate::subscription::Coverage) -> ApiResult<()> {
    let outside = c.allow.outside(resources);
    if outside.is_empty() {
        return Ok(());
    }
    Err(Problem::invalid(
        "resources",
        format!(
            "resources: {} outside consumer {:?}'s allow-list (sources {:?}, resources {:?})",
            outside.join(", "),
            c.name,
            c.allow.sources,
            c.allow.resources
        ),
    ))
}

pub async fn list(State(s): State<ApiState>) -> ApiResult<Json<Value>> {
    let all = s.consumers.list().await?;
    let views: Vec<Value> = all.iter().map(view).collect();
    Ok(Json(json!({ "consumers": views })))
}

pub async fn get(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(view(&load(&s, &who, &name).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "everything")]
    sources: Vec<String>,
    #[serde(default = "everything")]
    resources: Vec<String>,
}

fn everything() -> Vec<String> {
    Allow::everything().sources
}

pub async fn create(
    State(s): State<ApiState>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> ApiResult<Response> {
    consumer::check_name(&req.name)?;
    changeable(&s, &req.name)?;
    let allow = Allow {
        sources: req.sources,
        resources: req.resources,
    };
    allow.check("")?;
    let c = Consumer {
        description: req.description,
        allow,
        ..fresh(&req.name, now_ms())
    };
    let json = serde_json::to_string(&c).map_err(Problem::internal)?;
    let store = s.consumers.store();
    if store
        .put_document(consumer::KIND, &c.name, &json, 0)
        .await?
        .is_none()
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!(
                "consumer {:?} exists; PATCH it or choose another name",
                c.name
            ),
        ));
    }
    tracing::info!(consumer = %c.name, "consumer created");
    let location = format!("/v1/consumers/{}", c.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view(&c)),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    description: Option<String>,
    sources: Option<Vec<String>>,
    resources: Option<Vec<String>>,
}

pub async fn patch(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(name): PathParams<String>,
    JsonBody(req): JsonBody<PatchRequest>,
) -> ApiResult<Json<Value>> {
    load(&s, &who, &name).await?;
    admin_only(&who)?;
    changeable(&s, &name)?;
    let changed = s
        .consumers
        .update(&name, |c| {
            if let Some(d) = &req.description {
                c.description = d.clone();
            }
            if let Some(l) = &req.sources {
                c.allow.sources = l.clone();
            }
            if let Some(l) = &req.resources {
                c.allow.resources = l.clone();
            }
            c.allow.check("")?;
            c.updated_ms = now_ms();
            Ok::<_, Problem>(())
        })
        .await?
        .ok_or_else(|| no_consumer(&name))?;
    Ok(Json(view(&changed)))
}

pub async fn delete(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(name): PathParams<String>,
) -> ApiResult<StatusCode> {
    load(&s, &who, &name).await?;
    admin_only(&who)?;
    changeable(&s, &name)?;
    let owned = s.shared.store.subscriptions().await?;
    let owned = owned.iter().filter(|x| x.consumer == name).count();
    if owned > 0 {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "consumer_in_use",
            format!("consumer {name:?} has {owned} subscriptions; delete them first"),
        ));
    }
    if s.consumers
        .store()
        .delete_document(consumer::KIND, &name)
        .await?
    {
        tracing::info!(consumer = %name, "consumer deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_consumer(&name))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[serde(default)]
    description: String,
}

/// A new token, shown this once; stored as its SHA-256.
pub async fn issue_token(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
    QueryParams(req): QueryParams<TokenRequest>,
) -> ApiResult<Response> {
    let at = now_ms();
    let (token, stored) = tokens::issue(&name, &req.description, at);
    let id = stored.id.clone();
    s.consumers
        .update(&name, |c| {
            if c.tokens.len() >= consumer::MAX_TOKENS {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "too_many_tokens",
                    format!(
                        "consumer {name:?} holds {} tokens; revoke one first",
                        consumer::MAX_TOKENS
                    ),
                ));
            }
            c.tokens.push(stored.clone());
            c.updated_ms = at;
            Ok(())
        })
        .await?
        .ok_or_else(|| no_consumer(&name))?;
    tracing::info!(consumer = %name, token = %id, "consumer token issued");
    let body = json!({"id": id, "token": token, "created_ms": at});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn revoke_token(
    State(s): State<ApiState>,
    PathParams((name, id)): PathParams<(String, String)>,
) -> ApiResult<StatusCode> {
    let mut found = false;
    s.consumers
        .update(&name, |c| {
            let before = c.tokens.len();
            c.tokens.retain(|t| t.id != id);
            found = c.tokens.len() < before;
            Ok::<_, Problem>(())
        })
        .await?
        .ok_or_else(|| no_consumer(&name))?;
    if !found {
        return Err(Problem::not_found(format!(
            "consumer {name:?} has no token {id:?}"
        )));
    }
    tracing::info!(consumer = %name, token = %id, "consumer token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// Seconds the link is valid; default [`LINK_TTL_SECS`].
    ttl_seconds: Option<u64>,
}

/// A portal link: `<api.public_url>/portal/#<token>` (relative without a
/// public URL; never from the request's `Host`). The token is in the
/// fragment, which browsers send to no server.
pub async fn portal_link(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
    QueryParams(req): QueryParams<LinkRequest>,
) -> ApiResult<Json<Value>> {
    let ttl = req.ttl_seconds.unwrap_or(LINK_TTL_SECS);
    if ttl == 0 || ttl > MAX_LINK_TTL_SECS {
        return Err(Problem::invalid(
            "ttl_seconds",
            format!("ttl_seconds: from 1 to {MAX_LINK_TTL_SECS} (24 h)"),
        ));
    }
    let c = s
        .consumers
        .get(&name)
        .await?
        .ok_or_else(|| no_consumer(&name))?;
    let key = s.consumers.link_key().await?;
    let expiry = now_ms() / 1000 + ttl;
    let token = key.sign(&c.name, expiry, c.link_generation);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expiry);
    tracing::info!(consumer = %name, ttl, "portal link issued");
    Ok(Json(json!({
        "url": format!("{}/portal/#{token}", super::compat::origin(&s.compat)),
        "expires_at": humantime::format_rfc3339_seconds(at).to_string(),
    })))
}

/// Voids every portal link issued so far for the consumer.
pub async fn revoke_links(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> ApiResult<StatusCode> {
    s.consumers
        .update(&name, |c| {
            c.link_generation += 1;
            c.updated_ms = now_ms();
            Ok::<_, Problem>(())
        })
        .await?
        .ok_or_else(|| no_consumer(&name))?;
    tracing::info!(consumer = %name, "portal links revoked");
    Ok(StatusCode::NO_CONTENT)
}
