//! `TestReceiver`: a webhook target on port 0 that verifies every request's
//! Standard Webhooks signature and records what arrived; it can fail a share
//! of requests, refuse a share of records for good, answer 410, redirect,
//! hang, or take its time over every request.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use stamp_relay::delivery::signing;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Ok,
    /// Fail this share of requests with 500.
    Flaky(f64),
    /// Fail every request holding an event of this share of records (by
    /// subject, see [`refused`]) with 500.
    Refuse(f64),
    Gone,
    Redirect,
    Hang,
}

#[derive(Debug)]
pub struct Received {
    pub webhook_id: String,
    pub content_type: String,
    /// The custom header `x-team`, when sent.
    pub team: Option<String>,
    /// The W3C `traceparent` header, when sent.
    pub traceparent: Option<String>,
    pub at: std::time::Instant,
    pub events: Vec<Value>,
}

pub struct Inner {
    pub secrets: Vec<String>,
    pub mode: Mode,
    pub received: Vec<Received>,
    pub requests: usize,
    pub bad_signatures: usize,
    pub redirects_followed: usize,
    /// How long each request takes before it is answered.
    pub delay: Duration,
    /// Requests not answered yet, by record (`source subject`).
    out: std::collections::HashMap<String, usize>,
    requests_out: usize,
    /// The most requests that were out at once.
    pub most_out: usize,
    /// Requests that arrived while one for the same record was still out.
    pub overlaps: usize,
    rng: StdRng,
}

/// Whether `Mode::Refuse(share)` refuses the record with this subject.
pub fn refused(share: f64, subject: &str) -> bool {
    let h = subject.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % 1000) as f64 / 1000.0 < share
}

#[derive(Clone)]
pub struct TestReceiver {
    pub url: String,
    pub inner: Arc<Mutex<Inner>>,
    cancel: CancellationToken,
}

impl TestReceiver {
    pub async fn start(seed: u64) -> TestReceiver {
        let inner = Arc::new(Mutex::new(Inner {
            secrets: Vec::new(),
            mode: Mode::Ok,
            received: Vec::new(),
            requests: 0,
            bad_signatures: 0,
            redirects_followed: 0,
            delay: Duration::ZERO,
            out: Default::default(),
            requests_out: 0,
            most_out: 0,
            overlaps: 0,
            rng: StdRng::seed_from_u64(seed),
        }));
        let app = Router::new()
            .route("/hook", post(hook))
            .route("/elsewhere", post(elsewhere))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await
                .unwrap();
        });
        TestReceiver { url, inner, cancel }
    }

    pub fn set_secrets(&self, secrets: &[&str]) {
        self.inner.lock().unwrap().secrets = secrets.iter().map(|s| s.to_string()).collect();
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    /// Every CloudEvents id received, in order of receipt (with repeats).
    pub fn event_ids(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        g.received
            .iter()
            .flat_map(|r| {
                r.events
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_string())
            })
            .collect()
    }

    pub fn events(&self) -> Vec<Value> {
        let g = self.inner.lock().unwrap();
        g.received
            .iter()
            .flat_map(|r| r.events.iter().cloned())
            .collect()
    }

    /// The events as a receiver that drops a `webhook-id` it has processed
    /// (the Standard Webhooks idempotency rule) takes them: a retry of a
    /// request whose answer the relay did not see (its request timed out)
    /// counts once; the same event under a new `webhook-id` counts twice.
    pub fn events_once(&self) -> Vec<Value> {
        let g = self.inner.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        g.received
            .iter()
            .filter(|r| seen.insert(r.webhook_id.as_str()))
            .flat_map(|r| r.events.iter().cloned())
            .collect()
    }

    pub fn bad_signatures(&self) -> usize {
        self.inner.lock().unwrap().bad_signatures
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) <= 2 {
            self.cancel.cancel();
        }
    }
}

/// A request's records while it is out; leaves on drop, so an abandoned
/// request leaves too.
struct Out {
    inner: Arc<Mutex<Inner>>,
    records: Vec<String>,
}

impl Out {
    /// Counts the request in and returns how long to take over it.
    fn enter(inner: &Arc<Mutex<Inner>>, body: &[u8]) -> (Duration, Out) {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let records: Vec<String> = match parsed {
            Value::Array(a) => a,
            one => vec![one],
        }
        .iter()
        .map(|e| format!("{} {}", e["source"], e["subject"]))
        .collect();
        let mut g = inner.lock().unwrap();
        for r in &records {
            let n = g.out.entry(r.clone()).or_default();
            *n += 1;
            if *n > 1 {
                g.overlaps += 1;
            }
        }
        g.requests_out += 1;
        g.most_out = g.most_out.max(g.requests_out);
        let out = Out {
            inner: inner.clone(),
            records,
        };
        (g.delay, out)
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.requests_out -= 1;
        for r in &self.records {
            if let Some(n) = g.out.get_mut(r) {
                *n -= 1;
            }
        }
    }
}

async fn hook(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let (delay, _out) = Out::enter(&inner, &body);
    tokio::time::sleep(delay).await;
    let mode = {
        let mut g = inner.lock().unwrap();
        g.requests += 1;
        let ts: i64 = ts.parse().unwrap_or(0);
        let valid = !g.secrets.is_empty()
            && g.secrets
                .iter()
                .all(|s| signing::verify(s, &id, ts, &body, &sig));
        if !valid {
            g.bad_signatures += 1;
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let events = match parsed {
            Value::Array(a) => a,
            one => vec![one],
        };
        let fail = match g.mode {
            Mode::Flaky(p) => g.rng.random::<f64>() < p,
            Mode::Refuse(p) => events
                .iter()
                .any(|e| refused(p, e["subject"].as_str().unwrap_or(""))),
            _ => false,
        };
        if fail {
            return (StatusCode::INTERNAL_SERVER_ERROR, "flaky").into_response();
        }
        if matches!(g.mode, Mode::Ok | Mode::Flaky(_) | Mode::Refuse(_)) {
            g.received.push(Received {
                webhook_id: id,
                content_type: header("content-type"),
                team: headers
                    .get("x-team")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                traceparent: headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                at: std::time::Instant::now(),
                events,
            });
        }
        g.mode
    };
    match mode {
        Mode::Gone => (StatusCode::GONE, "gone").into_response(),
        Mode::Redirect => {
            (StatusCode::FOUND, [("location", "/elsewhere")], "moved").into_response()
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn elsewhere(State(inner): State<Arc<Mutex<Inner>>>) -> StatusCode {
    inner.lock().unwrap().redirects_followed += 1;
    StatusCode::OK
}
