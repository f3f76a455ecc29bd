//! Authentication as PainChek does it (OAuth client credentials posted as a
//! form, then `Authorization: Bearer`), plus HTTP basic, a static bearer
//! token, and none.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::answer::error_response;
use crate::{SimAuth, Simulator, lock};

#[derive(Deserialize)]
pub(super) struct TokenForm {
    client_id: String,
    client_secret: String,
}

/// `POST /api/integration/auth/`: a bearer token for valid client credentials.
pub(super) async fn issue_token(
    State(sim): State<Arc<Simulator>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let SimAuth::OAuth {
        client_id,
        client_secret,
        token_ttl,
    } = &sim.config.auth
    else {
        return error_response(StatusCode::NOT_FOUND, None, "Not found.", json!([]));
    };
    let Form(form) = match form {
        Ok(form) => form,
        Err(rejection) => {
            let detail = format!("expected form fields client_id and client_secret: {rejection}");
            return error_response(
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                &detail,
                json!([]),
            );
        }
    };
    if form.client_id != *client_id || form.client_secret != *client_secret {
        let detail = "Invalid client credentials.";
        return error_response(
            StatusCode::UNAUTHORIZED,
            Some("invalid_client"),
            detail,
            json!([]),
        );
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let now = Instant::now();
    {
        let mut tokens = lock(&sim.tokens);
        tokens.retain(|_, expiry| *expiry > now);
        tokens.insert(token.clone(), now + *token_ttl);
    }
    sim.tokens_issued
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = json!({
        "access_token": token,
        "expires_in": expires_in(*token_ttl),
        "token_type": "Bearer",
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `expires_in` for a token lifetime: whole seconds, rounded up, so a
/// sub-second lifetime is not announced as already expired (`0`) and a
/// client keeps its token until it meets the 401.
fn expires_in(ttl: std::time::Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// A refused list request: the 401 to answer, with its challenge.
#[derive(Debug)]
pub(super) struct Unauthorized {
    scheme: &'static str,
    detail: &'static str,
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            Some("not_authenticated"),
            self.detail,
            json!([]),
        );
        let challenge = format!("{} realm=\"api\"", self.scheme);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            challenge
                .parse()
                .expect("a fixed ASCII challenge is a valid header"),
        );
        response
    }
}

impl Simulator {
    /// Checks a list request's `Authorization` header against the configured scheme.
    pub(super) fn authenticate(&self, headers: &HeaderMap) -> Result<(), Unauthorized> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let refuse = |scheme, detail| Err(Unauthorized { scheme, detail });
        match (&self.config.auth, given) {
            (SimAuth::None, _) => Ok(()),
            (SimAuth::Basic { .. }, None) => {
                refuse("Basic", "Authentication credentials were not provided.")
            }
            (_, None) => refuse("Bearer", "Authentication credentials were not provided."),
            (SimAuth::OAuth { .. }, Some(given)) => {
                let token = given.strip_prefix("Bearer ").unwrap_or_default();
                match lock(&self.tokens).get(token) {
                    Some(expiry) if *expiry > Instant::now() => Ok(()),
                    Some(_) => refuse("Bearer", "Token has expired."),
                    None => refuse("Bearer", "Invalid token."),
                }
            }
            (SimAuth::Bearer { token }, Some(given)) => match given.strip_prefix("Bearer ") {
                Some(given) if given == token => Ok(()),
                _ => refuse("Bearer", "Invalid token."),
            },
            (SimAuth::Basic { username, password }, Some(given)) => {
                let expected = format!(
                    "Basic {}",
                    base64(format!("{username}:{password}").as_bytes())
                );
                if given == expected {
                    Ok(())
                } else {
                    refuse("Basic", "Invalid username/password.")
                }
            }
        }
    }
}

/// Standard base64 with padding; enough to build the expected basic header
/// without another dependency.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn expires_in_rounds_up_to_whole_seconds() {
        use std::time::Duration;
        assert_eq!(super::expires_in(Duration::ZERO), 0);
        assert_eq!(super::expires_in(Duration::from_millis(400)), 1);
        assert_eq!(super::expires_in(Duration::from_secs(3)), 3);
        assert_eq!(super::expires_in(Duration::from_millis(3001)), 4);
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
