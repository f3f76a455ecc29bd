//! The upstream client: one per source (over an HTTP client shared by
//! sources with the same settings, `clients.rs`). Authenticates (OAuth client
//! credentials, basic, static bearer or none), fetches list pages, and
//! retries transient failures with backoff, jitter and `Retry-After`.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::{
    config::{Auth, Secret, Source, join},
    http::{backoff, printable, read_capped, read_prefix, retry_after, root_cause, size},
    record::{Page, excerpt},
};

/// What is read of an error answer (its excerpt is what the error shows).
const ERROR_BODY_KEPT: usize = 64 << 10;
/// The largest OAuth token answer read; a real one is a few hundred bytes.
const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// The longest `Retry-After` honoured inside one poll; a longer one fails
/// the poll, and the poll loop tries again later.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{url} answered HTTP {status}: {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("{url}: {detail}")]
    Malformed { url: String, detail: String },
    /// An answer over its size limit; retrying would fetch it again.
    #[error("{url}: {detail}")]
    TooLarge { url: String, detail: String },
    #[error("authentication at {url} failed: {detail}; check the source's credentials")]
    Auth { url: String, detail: String },
    #[error("stopped while waiting for the upstream")]
    Cancelled,
}

impl UpstreamError {
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            UpstreamError::Transport { .. } | UpstreamError::Malformed { .. } => true,
            UpstreamError::Auth { .. }
            | UpstreamError::TooLarge { .. }
            | UpstreamError::Cancelled => false,
        }
    }

    /// A label for metrics and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Status { status: 429, .. } => "rate_limited",
            UpstreamError::Status { status, .. } if *status >= 500 => "server_error",
            UpstreamError::Status { .. } => "client_error",
            UpstreamError::Transport { .. } => "transport",
            UpstreamError::Malformed { .. } => "malformed",
            UpstreamError::TooLarge { .. } => "too_large",
            UpstreamError::Auth { .. } => "auth",
            UpstreamError::Cancelled => "cancelled",
        }
    }
}

struct Token {
    value: Secret,
    refresh_at: Instant,
}

pub mod budget;
mod clients;

pub struct Upstream {
    http: reqwest::Client,
    source: Source,
    token: Mutex<Option<Token>>,
    /// Shared with every client of the same host (or only this source).
    budget: std::sync::Arc<budget::Budget>,
}

impl Upstream {
    /// A client with a budget of its own and no limit.
    pub fn new(source: Source) -> anyhow::Result<Upstream> {
        Self::with_budget(source, std::sync::Arc::new(budget::Budget::unlimited()))
    }

    /// A client whose requests go within `budget`.
    pub fn with_budget(
        source: Source,
        budget: std::sync::Arc<budget::Budget>,
    ) -> anyhow::Result<Upstream> {
        let http = clients::client_for(&source)?;
        Ok(Upstream {
            http,
            source,
            token: Mutex::new(None),
            budget,
        })
    }

    /// The list URL of one page.
    pub fn page_url(&self, resource: &str, sync: u64, page: u32) -> Url {
        let s = &self.source.settings;
        let mut url = join(&self.source.base_url, &format!("{resource}/"));
        url.query_pairs_mut()
            .append_pair(&s.query.sync, &sync.to_string())
            .append_pair(&s.query.page, &page.to_string())
            .append_pair(&s.query.page_size, &s.page_size.to_string());
        url
    }

