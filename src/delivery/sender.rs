//! One signed webhook POST and what came of it. Redirects are never
//! followed (a 3xx is a failure), the SSRF guard checks every resolved and
//! literal address, and at most 4 KiB of the answer is kept.
//!
//! [`WebhookClient`] checks the URL against the address policy, signs the
//! request and reads the answer's status and `Retry-After`; the request
//! itself goes out through a [`Transport`]: reqwest in production (with the
//! guarded resolver), a scripted receiver in the fast tests
//! (`delivery/tests`), which so see the signatures production makes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use super::{
    signing,
    ssrf::{GuardedResolver, Policy},
};
use crate::subscription::state::Outcome;

/// Bytes of a receiver's answer kept with an attempt.
pub const RESPONSE_KEPT: usize = 4096;

pub struct WebhookClient {
    transport: Box<dyn Transport>,
    policy: Arc<Policy>,
    timeout: Duration,
}

/// A built, signed request, as a [`Transport`] sends it.
pub struct Post {
    pub url: url::Url,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A receiver's answer: its status, its headers and at most
/// [`RESPONSE_KEPT`] bytes of its body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A request that got no answer: refused by the address policy, timed out,
/// or failed to connect.
pub struct NoAnswer {
    pub outcome: Outcome,
    pub error: String,
}

impl NoAnswer {
    /// No answer within `delivery.request_timeout`.
    pub fn timed_out() -> NoAnswer {
        NoAnswer {
            outcome: Outcome::Failed,
            error: "timed out (delivery.request_timeout)".into(),
        }
    }
}

/// Where a built request goes: the seam between delivery's rules and the
/// network. It neither signs nor checks addresses ([`WebhookClient`] has
/// done both); it gives up at the client's timeout.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    async fn post(&self, request: Post) -> Result<Answer, NoAnswer>;
}

/// The production transport: reqwest, redirects off, no proxy, every
/// resolved address checked by the guarded resolver.
struct Http(reqwest::Client);

#[async_trait::async_trait]
impl Transport for Http {
    async fn post(&self, p: Post) -> Result<Answer, NoAnswer> {
        let sending = self.0.post(p.url).headers(p.headers).body(p.body).send();
        match sending.await {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let headers = std::mem::take(resp.headers_mut());
                // Only what is kept is read: the rest of a huge answer never arrives.
                let (body, _) = crate::http::read_prefix(resp, RESPONSE_KEPT)
                    .await
                    .unwrap_or_default();
                Ok(Answer {
                    status,
                    headers,
                    body,
                })
            }
            Err(e) if e.is_timeout() => Err(NoAnswer::timed_out()),
            Err(e) => {
                // The subscription's URL is known; repeating it here would
                // copy any token in it into attempts and dead letters.
                let error = crate::http::error_chain(&e.without_url());
                // The guard speaks through the resolver's error.
                let outcome = if error.contains("SSRF guard") {
                    Outcome::Refused
                } else {
                    Outcome::Failed
                };
                Err(NoAnswer { outcome, error })
            }
        }
    }
}

/// What to send (the test ping's form; workers prepare an [`Endpoint`] once).
pub struct Message<'a> {
    pub url: &'a crate::subscription::WebhookUrl,
    pub headers: &'a BTreeMap<String, String>,
    /// `webhook-id`: stable across retries of the same events.
    pub id: &'a str,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// Every secret currently signing (two during a rotation).
    pub secrets: Vec<&'a str>,
}

/// Where and how a subscription's requests go, made once per change of the
/// subscription rather than per request: the parsed URL, its custom
/// headers and the signing keys with the time each stops signing.
pub struct Endpoint {
    url: url::Url,
    headers: HeaderMap,
    keys: Vec<(signing::Key, Option<u64>)>,
}

