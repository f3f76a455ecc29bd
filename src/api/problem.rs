//! RFC 9457 problem answers, and a JSON body extractor whose every
//! rejection is a problem naming the field.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable machine-readable code; the `type` URI ends with it.
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
}

pub type ApiResult<T> = Result<T, Problem>;

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem {
            field: Some(field.into()),
            ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
        }
    }

    pub fn not_found(what: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// A cursor before what retention removed: following it would skip
    /// events without saying so.
    pub fn trimmed(
        field: impl Into<String>,
        t: &crate::store::Target,
        after: crate::events::StreamId,
        through: crate::events::StreamId,
    ) -> Problem {
        let field = field.into();
        Problem {
            detail: format!(
                "{field} {after} is older than what {t} keeps: store.retention removed the events up to \
                 {through}; start from {through}, or from 0 for the oldest event kept"
            ),
            field: Some(field),
            ..Problem::new(StatusCode::GONE, "events_trimmed", "")
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "request failed");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store did not answer; try again",
        )
    }
}

impl From<crate::subscription::Invalid> for Problem {
    fn from(e: crate::subscription::Invalid) -> Problem {
        Problem::invalid(e.field, e.message)
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        Problem::internal(e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("urn:stamp-relay:problem:{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Basic first: browsers answer only a challenge they know,
            // which lets a person open the status page with the token.
            let h = resp.headers_mut();
            h.append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"stamp-relay\""),
            );
            h.append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// `Json<T>` with problem answers: 415 without a JSON content type, 413
/// past [`BODY_LIMIT`], 400 for malformed JSON, 422 naming the field for a
/// wrong type, missing or unknown field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
        if !is_json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {BODY_LIMIT} bytes"),
            )
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(JsonBody(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_json",
                        format!("the body is not valid JSON: {inner}"),
                    ))
                } else {
                    let field = if path == "." {
                        unknown_field(&inner.to_string()).unwrap_or(path)
                    } else {
                        path
                    };
                    Err(Problem::invalid(field, inner.to_string()))
                }
            }
        }
    }
}

/// serde names an unknown or missing field only in its message.
fn unknown_field(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    Some(msg[start..end].to_string())
}