    /// Fetches one page, retrying transient failures; fetches a fresh token
    /// once on a 401.
    pub async fn page(
        &self,
        resource: &str,
        sync: u64,
        page: u32,
        cancel: &CancellationToken,
    ) -> Result<Page, UpstreamError> {
        let url = self.page_url(resource, sync, page);
        let s = &self.source.settings;
        let mut attempt = 0;
        let mut fresh_token = false;
        loop {
            attempt += 1;
            let turn = tokio::select! {
                _ = cancel.cancelled() => return Err(UpstreamError::Cancelled),
                turn = self.budget.enter() => turn,
            };
            let got = self.get_page(&url).await;
            drop(turn);
            let err = match got {
                Ok(p) => return Ok(p),
                Err(e) => e,
            };
            if let UpstreamError::Status {
                status: 429,
                retry_after: Some(d),
                ..
            } = &err
            {
                // Every table on this host waits, not only this one.
                self.budget.hold((*d).min(MAX_RETRY_AFTER));
            }
            if let UpstreamError::Status { status: 401, .. } = err
                && !fresh_token
                && matches!(self.source.auth, Auth::OAuth { .. })
            {
                *self.token.lock().await = None;
                fresh_token = true;
                continue;
            }
            if !err.retryable() || attempt >= s.max_attempts {
                return Err(err);
            }
            let delay = match &err {
                UpstreamError::Status {
                    retry_after: Some(d),
                    ..
                } if *d > MAX_RETRY_AFTER => return Err(err),
                UpstreamError::Status {
                    retry_after: Some(d),
                    ..
                } => *d,
                _ => backoff(s.retry_base, s.retry_max, attempt, &mut rand::rng()),
            };
            tracing::debug!(%url, attempt, ?delay, error = %err, "upstream request failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return Err(UpstreamError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn get_page(&self, url: &Url) -> Result<Page, UpstreamError> {
        let shown = url.to_string();
        let transport = |e: reqwest::Error| UpstreamError::Transport {
            url: shown.clone(),
            detail: describe_transport(&e),
        };
        let mut req = self
            .http
            .get(url.clone())
            .header(header::ACCEPT, "application/json");
        // The poll's trace context (docs/tracing.md).
        if let Some(tp) = crate::telemetry::traceparent() {
            req = req.header("traceparent", tp);
        }
        req = match &self.source.auth {
            Auth::None => req,
            Auth::Basic { username, password } => {
                req.basic_auth(username.expose(), Some(password.expose()))
            }
            Auth::Bearer { token } => req.bearer_auth(token.expose()),
            Auth::OAuth { .. } => req.bearer_auth(self.oauth_token().await?.expose()),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        if !status.is_success() {
            let (body, _) = read_prefix(resp, ERROR_BODY_KEPT)
                .await
                .map_err(transport)?;
            return Err(UpstreamError::Status {
                url: shown,
                status: status.as_u16(),
                detail: error_detail(status, &body),
                retry_after: after,
            });
        }
        let cap = self.source.settings.max_page_bytes;
        let Some(body) = read_capped(resp, cap).await.map_err(transport)? else {
            return Err(UpstreamError::TooLarge {
                url: shown,
                detail: format!(
                    "the page is larger than {} (sources.max_page_bytes); raise \
                     max_page_bytes of source {:?} if its pages are that large, or lower page_size",
                    size(cap),
                    self.source.name()
                ),
            });
        };
        Page::parse(&body).map_err(|detail| UpstreamError::Malformed { url: shown, detail })
    }

    /// The current OAuth token, fetched anew shortly before it expires.
    async fn oauth_token(&self) -> Result<Secret, UpstreamError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let grant = self.grant().await?;
        let value = Secret::new(grant.access_token);
        *guard = Some(Token {
            value: value.clone(),
            refresh_at: refresh_at(Instant::now(), grant.expires_in.unwrap_or(300)),
        });
        Ok(value)
    }

    /// A client-credentials grant from the source's token endpoint.
    async fn grant(&self) -> Result<Grant, UpstreamError> {
        let Auth::OAuth {
            client_id,
            client_secret,
            token_url,
        } = &self.source.auth
        else {
            unreachable!("oauth_token is only called for oauth sources");
        };
        let shown = token_url.to_string();
        let fail = |detail: String| UpstreamError::Auth {
            url: shown.clone(),
            detail,
        };
        let resp = self
            .http
            .post(token_url.clone())
            .form(&[
                ("client_id", client_id.expose()),
                ("client_secret", client_secret.expose()),
            ])
            .send()
            .await
            .map_err(|e| fail(describe_transport(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let (body, _) = read_prefix(resp, ERROR_BODY_KEPT)
                .await
                .map_err(|e| fail(describe_transport(&e)))?;
            let err = fail(format!(
                "HTTP {}: {}",
                status.as_u16(),
                error_detail(status, &body)
            ));
            // A token endpoint that is down is transient; a refusal is not.
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                UpstreamError::Status {
                    url: shown.clone(),
                    status: status.as_u16(),
                    detail: err.to_string(),
                    retry_after: None,
                }
            } else {
                err
            });
        }
        let body = read_capped(resp, MAX_TOKEN_ANSWER)
            .await
            .map_err(|e| fail(describe_transport(&e)))?
            .ok_or_else(|| {
                fail(format!(
                    "the token answer is larger than {}, far more than a token",
                    size(MAX_TOKEN_ANSWER)
                ))
            })?;
        serde_json::from_slice(&body)
            .map_err(|e| fail(format!("the token answer has no access_token ({e})")))
    }
}

/// The token endpoint's answer.
#[derive(serde::Deserialize)]
struct Grant {
    access_token: String,
    expires_in: Option<u64>,
}

/// The longest token lifetime believed: an `expires_in` beyond it (up to
/// `u64::MAX` seconds, more than `Instant` can hold) is read as a day.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// When to fetch a new token: a tenth of its lifetime (at most a minute)
/// before it expires.
fn refresh_at(now: Instant, expires_in_secs: u64) -> Instant {
    let ttl = Duration::from_secs(expires_in_secs).min(MAX_TOKEN_TTL);
    let margin = (ttl / 10).min(Duration::from_secs(60));
    now.checked_add(ttl - margin).unwrap_or(now)
}

fn describe_transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "request timed out (sources.request_timeout)".into()
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        format!("request failed: {}", root_cause(e))
    }
}

