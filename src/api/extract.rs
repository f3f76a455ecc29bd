//! Request extractors whose every rejection is a [`Problem`]: JSON bodies
//! (naming the bad field), path and query parameters.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::problem::{BODY_LIMIT, Problem};

/// Whether a `Content-Type` is `application/json` or `application/<x>+json`,
/// parameters aside. The media type is parsed, not searched: `text/plain;
/// a=+json` is a form a web page may post cross-site without a preflight,
/// and must not pass for JSON.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application")
        && token(&subtype)
        && (subtype == "json" || (subtype.len() > 5 && subtype.ends_with("+json")))
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
            .is_some_and(is_json_media_type);
        if !is_json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json (or application/<name>+json)",
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

/// `Path<T>` answering 400 with a problem (bad percent-encoding, a value
/// of the wrong type).
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))
    }
}

/// `Query<T>` answering 400 with a problem (a repeated or malformed field).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type as json;

    #[test]
    fn only_json_media_types_pass() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
            "application/cloudevents+json ; charset=utf-8",
        ] {
            assert!(json(ok), "{ok} is JSON");
        }
        for refused in [
            "text/plain",
            "text/plain;a=+json",
            "text/plain; charset=application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/+json",
            "application/jsonp",
            "application/json+xml",
            "text/json",
            "application/ json",
            "",
        ] {
            assert!(!json(refused), "{refused:?} is not JSON");
        }
    }
}
