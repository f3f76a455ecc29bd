//! Subscription CRUD and secret rotation (admin scope).

use std::collections::HashMap;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{
    ApiState,
    extract::{JsonBody, PathParams},
    principal::Principal,
    problem::{ApiResult, Problem},
    requests::{CreateRequest, PatchRequest},
};
use crate::{
    consumer::Allow,
    events::{Op, StreamId, now_ms},
    store::{Table, update_subscription},
    subscription::{self, Coverage, Subscription},
};

/// A subscription as the API shows it: everything but the secrets.
#[derive(Serialize)]
pub struct View<'a> {
    pub id: &'a str,
    pub consumer: &'a str,
    pub url: &'a subscription::WebhookUrl,
    pub resources: &'a Coverage,
    pub ops: &'a [Op],
    #[serde(with = "crate::subscription::start_map")]
    pub start: &'a std::collections::BTreeMap<Table, StreamId>,
    pub headers: &'a std::collections::BTreeMap<String, String>,
    pub batch_size: u32,
    pub max_in_flight: u32,
    pub rate_limit: Option<u32>,
    pub enabled: bool,
    pub disabled_reason: Option<&'a str>,
    pub description: &'a str,
    pub previous: bool,
    pub filters: Option<&'a serde_json::Value>,
    pub fields: Option<&'a [String]>,
    pub managed_by: Option<subscription::ManagedBy>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Tables it covers that its consumer's allow-list no longer allows:
    /// their delivery waits (docs/consumers.md). Filled by GET only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_allowed: Vec<String>,
}

impl<'a> From<&'a Subscription> for View<'a> {
    fn from(s: &'a Subscription) -> View<'a> {
        View {
            id: &s.id,
            consumer: &s.consumer,
            url: &s.url,
            resources: &s.resources,
            ops: &s.ops,
            start: &s.start,
            headers: &s.headers,
            batch_size: s.batch_size,
            max_in_flight: s.max_in_flight,
            rate_limit: s.rate_limit,
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.as_deref(),
            description: &s.description,
            previous: s.previous,
            filters: s.filters.as_ref(),
            fields: s.fields.as_deref(),
            managed_by: s.managed_by,
            created_ms: s.created_ms,
            updated_ms: s.updated_ms,
            not_allowed: Vec::new(),
        }
    }
}