/// The upstream's own words from a DRF error body
/// `{"code"?, "detail", "errors": [{"field"?, "detail"}]}`, or an excerpt,
/// with control characters escaped for the logs.
pub fn error_detail(status: StatusCode, body: &[u8]) -> String {
    printable(&words(status, body))
}

fn words(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct FieldError {
        field: Option<String>,
        detail: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Problem {
        code: Option<String>,
        detail: Option<String>,
        #[serde(default)]
        errors: Vec<FieldError>,
    }
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) if p.detail.is_some() || !p.errors.is_empty() => {
            let mut s = p.detail.unwrap_or_default();
            if let Some(code) = p.code {
                s = format!("{s} ({code})");
            }
            for e in p.errors {
                s.push_str(&format!(
                    "; {}: {}",
                    e.field.as_deref().unwrap_or("error"),
                    e.detail.unwrap_or_default()
                ));
            }
            s
        }
        _ if body.is_empty() => status.canonical_reason().unwrap_or("no body").to_string(),
        _ => excerpt(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_expires_in_gives_a_refresh_time() {
        let now = Instant::now();
        assert_eq!(
            refresh_at(now, u64::MAX),
            now + MAX_TOKEN_TTL - Duration::from_secs(60)
        );
        assert_eq!(refresh_at(now, 300), now + Duration::from_secs(270));
        assert_eq!(refresh_at(now, 0), now);
    }

    #[test]
    fn error_detail_prefers_the_upstreams_words() {
        let body = br#"{"code":"bad","detail":"Invalid sync.","errors":[{"field":"sync","detail":"must be an integer"}]}"#;
        assert_eq!(
            error_detail(StatusCode::BAD_REQUEST, body),
            "Invalid sync. (bad); sync: must be an integer"
        );
        assert_eq!(error_detail(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
        assert_eq!(
            error_detail(StatusCode::BAD_GATEWAY, b"<html>oops"),
            "<html>oops"
        );
    }
}
