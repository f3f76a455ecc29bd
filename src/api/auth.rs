//! Who is calling ([`Principal`], `principal.rs`), from the presented
//! credential: a bearer token of the configuration with scope `admin`
//! (everything), `read` (tables, possibly limited) or `consumer`; a token
//! issued to a consumer (`ct.…`); or a portal link (`pl.…`)
//! (src/consumer/tokens.rs). Configured tokens are compared through their
//! SHA-256 digests in constant time, and every configured token is
//! checked, so timing reveals neither a prefix nor which token matched.
//! Each route group needs a [`Need`]; the principal rides on the request.
//!
//! Basic credentials (the token as password) are accepted for reading
//! only, GET and HEAD. A browser that has logged in to the status page
//! sends them on its own with every request to this origin, also on a form
//! a hostile page posts here; a write therefore needs the Bearer header,
//! which no cross-site form can set. Reads stay open to Basic because their
//! answers cannot be read cross-site and change nothing.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::{
    ApiState,
    principal::{Need, Principal, Via},
    problem::Problem,
    throttle::Failures,
};
use crate::{
    config::Scope,
    consumer::{
        Allow,
        tokens::{parse_link, token_consumer, token_matches},
    },
};

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
    /// What a read token may see (everything unless limited).
    pub allow: Allow,
    /// The consumer a token of scope `consumer` acts as.
    pub consumer: Option<String>,
    digest: [u8; 32],
}

impl ApiToken {
    pub fn new(name: &str, scope: Scope, secret: &str) -> ApiToken {
        ApiToken {
            name: name.to_string(),
            scope,
            allow: Allow::everything(),
            consumer: None,
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// The token of an `[[api.tokens]]` entry, with its limits.
    pub fn from_config(c: &crate::config::TokenConfig, secret: &str) -> ApiToken {
        ApiToken {
            allow: Allow::limited(c.sources.as_deref(), c.resources.as_deref()),
            consumer: c.consumer.clone(),
            ..ApiToken::new(&c.name, c.scope, secret)
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

fn unauthorized(detail: &'static str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

/// The presented credential, or the problem to answer with. `read_only`
/// says whether the request is a GET or HEAD, the only ones Basic
/// credentials may authorize.
fn presented(authorization: Option<&str>, read_only: bool) -> Result<String, Problem> {
    let (how, presented) = authorization
        .and_then(presented_token)
        .filter(|(_, t)| !t.is_empty())
        .ok_or_else(|| {
            unauthorized("send Authorization: Bearer <token> with a configured API token")
        })?;
    if how == Presented::Basic && !read_only {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "bearer_required",
            "Basic credentials are accepted for reading only; \
             send Authorization: Bearer <token> to change anything",
        ));
    }
    Ok(presented)
}

/// The configured token `presented` is, every token checked.
fn find<'a>(tokens: &'a [ApiToken], presented: &str) -> Option<&'a ApiToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        if ct_eq(&t.digest, &digest) {
            found = Some(t);
        }
    }
    found
}

/// The scope of the presented configured token, or the problem to answer
/// with (the nudge route's check, and the tests').
pub fn authorize(
    tokens: &[ApiToken],
    authorization: Option<&str>,
    needed: Scope,
    read_only: bool,
) -> Result<Scope, Problem> {
    let presented = presented(authorization, read_only)?;
    let scope = find(tokens, &presented)
        .map(|t| t.scope)
        .ok_or_else(|| unauthorized("the bearer token is not valid"))?;
    if needed == Scope::Admin && scope != Scope::Admin {
        return Err(forbidden(Need::Admin));
    }
    Ok(scope)
}

fn forbidden(need: Need) -> Problem {
    let what = match need {
        Need::Admin => "a token with the admin scope",
        Need::Owner => "an admin token or a consumer's token",
        Need::Operator => "an admin token or a read token without limits",
        Need::Read => "a valid token",
    };
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this route needs {what}"),
    )
}

/// The principal of a configured token (a consumer token reads its
/// consumer, so changes to the consumer apply at once).
async fn of_token(s: &ApiState, t: &ApiToken) -> Result<Principal, Problem> {
    match (t.scope, &t.consumer) {
        (Scope::Admin, _) => Ok(Principal::Admin {
            token: t.name.clone(),
        }),
        (Scope::Consumer, Some(name)) => consumer(s, name, Via::Token).await,
        _ => Ok(Principal::Read {
            token: t.name.clone(),
            allow: t.allow.clone(),
        }),
    }
}

async fn consumer(s: &ApiState, name: &str, via: Via) -> Result<Principal, Problem> {
    let c = s
        .consumers
        .get(name)
        .await?
        .ok_or_else(|| unauthorized("the bearer token is not valid"))?;
    Ok(Principal::Consumer {
        name: c.name,
        allow: c.allow,
        via,
    })
}

/// Who `presented` is: a configured token, a consumer's issued token or a
/// portal link; 401 when none.
pub async fn resolve(s: &ApiState, presented: &str) -> Result<Principal, Problem> {
    if let Some(t) = find(s.tokens.list(), presented) {
        return of_token(s, t).await;
    }
    let invalid = || unauthorized("the bearer token is not valid");
    if let Some(name) = token_consumer(presented) {
        let c = s.consumers.get(name).await?.ok_or_else(invalid)?;
        if token_matches(&c.tokens, presented) {
            return consumer(s, name, Via::Token).await;
        }
    } else if let Some(link) = parse_link(presented) {
        let c = s.consumers.get(link.consumer).await?.ok_or_else(invalid)?;
        let key = s.consumers.link_key().await?;
        let now = crate::events::now_ms() / 1000;
        if key.verify(&link, c.link_generation, now) {
            let via = Via::PortalLink {
                expires_at: link.expiry,
            };
            return consumer(s, &c.name, via).await;
        }
        return Err(unauthorized(
            "the portal link is not valid: it expired or was revoked; ask for a new one",
        ));
    }
    Err(invalid())
}

/// Read scope for `/compat` routes: a configured token, or a bearer
/// issued by `POST /compat/{source}/api/integration/auth/` for one.
pub async fn require_compat(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token)
        .filter(|(how, _)| *how == Presented::Bearer);
    if let Some((_, b)) = bearer
        && let Some(t) =
            super::compat_auth::verify(s.tokens.list(), &b, crate::events::now_ms() / 1000)
    {
        return match of_token(&s, t).await {
            Ok(p) => {
                req.extensions_mut().insert(p);
                next.run(req).await
            }
            Err(p) => p.into_response(),
        };
    }
    require(&s, Need::Read, req, next).await
}

async fn require(s: &ApiState, need: Need, mut req: Request, next: Next) -> Response {
    let tokens = &s.tokens;
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
    let found = match presented(auth, read_only) {
        Ok(p) => resolve(s, &p).await.map(|who| (who, p)),
        Err(p) => Err(p),
    };
    match found {
        Ok((p, credential)) if p.may(need) => {
            req.extensions_mut().insert(p);
            req.extensions_mut()
                .insert(super::principal::Credential(credential.into()));
            next.run(req).await
        }
        Ok(_) => forbidden(need).into_response(),
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

pub async fn require_read(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    require(&s, Need::Read, req, next).await
}

pub async fn require_owner(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    require(&s, Need::Owner, req, next).await
}

pub async fn require_operator(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    require(&s, Need::Operator, req, next).await
}

pub async fn require_admin(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    require(&s, Need::Admin, req, next).await
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
