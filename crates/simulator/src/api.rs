//! The upstream contract the relay polls: `GET /api/{table}/?sync=N&page=K&page_size=P`
//! in a Django REST Framework envelope, with the faults of the moment applied.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::answer::{error_response, not_found};
use crate::faults::{Draw, Failure, HANG};
use crate::{Change, Kind, Op, RequestLog, SimConfig, Simulator, auth, lock};

pub(super) fn routes() -> Router<Arc<Simulator>> {
    Router::new()
        .route("/api/integration/auth/", post(auth::issue_token))
        .route("/api/integration/auth", post(auth::issue_token))
        .route("/api/{table}/", get(list))
        .route("/api/{table}", get(list))
}

/// The query of a list request, parsed and with the page size capped.
#[derive(Debug, PartialEq)]
struct ListParams {
    sync: u64,
    page: i64,
    page_size: usize,
}

/// Parses `sync`, `page` and `page_size`; the error lists each bad one.
fn parse_params(pairs: &[(String, String)], config: &SimConfig) -> Result<ListParams, Vec<Value>> {
    let mut errors = Vec::new();
    let mut field = |name: &str| -> Option<i64> {
        let (_, value) = pairs.iter().rev().find(|(k, _)| k == name)?;
        let parsed = value.parse::<i64>().ok();
        let valid = match name {
            "page" => parsed.is_some(),
            "sync" => parsed.is_some_and(|n| n >= 0),
            _ => parsed.is_some_and(|n| n >= 1),
        };
        if !valid {
            let detail = match name {
                "page" => format!("page must be an integer, got '{value}'"),
                "sync" => format!("sync must be a non-negative integer, got '{value}'"),
                _ => format!("{name} must be a positive integer, got '{value}'"),
            };
            errors.push(json!({ "field": name, "detail": detail }));
        }
        parsed
    };
    let sync = field("sync").unwrap_or(0);
    let page = field("page").unwrap_or(1);
    let page_size = field("page_size").map_or(config.default_page_size, |n| n as usize);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ListParams {
        sync: sync as u64,
        page,
        page_size: page_size.min(config.max_page_size).max(1),
    })
}

/// The DRF envelope around already-encoded records; `base` is the listing
/// URL without its query.
fn envelope(base: &str, params: &ListParams, count: usize, results: &[&str]) -> String {
    let link = |page: i64| {
        let url = format!(
            "{base}?sync={}&page={page}&page_size={}",
            params.sync, params.page_size
        );
        Value::from(url).to_string()
    };
    let more = (params.page as usize) * params.page_size < count;
    let next = if more {
        link(params.page + 1)
    } else {
        "null".to_owned()
    };
    let previous = if params.page > 1 {
        link(params.page - 1)
    } else {
        "null".to_owned()
    };
    let size: usize = results.iter().map(|r| r.len() + 1).sum();
    let mut body = String::with_capacity(size + 200);
    body.push_str(&format!(
        "{{\"count\":{count},\"next\":{next},\"previous\":{previous},\"results\":["
    ));
    for (n, record) in results.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(record);
    }
    body.push_str("]}");
    body
}

