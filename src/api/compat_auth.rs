//! `POST /compat/{source}/api/integration/auth/`: the upstream's OAuth
//! client-credentials route (docs/upstream.md), so a client written for
//! the upstream's OAuth needs only a new base URL. The client id is the
//! name of a relay API token and the client secret the token itself; the
//! answer is a bearer the `/compat` routes accept for [`TTL_SECS`].
//!
//! A bearer is `srb.<expiry>.<name>.<mac>` (name and MAC in unpadded
//! base64url), the MAC an HMAC-SHA256 of the expiry and name keyed by the
//! token's digest: every instance with the same configuration verifies it
//! without shared state, and removing the token from the configuration
//! revokes its bearers. Neither the secret nor the bearer is ever logged.

use std::net::SocketAddr;

use axum::{
    Extension, Json,
    extract::{ConnectInfo, Form, State, rejection::FormRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use super::{
    ApiState,
    auth::ApiToken,
    extract::PathParams,
    problem::{ApiResult, Problem},
};

/// How long an issued bearer is accepted, in seconds: short, since it
/// cannot be revoked alone (only with its token).
pub const TTL_SECS: u64 = 900;

#[derive(Deserialize)]
pub struct TokenForm {
    client_id: String,
    client_secret: String,
}

pub async fn issue(
    State(s): State<ApiState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    PathParams(source): PathParams<String>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Json<Value>, Response> {
    // A client secret is an API token: guessing it is slowed like any login.
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    if let Some(refused) = s.tokens.refusal(peer) {
        return Err(refused);
    }
    issue_for(&s, peer, source, form).map_err(IntoResponse::into_response)
}

fn issue_for(
    s: &ApiState,
    peer: Option<std::net::IpAddr>,
    source: String,
    form: Result<Form<TokenForm>, FormRejection>,
) -> ApiResult<Json<Value>> {
    if !s.shared.tables().iter().any(|t| t.source == source) {
        return Err(Problem::not_found(format!(
            "{source:?} is not a configured source; see GET /v1/resources"
        )));
    }
    let Form(form) = form.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "send form fields client_id (an API token's name) and client_secret (the token): {e}"
            ),
        )
    })?;
    let found = s
        .tokens
        .list()
        .iter()
        .find(|t| t.name == form.client_id && t.is(&form.client_secret))
        .ok_or_else(|| {
            s.tokens.failed(peer);
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client_id must name a configured API token ([[api.tokens]] name) and \
                 client_secret be that token",
            )
        })?;
    let expiry = crate::events::now_ms() / 1000 + TTL_SECS;
    tracing::info!(client = %found.name, source = %source, "compat bearer issued");
    Ok(Json(json!({
        "access_token": bearer(found, expiry),
        "expires_in": TTL_SECS,
        "token_type": "Bearer",
    })))
}

fn mac(token: &ApiToken, expiry: u64) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.bearer_key())
        .expect("HMAC takes any key length");
    mac.update(format!("stamp-relay compat bearer\n{expiry}\n{}", token.name).as_bytes());
    mac
}

fn bearer(token: &ApiToken, expiry: u64) -> String {
    let tag = mac(token, expiry).finalize().into_bytes();
    format!(
        "srb.{expiry}.{}.{}",
        B64.encode(&token.name),
        B64.encode(tag)
    )
}

/// The token of `tokens` that `presented` is a bearer issued for, if it
/// has not expired at `now_secs`.
pub fn verify<'a>(tokens: &'a [ApiToken], presented: &str, now_secs: u64) -> Option<&'a ApiToken> {
    let mut parts = presented.split('.');
    let (Some("srb"), Some(expiry), Some(name), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let (Ok(expiry), Ok(name), Ok(tag)) =
        (expiry.parse::<u64>(), B64.decode(name), B64.decode(tag))
    else {
        return None;
    };
    if expiry <= now_secs {
        return None;
    }
    tokens
        .iter()
        .filter(|t| t.name.as_bytes() == name.as_slice())
        .find(|t| mac(t, expiry).verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scope;

    #[test]
    fn bearers_verify_until_they_expire_and_only_for_their_token() {
        let tokens = vec![ApiToken::new("painchek-client", Scope::Read, "rd")];
        let b = bearer(&tokens[0], 1000);
        assert!(verify(&tokens, &b, 999).is_some());
        assert!(verify(&tokens, &b, 1000).is_none(), "expired");
        let forged = b.replacen("srb.1000.", "srb.9999.", 1);
        assert!(verify(&tokens, &forged, 999).is_none(), "expiry moved");
        let rotated = vec![ApiToken::new("painchek-client", Scope::Read, "new")];
        assert!(verify(&rotated, &b, 999).is_none(), "the token changed");
        assert!(verify(&tokens, "rd", 0).is_none());
        assert!(verify(&tokens, "srb.1000.x.y.z", 0).is_none());
    }
}
