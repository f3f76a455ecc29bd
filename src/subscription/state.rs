//! The delivery state both stores keep per subscription.

use serde::{Deserialize, Serialize};

/// Retry state of one pending entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryState {
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this time (unix ms).
    pub next_at_ms: u64,
}

impl RetryState {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.attempts, self.next_at_ms)
    }

    pub fn decode(s: &str) -> RetryState {
        let (a, n) = s.split_once(':').unwrap_or((s, "0"));
        RetryState {
            attempts: a.parse().unwrap_or(0),
            next_at_ms: n.parse().unwrap_or(0),
        }
    }
}

/// An event that exhausted its retries, kept until redriven.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// `source/resource`.
    pub target: String,
    /// The stream ID.
    pub id: String,
    /// The CloudEvents id.
    pub event_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub at_ms: u64,
}

impl DeadLetter {
    pub fn key(&self) -> String {
        format!("{}/{}", self.target, self.id)
    }
}

/// One delivery attempt, as listed by `GET …/attempts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub at_ms: u64,
    pub target: String,
    /// CloudEvents ids of the events in this request.
    pub event_ids: Vec<String>,
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The first 4 KiB of the response body.
    pub response: String,
    pub error: Option<String>,
}

/// What one request achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    /// 429, 502, 503, 504: the receiver asks to slow down.
    Throttled,
    Failed,
    /// 410: the subscription is disabled.
    Gone,
    /// The SSRF guard refused the target.
    Refused,
}
