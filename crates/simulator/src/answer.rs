//! The upstream's error answers, in its own shape, shared by the list,
//! auth and admin routes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A JSON error in the upstream's shape: `{"code"?, "detail", "errors"}`.
pub(crate) fn error_response(
    status: StatusCode,
    code: Option<&str>,
    detail: &str,
    errors: Value,
) -> Response {
    let mut body = json!({ "detail": detail, "errors": errors });
    if let Some(code) = code {
        body["code"] = code.into();
    }
    (status, axum::Json(body)).into_response()
}

pub(crate) async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, None, "Not found.", json!([]))
}