impl Endpoint {
    pub fn new(
        url: &crate::subscription::WebhookUrl,
        custom: &BTreeMap<String, String>,
        secrets: &[(&str, Option<u64>)],
    ) -> Endpoint {
        let mut headers = HeaderMap::new();
        for (k, v) in custom {
            // The API refuses these; a document stored before it did may hold one.
            if crate::subscription::reserved_header(k).is_some() {
                continue;
            }
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        Endpoint {
            url: url.url().clone(),
            headers,
            keys: secrets
                .iter()
                .map(|(s, until)| (signing::Key::new(s), *until))
                .collect(),
        }
    }

    /// A subscription's endpoint: its secret, and the previous one until its
    /// grace period ends.
    pub fn of(subscription: &crate::subscription::Subscription) -> Endpoint {
        let mut secrets = vec![(subscription.secret.as_str(), None)];
        if let Some((old, until)) = &subscription.previous_secret {
            secrets.push((old.as_str(), Some(*until)));
        }
        Endpoint::new(&subscription.url, &subscription.headers, &secrets)
    }

    /// The Standard Webhooks headers of one request, signed by every key
    /// still valid at `now_ms`.
    fn headers(&self, id: &str, body: &[u8], content_type: &'static str) -> HeaderMap {
        let id = &*signing::webhook_id(id);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let timestamp = now.as_secs() as i64;
        let now_ms = now.as_millis() as u64;
        let keys = self
            .keys
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| u > now_ms))
            .map(|(k, _)| k);
        let sig = signing::header(keys, id, timestamp, body);
        let mut headers = self.headers.clone();
        let fixed = [
            ("webhook-id", HeaderValue::from_str(id)),
            ("webhook-timestamp", Ok(HeaderValue::from(timestamp))),
            ("webhook-signature", HeaderValue::from_str(&sig)),
        ];
        for (k, v) in fixed {
            if let Ok(v) = v {
                headers.insert(k, v);
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        // The attempt's trace context (docs/tracing.md).
        if let Some(tp) = crate::telemetry::traceparent().and_then(|t| t.parse().ok()) {
            headers.insert("traceparent", tp);
        }
        headers
    }
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
    pub response: String,
    pub error: Option<String>,
}

impl WebhookClient {
    /// Trusts the system's roots, and those of `ca_file` (`delivery.tls_ca_file`).
    pub fn new(
        policy: Policy,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<WebhookClient> {
        let policy = Arc::new(policy);
        let builder = crate::http::trust_ca_file(
            reqwest::Client::builder(),
            ca_file,
            "delivery.tls_ca_file",
        )?;
        let http = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from HTTP(S)_PROXY would resolve the target itself,
            // past the guarded resolver below: never use one.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .user_agent(concat!("stamp-relay/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(crate::subscription::MAX_IN_FLIGHT as usize)
            .build()?;
        Ok(WebhookClient {
            transport: Box::new(Http(http)),
            policy,
            timeout,
        })
    }

    /// A client whose requests go through `transport` instead of HTTP: the
    /// same address check, signing and reading of answers.
    pub fn with_transport(
        policy: Policy,
        timeout: Duration,
        transport: impl Transport + 'static,
    ) -> WebhookClient {
        WebhookClient {
            transport: Box::new(transport),
            policy: Arc::new(policy),
            timeout,
        }
    }

    /// The address policy its requests are held to.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// `delivery.request_timeout`: no request takes longer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn send(&self, m: Message<'_>) -> Sent {
        let secrets: Vec<(&str, Option<u64>)> = m.secrets.iter().map(|s| (*s, None)).collect();
        let endpoint = Endpoint::new(m.url, m.headers, &secrets);
        self.send_to(&endpoint, m.id, m.body, m.content_type).await
    }

    /// One signed POST of `body` to a prepared endpoint.
    pub async fn send_to(
        &self,
        endpoint: &Endpoint,
        id: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Sent {
        let started = Instant::now();
        let url = endpoint.url.clone();
        if let Err(error) = self.policy.check_url(&url) {
            let refused = NoAnswer {
                outcome: Outcome::Refused,
                error,
            };
            return Sent::of(Err(refused), started);
        }
        let headers = endpoint.headers(id, &body, content_type);
        let request = Post { url, headers, body };
        Sent::of(self.transport.post(request).await, started)
    }
}

impl Sent {
    /// What a request that started at `started` came to.
    fn of(answered: Result<Answer, NoAnswer>, started: Instant) -> Sent {
        let latency = started.elapsed();
        match answered {
            Ok(a) => Sent {
                outcome: classify(a.status),
                status: Some(a.status),
                retry_after: a
                    .headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::http::retry_after),
                latency,
                response: String::from_utf8_lossy(&a.body[..a.body.len().min(RESPONSE_KEPT)])
                    .into_owned(),
                error: None,
            },
            Err(no) => Sent {
                outcome: no.outcome,
                status: None,
                retry_after: None,
                latency,
                response: String::new(),
                error: Some(no.error),
            },
        }
    }
}

/// 2xx delivered, 410 gone, 429/502/503/504 throttled, anything
/// else (3xx included: redirects are not followed) failed.
pub fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        429 | 502 | 503 | 504 => Outcome::Throttled,
        _ => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify(200), Outcome::Delivered);
        assert_eq!(classify(204), Outcome::Delivered);
        assert_eq!(classify(302), Outcome::Failed);
        assert_eq!(classify(410), Outcome::Gone);
        assert_eq!(classify(429), Outcome::Throttled);
        assert_eq!(classify(503), Outcome::Throttled);
        assert_eq!(classify(500), Outcome::Failed);
        assert_eq!(classify(404), Outcome::Failed);
    }
}
