//! Bearer tokens from the configuration, with scopes `admin` (everything)
//! and `read` (resources, events, live stream). Tokens are compared through
//! their SHA-256 digests in constant time, and every configured token is
//! checked, so timing reveals neither a prefix nor which token matched.
//!
//! Basic credentials (the token as password) are accepted for reading
//! only, GET and HEAD. A browser that has logged in to the status page
//! sends them on its own with every request to this origin, also on a form
//! a hostile page posts here; a write therefore needs the Bearer header,
//! which no cross-site form can set. Reads stay open to Basic because their
//! answers cannot be read cross-site and change nothing.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::{problem::Problem, throttle::Failures};
use crate::config::Scope;

/// The configured tokens and the failed logins per client address.
pub struct Tokens {
    list: Vec<ApiToken>,
    failures: Failures,
}

impl Tokens {
    /// `max_failed_logins` per address and minute (`api.max_failed_logins`).
    pub fn new(list: Vec<ApiToken>, max_failed_logins: u32) -> Tokens {
        Tokens {
            list,
            failures: Failures::new(max_failed_logins),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn list(&self) -> &[ApiToken] {
        &self.list
    }

    /// The 429 for an address that failed to log in too often, if it has.
    pub fn refusal(&self, peer: Option<IpAddr>) -> Option<Response> {
        let now = tokio::time::Instant::now();
        let wait = peer.and_then(|ip| self.failures.refused_for(ip, now))?;
        Some(too_many_failures(self.failures.burst, wait))
    }

    /// Counts a failed login from `peer` (a wrong token or client secret).
    pub fn failed(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            self.failures.failed(ip, tokio::time::Instant::now());
        }
    }
}

pub struct ApiToken {
    pub name: String,
    pub scope: Scope,
    digest: [u8; 32],
}

impl ApiToken {
    pub fn new(name: &str, scope: Scope, secret: &str) -> ApiToken {
        ApiToken {
            name: name.to_string(),
            scope,
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }
}

impl ApiToken {
    /// Whether `secret` is this token, compared through digests in
    /// constant time.
    pub(super) fn is(&self, secret: &str) -> bool {
        ct_eq(&self.digest, &Sha256::digest(secret.as_bytes()).into())
    }

    /// The key bearers issued for this token are signed with
    /// (`compat_auth.rs`): its digest, so every instance with the same
    /// configuration verifies them and removing the token revokes them.
    pub(super) fn bearer_key(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// How a token came: only a Bearer token may authorize a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    Bearer,
    Basic,
}

/// The token of `Bearer <token>`, or the password of `Basic` credentials
/// (so a browser can open the status page with the token as password).
fn presented_token(header: &str) -> Option<(Presented, String)> {
    use base64::Engine;
    let (scheme, value) = header.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some((Presented::Bearer, value.trim().to_string())),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            Some((Presented::Basic, text.split_once(':')?.1.to_string()))
        }
        _ => None,
    }
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    ct_eq_bytes(a, b)
}

/// Constant-time equality of two byte strings (their lengths are not secret).
pub(super) fn ct_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a `Bearer` Authorization header (not Basic: a nudge writes).
pub(super) fn bearer_of(header: &str) -> Option<String> {
    presented_token(header)
        .filter(|(how, t)| *how == Presented::Bearer && !t.is_empty())
        .map(|(_, t)| t)
}

/// The scope of the presented token, or the problem to answer with.
/// `read_only` says whether the request is a GET or HEAD, the only ones
/// Basic credentials may authorize.
pub fn authorize(
    tokens: &[ApiToken],
    authorization: Option<&str>,
    needed: Scope,
    read_only: bool,
) -> Result<Scope, Problem> {
    let (how, presented) = authorization
        .and_then(presented_token)
        .filter(|(_, t)| !t.is_empty())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token> with a configured API token",
            )
        })?;
    if how == Presented::Basic && !read_only {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "bearer_required",
            "Basic credentials are accepted for reading only; \
             send Authorization: Bearer <token> to change anything",
        ));
    }
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        if ct_eq(&t.digest, &digest) {
            found = Some(t.scope);
        }
    }
    let scope = found.ok_or_else(|| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not valid",
        )
    })?;
    if needed == Scope::Admin && scope != Scope::Admin {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs a token with the admin scope",
        ));
    }
    Ok(scope)
}

/// Read scope for `/compat` routes: a configured token, or a bearer
/// issued by `POST /compat/{source}/api/integration/auth/`.
pub async fn require_compat(
    State(tokens): State<Arc<Tokens>>,
    req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token)
        .filter(|(how, _)| *how == Presented::Bearer);
    if let Some((_, b)) = bearer
        && super::compat_auth::verify(&tokens.list, &b, crate::events::now_ms() / 1000)
    {
        return next.run(req).await;
    }
    require(&tokens, Scope::Read, req, next).await
}

async fn require(tokens: &Tokens, needed: Scope, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let now = tokio::time::Instant::now();
    if let Some(wait) = peer.and_then(|ip| tokens.failures.refused_for(ip, now)) {
        return too_many_failures(tokens.failures.burst, wait);
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    match authorize(&tokens.list, auth, needed, read_only) {
        Ok(_) => next.run(req).await,
        Err(p) => {
            if let Some(ip) = peer.filter(|_| p.status == StatusCode::UNAUTHORIZED) {
                tokens.failures.failed(ip, now);
            }
            p.into_response()
        }
    }
}

fn too_many_failures(burst: u32, wait: std::time::Duration) -> Response {
    let secs = wait.as_secs().max(1);
    let mut r = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failed_logins",
        format!(
            "{burst} requests from this address had no valid token within {} s \
             (api.max_failed_logins); try again in {secs} s with a configured API token",
            super::throttle::WINDOW.as_secs()
        ),
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

pub async fn require_read(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    require(&tokens, Scope::Read, req, next).await
}

pub async fn require_admin(
    State(tokens): State<Arc<Tokens>>,
    req: Request,
    next: Next,
) -> Response {
    require(&tokens, Scope::Admin, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_tokens() {
        let tokens = vec![
            ApiToken::new("ops", Scope::Admin, "adm"),
            ApiToken::new("dash", Scope::Read, "rd"),
        ];
        assert_eq!(
            authorize(&tokens, Some("Bearer adm"), Scope::Admin, true).unwrap(),
            Scope::Admin
        );
        assert_eq!(
            authorize(&tokens, Some("Bearer rd"), Scope::Read, true).unwrap(),
            Scope::Read
        );
        assert_eq!(
            authorize(&tokens, Some("Bearer rd"), Scope::Admin, true)
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            authorize(&tokens, Some("Bearer nope"), Scope::Read, true)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            authorize(&tokens, None, Scope::Read, true)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            authorize(&tokens, Some("Basic adm"), Scope::Read, true)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            authorize(&[], Some("Bearer adm"), Scope::Read, true)
                .unwrap_err()
                .status,
            401
        );
        use base64::Engine;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("x:adm")
        );
        assert_eq!(
            authorize(&tokens, Some(&basic), Scope::Admin, true).unwrap(),
            Scope::Admin
        );
        let refused = authorize(&tokens, Some(&basic), Scope::Admin, false).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (401, "bearer_required")
        );
        assert_eq!(
            authorize(&tokens, Some("Bearer adm"), Scope::Admin, false).unwrap(),
            Scope::Admin
        );
    }
}