impl<'a> View<'a> {
    /// The view naming the tables `sub` covers that `allow` (its consumer's
    /// allow-list; none when the consumer is gone) does not allow.
    fn checked(sub: &'a Subscription, allow: Option<&Allow>, known: &[Table]) -> View<'a> {
        let mut v = View::from(sub);
        v.not_allowed = (sub.resources.of(known).iter())
            .filter(|t| !allow.is_some_and(|a| a.allows(t)))
            .map(ToString::to_string)
            .collect();
        v
    }
}

pub(super) fn known_tables(s: &ApiState) -> Vec<Table> {
    s.shared.tables()
}

/// Subscription `id` if `who` owns it; another consumer's answers 404, as
/// an id that does not exist.
pub(super) async fn load(s: &ApiState, who: &Principal, id: &str) -> ApiResult<Subscription> {
    s.shared
        .store
        .subscription(id)
        .await?
        .filter(|found| who.owns(found))
        .ok_or_else(|| Problem::not_found(format!("no subscription {id:?}")))
}

pub async fn create(
    State(s): State<ApiState>,
    who: Principal,
    JsonBody(req): JsonBody<CreateRequest>,
) -> ApiResult<Response> {
    let known = known_tables(&s);
    let consumer = super::consumers::owner(&s, &who, req.consumer.as_deref()).await?;
    let url = subscription::WebhookUrl::parse(&req.url)?;
    at_the_door(&s, &url).await?;
    let resources = super::consumers::coverage(&consumer, &req.resources, &known)?;
    let ops = subscription::parse_ops(&req.ops)?;
    subscription::validate_headers(&req.headers)?;
    let batch_size = req.batch_size.unwrap_or(1);
    subscription::validate_batch(batch_size)?;
    let max_in_flight = req.max_in_flight.unwrap_or(subscription::DEFAULT_IN_FLIGHT);
    subscription::validate_in_flight(max_in_flight)?;
    subscription::validate_rate(req.rate_limit)?;
    let description = req.description.unwrap_or_default();
    subscription::validate_description(&description)?;
    let tables = resources.of(&known);
    if req.previous == Some(true) {
        all_kept(&s, &tables)?;
    }
    let fields = crate::filter::subscription_fields(req.filters.as_ref(), req.fields.as_ref())?;
    subscription::validate_fields_alone(req.previous.unwrap_or(false), &fields)?;
    let oldest_kept = req.from_oldest_kept.unwrap_or(false);
    let (start, warnings) = start_points(&s, req.start.clone(), &tables, oldest_kept).await?;
    let at = now_ms();
    let subscription = Subscription {
        id: subscription::new_id(),
        url,
        resources,
        ops,
        start,
        headers: req.headers,
        batch_size,
        max_in_flight,
        rate_limit: req.rate_limit,
        enabled: req.enabled.unwrap_or(true),
        description,
        secret: subscription::SigningSecret::generate(),
        previous_secret: None,
        disabled_reason: None,
        created_ms: at,
        updated_ms: at,
        version: 0,
        previous: req.previous.unwrap_or(false),
        filters: req.filters,
        fields,
        managed_by: None,
        retry_requested_ms: None,
        consumer: consumer.name,
    };
    s.shared.store.put_subscription(&subscription).await?;
    tracing::info!(subscription = %subscription.id, url = %subscription.url.for_logs(), "subscription created");
    created(&subscription, warnings)
}

/// The SSRF guard at the door: a URL whose host is or resolves to an
/// address delivery refuses is a 422 naming `delivery.allowed_cidrs`,
/// rather than a subscription that fails on every send.
async fn at_the_door(s: &ApiState, url: &subscription::WebhookUrl) -> ApiResult<()> {
    s.sender
        .policy()
        .check_target(url.url())
        .await
        .map_err(|e| Problem::invalid("url", e))
}

/// 201 with the new subscription and, this once, its secret.
fn created(subscription: &Subscription, warnings: Vec<String>) -> ApiResult<Response> {
    let mut body = serde_json::to_value(View::from(subscription)).map_err(Problem::internal)?;
    body["secret"] = subscription.secret.as_str().into();
    if !warnings.is_empty() {
        body["warnings"] = warnings.into();
    }
    let location = format!("/v1/subscriptions/{}", subscription.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// `previous` needs the latest records of every table it covers.
fn all_kept(s: &ApiState, tables: &[Table]) -> ApiResult<()> {
    for t in tables {
        s.compat.kept(t)?;
    }
    Ok(())
}

/// Where each table starts, as `start` names it, and a warning per table
/// where it begins at the oldest event kept. A start the caller chose
/// (`beginning`, stamps) must be an honest position (positions.rs).
async fn start_points(
    s: &ApiState,
    spec: Option<super::requests::StartSpec>,
    tables: &[Table],
    oldest_kept: bool,
) -> ApiResult<(std::collections::BTreeMap<Table, StreamId>, Vec<String>)> {
    let mut now = HashMap::new();
    for t in tables {
        now.insert(t.clone(), s.shared.store.last_id(t).await?);
    }
    let chosen = match spec {
        Some(spec) => spec.parse("start", tables, true)?,
        None => subscription::Start::Now,
    };
    let start = subscription::resolve_start(&chosen, tables, &now);
    let mut warnings = Vec::new();
    if !matches!(chosen, subscription::Start::Now) {
        for (t, from) in &start {
            let field = format!("start.{t}");
            let check = super::positions::check_position(s, t, *from, &field, oldest_kept);
            warnings.extend(check.await?);
        }
    }
    Ok((start, warnings))
}

pub async fn list(State(s): State<ApiState>, who: Principal) -> ApiResult<Json<serde_json::Value>> {
    let all = s.shared.store.subscriptions().await?;
    let consumers = s.consumers.list().await?;
    let allow = |name: &str| consumers.iter().find(|c| c.name == name).map(|c| &c.allow);
    let known = known_tables(&s);
    let views: Vec<View> = (all.iter().filter(|x| who.owns(x)))
        .map(|x| View::checked(x, allow(&x.consumer), &known))
        .collect();
    Ok(Json(serde_json::json!({ "subscriptions": views })))
}

pub async fn get(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    let found = load(&s, &who, &id).await?;
    let allow = s.consumers.get(&found.consumer).await?.map(|c| c.allow);
    let view = View::checked(&found, allow.as_ref(), &known_tables(&s));
    Ok(Json(view).into_response())
}

pub async fn patch(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<PatchRequest>,
) -> ApiResult<Response> {
    let known = known_tables(&s);
    let owned = load(&s, &who, &id).await?;
    if let Some(r) = &req.resources {
        let consumer = super::consumers::owner(&s, &who, Some(&owned.consumer)).await?;
        super::consumers::coverage(&consumer, r, &known)?;
    }
    // Where newly covered tables start: their last ID, read up front so
    // the update itself is one checked write (retried on a conflict).
    let mut now = HashMap::new();
    if req.resources.is_some() {
        for t in &known {
            now.insert(t.clone(), s.shared.store.last_id(t).await?);
        }
    }
    if req.previous == Some(true) {
        let resources = match &req.resources {
            Some(r) => subscription::parse_resources(r, &known)?,
            None => owned.resources.clone(),
        };
        all_kept(&s, &resources.of(&known))?;
    }
    if let Some(url) = &req.url {
        at_the_door(&s, &subscription::WebhookUrl::parse(url)?).await?;
    }
    let mut before = None;
    let found = update_subscription(s.shared.store.as_ref(), &id, |found| {
        // Pausing and resuming is operations; the rest the file declares.
        if req.enabled.is_none()
            || req
                != (PatchRequest {
                    enabled: req.enabled,
                    ..Default::default()
                })
        {
            unmanaged(found)?;
        }
        before = Some((found.enabled, found.resources.of(&known)));
        apply_patch(found, &req, &now, &known)
    })
    .await?
    .ok_or_else(|| Problem::not_found(format!("no subscription {id:?}")))?;
    let before = before.expect("the update saw the subscription");
    let mut view = serde_json::to_value(View::from(&found)).map_err(Problem::internal)?;
    let warnings = resume_warnings(&s, &found, before, &known).await;
    if !warnings.is_empty() {
        view["warnings"] = warnings.into();
    }
    Ok(Json(view).into_response())
}

/// The PATCH body applied to the stored subscription, every field checked.
fn apply_patch(
    found: &mut Subscription,
    req: &PatchRequest,
    now: &HashMap<Table, StreamId>,
    known: &[Table],
) -> ApiResult<()> {
    if let Some(url) = &req.url {
        found.url = subscription::WebhookUrl::parse(url)?;
    }
    if let Some(resources) = &req.resources {
        let resources = subscription::parse_resources(resources, known)?;
        // Newly covered tables start now; kept ones keep their position.
        for t in resources.of(known) {
            let last = now.get(&t).copied().unwrap_or_default();
            found.start.entry(t).or_insert(last);
        }
        found.resources = resources;
    }
    if let Some(ops) = &req.ops {
        found.ops = subscription::parse_ops(ops)?;
    }
    if let Some(headers) = &req.headers {
        subscription::validate_headers(headers)?;
        found.headers = headers.clone();
    }
    if let Some(b) = req.batch_size {
        subscription::validate_batch(b)?;
        found.batch_size = b;
    }
    if let Some(n) = req.max_in_flight {
        subscription::validate_in_flight(n)?;
        found.max_in_flight = n;
    }
    if let Some(rate) = req.rate_limit {
        subscription::validate_rate(rate)?;
        found.rate_limit = rate;
    }
    if let Some(e) = req.enabled {
        found.enabled = e;
        if e {
            found.disabled_reason = None;
        }
    }
    if let Some(d) = &req.description {
        subscription::validate_description(d)?;
        found.description = d.clone();
    }
    if let Some(p) = req.previous {
        found.previous = p;
    }
    apply_selection(found, req)?;
    found.updated_ms = now_ms();
    Ok(())
}

/// The PATCH's `filters` and `fields` (`null` removes either).
fn apply_selection(found: &mut Subscription, req: &PatchRequest) -> ApiResult<()> {
    if let Some(filters) = &req.filters {
        crate::filter::subscription_fields(filters.as_ref(), None)?;
        found.filters = filters.clone();
    }
    if let Some(fields) = &req.fields {
        found.fields = crate::filter::subscription_fields(None, fields.as_ref())?;
    }
    Ok(subscription::validate_fields_alone(
        found.previous,
        &found.fields,
    )?)
}

/// When a PATCH enables a subscription or covers a table again, it held no
/// events back until now: names each table where retention removed events
/// past its position. Best effort: the change is saved whatever this finds.
async fn resume_warnings(
    s: &ApiState,
    sub: &Subscription,
    (was_enabled, was_covered): (bool, Vec<Table>),
    known: &[Table],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if !sub.enabled {
        return warnings;
    }
    for t in sub.resources.of(known) {
        if was_enabled && was_covered.contains(&t) {
            continue;
        }
        let store = s.shared.store.as_ref();
        let (Ok(through), Ok(p)) = (
            store.trimmed_through(&t).await,
            crate::store::position_or_start(store, sub, &t).await,
        ) else {
            continue;
        };
        if p != crate::events::StreamId::ZERO && p < through {
            tracing::warn!(subscription = %sub.id, table = %t, %through, "subscription resumes past events retention removed");
            warnings.push(format!(
                "{t}: store.retention removed the events up to {through} while this subscription \
                 did not hold them back; delivery resumes after them"
            ));
        }
    }
    warnings
}

/// Refuses to change a subscription the configuration file declares.
fn unmanaged(found: &Subscription) -> ApiResult<()> {
    match found.managed_by {
        None => Ok(()),
        Some(subscription::ManagedBy::Config) => Err(Problem::new(
            StatusCode::CONFLICT,
            "managed_by_config",
            format!(
                "subscription {:?} is declared in the configuration file ([[subscriptions]]); \
                 change or remove it there and restart the relay (PATCH may only set enabled)",
                found.id
            ),
        )),
    }
}

pub async fn delete(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    unmanaged(&load(&s, &who, &id).await?)?;
    if s.shared.store.delete_subscription(&id).await? {
        // Delivery state too; a worker still stopping cleans up after itself
        // (delivery::Supervisor), so nothing is left behind either way.
        s.shared
            .store
            .forget_subscription(&id, &known_tables(&s))
            .await?;
        tracing::info!(subscription = %id, "subscription deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no subscription {id:?}")))
    }
}

/// A new secret; the old one keeps being signed with for the grace period.
pub async fn rotate_secret(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<serde_json::Value>> {
    load(&s, &who, &id).await?;
    let until = now_ms() + s.secret_grace.as_millis() as u64;
    let found = update_subscription(s.shared.store.as_ref(), &id, |found| {
        unmanaged(found)?;
        let old = std::mem::replace(&mut found.secret, subscription::SigningSecret::generate());
        found.previous_secret = Some((old, until));
        found.updated_ms = now_ms();
        Ok::<_, Problem>(())
    })
    .await?
    .ok_or_else(|| Problem::not_found(format!("no subscription {id:?}")))?;
    tracing::info!(subscription = %id, "subscription secret rotated");
    Ok(Json(
        serde_json::json!({ "id": found.id, "secret": found.secret, "previous_secret_valid_until_ms": until }),
    ))
}

/// `GET /v1/subscriptions/{id}/secret`: the signing secret, for a receiver
/// set up after creation (the portal's "reveal"); and the previous one
/// while its grace after a rotation lasts.
pub async fn secret(
    State(s): State<ApiState>,
    who: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let found = load(&s, &who, &id).await?;
    let mut body = serde_json::json!({ "id": found.id, "secret": found.secret });
    if let Some((old, until)) = &found.previous_secret
        && *until > now_ms()
    {
        body["previous_secret"] = serde_json::json!(old);
        body["previous_secret_valid_until_ms"] = (*until).into();
    }
    tracing::info!(subscription = %id, "subscription secret revealed");
    Ok(Json(body))
}
