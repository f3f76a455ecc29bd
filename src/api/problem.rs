//! RFC 9457 problem answers. Handlers and extractors (`extract.rs`) answer
//! with a [`Problem`]; [`problem_for_bare_errors`] turns any other error
//! answer (a layer's timeout, a rejection from outside the router) into one,
//! so every error the API gives is `application/problem+json`.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
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
    /// Further members of the problem (RFC 9457 extensions).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub type ApiResult<T> = Result<T, Problem>;

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            field: None,
            extra: Default::default(),
        }
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem {
            field: Some(field.into()),
            ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
        }
    }

    /// 400 for a position past [`crate::events::MAX_STAMP`]: never read
    /// wrapped around, never sent to the store.
    pub fn out_of_range(field: &str, value: &str) -> Problem {
        let detail = format!(
            "{field} {value:?} is above {}, the largest position",
            crate::events::MAX_STAMP
        );
        Problem::bad_position(field, detail)
    }

    /// 400 `out_of_range` naming the parameter.
    pub fn bad_position(field: &str, detail: String) -> Problem {
        Problem {
            field: Some(field.into()),
            ..Problem::new(StatusCode::BAD_REQUEST, "out_of_range", detail)
        }
    }

    /// Whether `v` is digits (a position or number) too large for
    /// [`crate::events::MAX_STAMP`], in either part of `<stamp>-<seq>`.
    pub fn is_out_of_range(v: &str) -> bool {
        let big = |p: &str| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u64>()
                    .ok()
                    .is_none_or(|n| n > crate::events::MAX_STAMP)
        };
        let (a, b) = v.split_once('-').unwrap_or((v, "0"));
        big(a) || big(b)
    }

    pub fn not_found(what: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// A cursor before what retention removed: following it would skip
    /// events without saying so. Names the snapshot to rebuild from when
    /// the table keeps its records (`keeps_records`).
    pub fn trimmed(
        field: impl Into<String>,
        t: &crate::store::Table,
        after: crate::events::StreamId,
        through: crate::events::StreamId,
        keeps_records: bool,
    ) -> Problem {
        let field = field.into();
        let snapshot = crate::api::compat::snapshot_path(t);
        let rebuild = if keeps_records {
            format!(
                "rebuild from the snapshot {snapshot} (all pages) and resume after the stream ID \
                 its first page names in Stamp-Relay-Resume-After (docs/resync.md)"
            )
        } else {
            format!(
                "reload the table from the upstream (source {:?} sets keep_records = false, so \
                 the relay has no snapshot) and resume after {through}",
                t.source
            )
        };
        let extra = if keeps_records {
            [("snapshot".to_string(), json!(snapshot))]
                .into_iter()
                .collect()
        } else {
            Default::default()
        };
        let what = if after == crate::events::StreamId::ZERO {
            format!("{field} 0 (the beginning) asks for every event of {t}, but")
        } else {
            format!("{field} {after} is older than what {t} keeps:")
        };
        Problem {
            detail: format!(
                "{what} store.retention removed the events up to {through}; to see every change, \
                 {rebuild}; or start from {through}, or from 0 with from_oldest_kept=true for the \
                 oldest event kept"
            ),
            field: Some(field),
            extra,
            ..Problem::new(StatusCode::GONE, "events_trimmed", "")
        }
    }

    /// A position past the table's last event (`top`): following it would
    /// pass over the events stamped up to it when they arrive.
    pub fn ahead(
        field: &str,
        t: &crate::store::Table,
        after: crate::events::StreamId,
        top: crate::events::StreamId,
    ) -> Problem {
        Problem {
            detail: format!(
                "{field} {after} is past the last event of {t}, {top}: events stamped up to \
                 {after} would be skipped when they arrive; start from {top} or earlier (each \
                 table has its own stamps; see GET /v1/resources for its last_id)"
            ),
            field: Some(field.into()),
            extra: [("top".to_string(), json!(top.to_string()))]
                .into_iter()
                .collect(),
            ..Problem::new(StatusCode::CONFLICT, "position_ahead", "")
        }
    }

    /// A fault of the relay's own (a value that does not serialise, stored
    /// data that does not read): 500 `internal`, the reason in the log only.
    pub fn internal(e: impl std::fmt::Display) -> Problem {
        tracing::error!(error = %e, "request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the relay could not answer; its log names the reason",
        )
    }

    /// The store did not answer: 503 `store_unavailable`, worth a retry.
    pub fn unavailable(e: impl std::fmt::Display) -> Problem {
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

/// A store error by its kind: an unreachable store is 503
/// `store_unavailable`; a refusal (a write that lost to others) is 409
/// `update_conflict`; stored data that does not read is 500 `internal`.
/// The store's own words go to the log only (they may name its address).
impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        use crate::store::StoreError;
        match e {
            StoreError::Unavailable(_) => Problem::unavailable(e),
            StoreError::Refused { .. } => {
                tracing::warn!(error = %e, "request refused by the store");
                Problem::new(
                    StatusCode::CONFLICT,
                    "update_conflict",
                    "other writes changed the same data meanwhile; try again",
                )
            }
            StoreError::Corrupt(_) => Problem::internal(e),
        }
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
        for (k, v) in self.extra {
            body[k] = v;
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

/// The problem for an error answer that is not one already: the status
/// stays, the body says what it means. A no-op for every other answer.
pub async fn problem_for_bare_errors(r: Response) -> Response {
    let is_problem = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    let status = r.status();
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let (code, detail) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body_too_large",
            format!("the body is larger than {BODY_LIMIT} bytes"),
        ),
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => (
            "timeout",
            "the request took longer than api.request_timeout; try again".into(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method; see /openapi.yaml".into(),
        ),
        StatusCode::NOT_FOUND => ("route_not_found", "no such route; see /openapi.yaml".into()),
        s if s.is_client_error() => ("bad_request", "the request is not valid".into()),
        _ => ("internal", "the server failed to answer; try again".into()),
    };
    let mut out = Problem::new(status, code, detail).into_response();
    // Keep what the original answer told the connection (e.g. close after 413).
    if let Some(c) = r.headers().get(header::CONNECTION) {
        out.headers_mut().insert(header::CONNECTION, c.clone());
    }
    out
}

impl From<crate::filter::FilterError> for Problem {
    /// 422 naming the parameter in `field` and the fault's path in `detail`.
    fn from(e: crate::filter::FilterError) -> Problem {
        let end = e.path.find(['[', '.']).unwrap_or(e.path.len());
        Problem::invalid(&e.path[..end], e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn converted(r: Response) -> (StatusCode, serde_json::Value, Option<String>) {
        let r = problem_for_bare_errors(r).await;
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let connection = r
            .headers()
            .get(header::CONNECTION)
            .map(|v| v.to_str().unwrap().to_string());
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), BODY_LIMIT)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap(), connection)
    }

    #[tokio::test]
    async fn bare_error_answers_become_problems() {
        let too_large = (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            "length limit exceeded",
        )
            .into_response();
        let (status, body, connection) = converted(too_large).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
        );
        assert_eq!(connection.as_deref(), Some("close"));
        let (status, body, _) = converted(StatusCode::REQUEST_TIMEOUT.into_response()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::REQUEST_TIMEOUT, Some("timeout"))
        );
        let (_, body, _) = converted(StatusCode::IM_A_TEAPOT.into_response()).await;
        assert_eq!(body["status"], 418);
        // A problem already, or no error: untouched.
        let p = Problem::not_found("no such thing").into_response();
        let (_, body, _) = converted(p).await;
        assert_eq!(body["detail"], "no such thing");
        let ok = problem_for_bare_errors("fine".into_response()).await;
        assert_eq!(
            ok.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn filter_faults_become_422_naming_the_parameter() {
        let names = crate::config::FieldNames::default();
        let e = crate::filter::from_query(Some(r#"[{"regex":{}}]"#), None, &names).unwrap_err();
        let p: Problem = e.into();
        assert_eq!(
            (p.status.as_u16(), p.field.as_deref()),
            (422, Some("filter"))
        );
        assert!(
            p.detail
                .starts_with(r#"filter[0]: unknown dialect "regex""#),
            "{}",
            p.detail
        );
        let e = crate::filter::from_query(None, Some("a,,b"), &names).unwrap_err();
        let p: Problem = e.into();
        assert_eq!(p.field.as_deref(), Some("fields"));
    }
}
