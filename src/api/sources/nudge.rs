//! `POST /v1/sources/{name}/nudge`: poll a source's tables now rather than
//! at their due time. The poll walks the delta as usual; the request's body
//! is never read. Allowed to an admin token, or to the source's own nudge
//! token (issued when the source is created, and again by
//! `POST /v1/sources/{name}/nudge-token`; stored as its SHA-256 only), so
//! an upstream's webhook or a cron can nudge one source and nothing else.
//! Nudges of one source closer than [`GAP`] coalesce into one.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::super::{
    ApiState,
    auth::{self, bearer_of},
    extract::PathParams,
    problem::{ApiResult, Problem},
};
use crate::{config::Scope, sources::sync::NUDGES};

/// The document kind holding each source's nudge token digest.
pub const TOKENS: &str = "nudge-tokens";

/// Nudges of one source closer than this are answered as coalesced.
pub const GAP: Duration = Duration::from_secs(1);

/// When each source was last nudged through this instance.
#[derive(Default)]
pub struct Gate(Mutex<HashMap<String, Instant>>);

impl Gate {
    /// Whether a nudge of `name` now is the first within [`GAP`].
    fn pass(&self, name: &str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(name) {
            Some(at) if now.duration_since(*at) < GAP => false,
            _ => {
                last.insert(name.to_string(), now);
                true
            }
        }
    }
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new nudge token for `name`, replacing any other; answered once.
pub(super) async fn issue(s: &ApiState, name: &str) -> ApiResult<String> {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "nudge_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let doc = json!({ "sha256": digest(&token) }).to_string();
    let store = &s.shared.store;
    loop {
        let v = store.document(TOKENS, name).await?.map_or(0, |d| d.version);
        if store.put_document(TOKENS, name, &doc, v).await?.is_some() {
            return Ok(token);
        }
    }
}

/// Removes the nudge token and nudge marks of a deleted source.
pub(super) async fn forget(s: &ApiState, name: &str) -> ApiResult<()> {
    s.shared.store.delete_document(TOKENS, name).await?;
    s.shared.store.delete_document(NUDGES, name).await?;
    Ok(())
}

/// `POST /v1/sources/{name}/nudge-token` (admin): a new nudge token.
pub async fn rotate(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if s.shared.topology.source(&name).is_none() {
        return Err(Problem::not_found(format!("no source {name:?}")));
    }
    let token = issue(&s, &name).await?;
    tracing::info!(source = %name, "nudge token issued");
    Ok(Json(json!({ "source": name, "nudge_token": token })))
}

/// Passes an admin token or `name`'s nudge token; otherwise the problem
/// to answer: 403 for another configured token (a read token), else 401.
async fn authorized(s: &ApiState, name: &str, authorization: Option<&str>) -> ApiResult<()> {
    let refused = match auth::authorize(s.tokens.list(), authorization, Scope::Admin, false) {
        Ok(_) => return Ok(()),
        Err(p) => p,
    };
    if let Some(presented) = authorization.and_then(bearer_of)
        && let Some(doc) = s.shared.store.document(TOKENS, name).await?
    {
        let stored: serde_json::Value =
            serde_json::from_str(&doc.json).map_err(Problem::internal)?;
        let want = stored["sha256"].as_str().unwrap_or_default().as_bytes();
        if auth::ct_eq_bytes(want, digest(&presented).as_bytes()) {
            return Ok(());
        }
    }
    if refused.status == StatusCode::FORBIDDEN {
        return Err(refused);
    }
    Err(Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <token> with an admin token or this source's nudge token",
    ))
}

pub async fn nudge(
    State(s): State<ApiState>,
    PathParams(name): PathParams<String>,
    req: Request,
) -> ApiResult<Response> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(refused) = s.tokens.refusal(peer) {
        return Ok(refused);
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(p) = authorized(&s, &name, authorization).await {
        if p.status == StatusCode::UNAUTHORIZED {
            s.tokens.failed(peer);
        }
        return Err(p);
    }
    let Some(source) = s.shared.topology.source(&name) else {
        return Err(Problem::not_found(format!("no source {name:?}")));
    };
    let tables = &source.config.settings.resources;
    if !s.source_admin.nudges.pass(&name) {
        let body = json!({ "source": name, "resources": tables, "coalesced": true });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let _ = s.shared.topology.nudge(&name);
    // Whichever instance polls the source sees the mark within a second.
    let store = &s.shared.store;
    let v = store
        .document(NUDGES, &name)
        .await?
        .map_or(0, |d| d.version);
    let mark = json!({ "at_ms": crate::events::now_ms() }).to_string();
    store.put_document(NUDGES, &name, &mark, v).await?;
    tracing::info!(source = %name, "source nudged");
    let body = json!({ "source": name, "resources": tables, "coalesced": false });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
