//! A receiver in the test's process: a [`Transport`] that answers each
//! request as the test's rule says (a status, a `Retry-After`, a slow
//! answer, no answer) on the paused clock, and keeps every request with
//! the time it came and how many were out at once.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio::time::Instant;

use crate::delivery::{
    sender::{Answer, NoAnswer, Post, Transport},
    signing,
};

/// What the receiver does with one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Answers at once with this status.
    Status(u16),
    /// Answers at once with this status and `Retry-After` value.
    RetryAfter(u16, &'static str),
    /// Answers with this status after this long (no answer when that is
    /// past the client's timeout).
    Slow(Duration, u16),
    /// Never answers: the client gives up at its timeout.
    Hang,
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CloudEvents it carries, one or a batch.
    pub fn events(&self) -> Vec<Value> {
        match serde_json::from_slice(&self.body).expect("a JSON body") {
            Value::Array(events) => events,
            one => vec![one],
        }
    }

    /// `record@stamp` of each event.
    pub fn versions(&self) -> Vec<String> {
        let of = |e: &Value| format!("{}@{}", e["subject"].as_str().unwrap(), e["updatestamp"]);
        self.events().iter().map(of).collect()
    }

    /// Whether its Standard Webhooks signature verifies with `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let ts = self.header("webhook-timestamp").parse().unwrap_or(0);
        let (id, sig) = (self.header("webhook-id"), self.header("webhook-signature"));
        signing::verify(secret, id, ts, &self.body, sig)
    }
}

type Rule = Box<dyn Fn(&Request, usize) -> Reply + Send + Sync>;

/// The receiver: `rule` gets each request and how many came before it.
pub struct Scripted {
    rule: Rule,
    timeout: Duration,
    seen: Mutex<Vec<Request>>,
    out: Mutex<Out>,
}

/// Requests out at once: now, at most, and the records they hold.
#[derive(Default)]
struct Out {
    records: Vec<String>,
    now: usize,
    most: usize,
    /// A request arrived holding a record another request out held.
    overlaps: usize,
}

impl Scripted {
    pub fn new(
        timeout: Duration,
        rule: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static,
    ) -> Arc<Scripted> {
        Arc::new(Scripted {
            rule: Box::new(rule),
            timeout,
            seen: Mutex::default(),
            out: Mutex::default(),
        })
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    /// `record@stamp` of every event received, in order.
    pub fn versions(&self) -> Vec<String> {
        self.requests().iter().flat_map(Request::versions).collect()
    }

    /// The most requests that were out at once, and how often one came
    /// holding a record another held.
    pub fn most_out(&self) -> (usize, usize) {
        let out = self.out.lock().unwrap();
        (out.most, out.overlaps)
    }

    fn enter(&self, records: &[String]) {
        let mut out = self.out.lock().unwrap();
        if records.iter().any(|r| out.records.contains(r)) {
            out.overlaps += 1;
        }
        out.records.extend(records.iter().cloned());
        out.now += 1;
        out.most = out.most.max(out.now);
    }

    fn leave(&self, records: &[String]) {
        let mut out = self.out.lock().unwrap();
        for r in records {
            let at = out.records.iter().position(|o| o == r).unwrap();
            out.records.swap_remove(at);
        }
        out.now -= 1;
    }

    async fn answer(&self, reply: Reply) -> Result<Answer, NoAnswer> {
        let mut headers = HeaderMap::new();
        let status = match reply {
            Reply::Status(status) => status,
            Reply::RetryAfter(status, after) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(after));
                status
            }
            Reply::Slow(took, status) if took < self.timeout => {
                tokio::time::sleep(took).await;
                status
            }
            Reply::Slow(..) | Reply::Hang => {
                tokio::time::sleep(self.timeout).await;
                return Err(NoAnswer::timed_out());
            }
        };
        Ok(Answer {
            status,
            headers,
            body: format!("answered {status}").into_bytes(),
        })
    }
}

#[async_trait::async_trait]
impl Transport for Arc<Scripted> {
    async fn post(&self, p: Post) -> Result<Answer, NoAnswer> {
        let request = Request {
            at: Instant::now(),
            headers: p.headers,
            body: p.body,
        };
        let records: Vec<String> = request
            .events()
            .iter()
            .map(|e| e["subject"].as_str().unwrap().to_string())
            .collect();
        let reply = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(request.clone());
            (self.rule)(&request, seen.len() - 1)
        };
        self.enter(&records);
        let answered = self.answer(reply).await;
        self.leave(&records);
        answered
    }
}