fn failure_response(failure: Failure) -> Response {
    let (code, detail) = match failure {
        Failure::RateLimited | Failure::Next(429) => (
            "throttled",
            "Request was throttled. Expected available in 1 second.",
        ),
        Failure::ServerError(_) => ("server_error", "A server error occurred."),
        Failure::Next(_) => (
            "simulated_failure",
            "Simulated upstream failure (fail_next).",
        ),
    };
    let status = StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = error_response(status, Some(code), detail, json!([]));
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// A 400 listing each bad query parameter.
fn bad_params(errors: Vec<Value>) -> Response {
    let details: Vec<&str> = errors.iter().filter_map(|e| e["detail"].as_str()).collect();
    let detail = details.join("; ");
    error_response(
        StatusCode::BAD_REQUEST,
        Some("invalid"),
        &detail,
        Value::from(errors),
    )
}

async fn list(
    State(sim): State<Arc<Simulator>>,
    Path(table): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let _counted = sim.traffic.enter();
    let mut log = RequestLog {
        table: table.clone(),
        sync: 0,
        page: 1,
        page_size: sim.config.default_page_size.min(sim.config.max_page_size),
        status: 0,
        fault: None,
        query: uri.query().unwrap_or_default().to_owned(),
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let response = sim.answer_list(&table, &uri, &headers, &mut log).await;
    log.status = response.status().as_u16();
    sim.log_request(log);
    response
}

impl Simulator {
    async fn answer_list(
        &self,
        table: &str,
        uri: &Uri,
        headers: &HeaderMap,
        log: &mut RequestLog,
    ) -> Response {
        let Some(kind) = Kind::parse(table) else {
            return not_found().await;
        };
        if let Err(unauthorized) = self.authenticate(headers) {
            return unauthorized.into_response();
        }
        let draw = lock(&self.faults).draw();
        if let Some(failed) = self.delay_or_fail(&draw, log).await {
            return failed;
        }
        let params = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| vec![json!({ "detail": e.body_text() })])
            .and_then(|Query(pairs)| parse_params(&pairs, &self.config));
        let params = match params {
            Ok(params) => params,
            Err(errors) => return bad_params(errors),
        };
        (log.sync, log.page, log.page_size) = (params.sync, params.page, params.page_size);
        if params.page > 1 && draw.writes_per_page > 0 {
            self.random_writes(Some(table), draw.writes_per_page);
        }
        if draw.hard_delete
            && let Some(oldest) = self.state(table).first()
        {
            let id = oldest["uuid"].as_str().unwrap_or_default().to_owned();
            let _ = self.hard_delete(table, &id);
        }
        for _ in 0..draw.edits_per_page {
            // No fields to change but `modified_at`: the record keeps its
            // place in the listing and takes a new stamp. An empty table
            // has nothing to edit.
            let _ = self.apply(Change::new(table, Op::Update).with_fields(json!({})));
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let base = format!("http://{host}/api/{table}/");
        let Some(body) = self.page_body(kind, &base, &params, draw.count_apart_writes) else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "detail": "Invalid page." })),
            )
                .into_response();
        };
        let mut body = body.into_bytes();
        if draw.truncate {
            log.fault = Some("truncate".to_owned());
            body.truncate(body.len() / 2);
        }
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }

    /// Applies the drawn hang, delay and failure; the failure (or a 503 when
    /// serving stops during a wait) is the answer to send instead of the page.
    async fn delay_or_fail(&self, draw: &Draw, log: &mut RequestLog) -> Option<Response> {
        let waits = [
            draw.hang.then_some((HANG, "hang")),
            draw.delay.map(|d| (d, "slow")),
        ];
        for (wait, fault) in waits.into_iter().flatten() {
            log.fault = Some(fault.to_owned());
            if !self.pause(wait).await {
                let detail = "The simulator is shutting down.";
                return Some(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    detail,
                    json!([]),
                ));
            }
        }
        let failure = draw.fail?;
        let fault = match failure {
            Failure::Next(_) => "fail",
            Failure::ServerError(_) => "error",
            Failure::RateLimited => "rate_limit",
        };
        log.fault = Some(fault.to_owned());
        Some(failure_response(failure))
    }

    /// The page as JSON, or None when the page is outside 1..=pages (DRF has
    /// one page even when nothing matches).
    /// The page's JSON; `apart` random writes land between reading its
    /// count and its results.
    fn page_body(
        &self,
        kind: Kind,
        base: &str,
        params: &ListParams,
        apart: usize,
    ) -> Option<String> {
        let page = usize::try_from(params.page).ok().filter(|&p| p >= 1)?;
        let offset = (page - 1).checked_mul(params.page_size)?;
        let early_count = (apart > 0).then(|| {
            let count = lock(&self.data).table(kind).page(params.sync, 0, 0).0;
            self.random_writes(Some(kind.name()), apart);
            count
        });
        let data = lock(&self.data);
        let (count, results) = data.table(kind).page(params.sync, offset, params.page_size);
        let count = early_count.unwrap_or(count);
        let pages = count.div_ceil(params.page_size).max(1);
        (page <= pages).then(|| envelope(base, params, count, &results))
    }

    /// Waits, unless serving stops first; false when it did.
    async fn pause(&self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.halt.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn params_default_cap_and_reject_non_integers() {
        let config = SimConfig {
            max_page_size: 100,
            ..SimConfig::default()
        };
        let parsed =
            parse_params(&pairs(&[("page_size", "5000"), ("sync", "7")]), &config).unwrap();
        assert_eq!(
            parsed,
            ListParams {
                sync: 7,
                page: 1,
                page_size: 100
            }
        );
        let errors =
            parse_params(&pairs(&[("sync", "abc"), ("page_size", "0")]), &config).unwrap_err();
        let fields: Vec<&str> = errors
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["sync", "page_size"]);
    }

    #[test]
    fn envelope_links_pages_with_the_effective_query() {
        let params = ListParams {
            sync: 3,
            page: 2,
            page_size: 2,
        };
        let body = envelope(
            "http://h/api/sites/",
            &params,
            5,
            &[r#"{"a":1}"#, r#"{"b":2}"#],
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["next"],
            "http://h/api/sites/?sync=3&page=3&page_size=2"
        );
        assert_eq!(
            body["previous"],
            "http://h/api/sites/?sync=3&page=1&page_size=2"
        );
        assert_eq!(body["results"], json!([{"a": 1}, {"b": 2}]));
        let last = ListParams { page: 3, ..params };
        let body: Value = serde_json::from_str(&envelope("u", &last, 5, &[])).unwrap();
        assert_eq!(body["next"], Value::Null);
    }
}
