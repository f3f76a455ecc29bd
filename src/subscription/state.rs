//! The delivery state both stores keep per subscription.

use serde::{Deserialize, Serialize};

/// Retry state of one pending entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
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

    /// Reads what [`encode`](Self::encode) wrote; anything else is an
    /// error, never a fresh state (that would retry at once and forget the
    /// attempts made).
    pub fn decode(s: &str) -> Result<RetryState, CorruptRetryState> {
        let corrupt = || CorruptRetryState(s.to_string());
        let (a, n) = s.split_once(':').ok_or_else(corrupt)?;
        Ok(RetryState {
            attempts: a.parse().map_err(|_| corrupt())?,
            next_at_ms: n.parse().map_err(|_| corrupt())?,
        })
    }
}

/// A stored retry state that is not `<attempts>:<next_at_ms>`.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("retry state {0:?} is not <attempts>:<next_at_ms>")]
pub struct CorruptRetryState(pub String);

/// An event that exhausted its retries, kept until redriven.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// `source/resource`.
    #[serde(rename = "target")]
    pub table: String,
    /// The stream ID.
    pub id: String,
    /// The CloudEvents id.
    pub event_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub at_ms: u64,
}

impl DeadLetter {
    /// What the store keeps it under: one per event and subscription.
    pub fn key(&self) -> String {
        Self::key_of(&self.table, &self.id)
    }

    /// The key of the dead letter of event `id` on `table`.
    pub fn key_of(table: impl std::fmt::Display, id: impl std::fmt::Display) -> String {
        format!("{table}/{id}")
    }
}

/// One delivery attempt, as listed by `GET …/attempts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub at_ms: u64,
    /// `source/resource`; empty for a ping.
    #[serde(rename = "target")]
    pub table: String,
    /// A test ping (`POST …/test`), not an event delivery.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ping: bool,
    /// CloudEvents ids of the events in this request.
    pub event_ids: Vec<String>,
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The first 4 KiB of the response body.
    pub response: String,
    pub error: Option<String>,
}

impl Attempt {
    /// Why it failed, or None when it delivered.
    pub fn failure(&self) -> Option<String> {
        (self.outcome != Outcome::Delivered)
            .then(|| failure_reason(self.outcome, self.status, self.error.as_deref()))
    }
}

/// Why a request failed, in words that carry no secret (the sender's errors
/// leave the URL out): the error (an SSRF refusal, TLS, a timeout, a
/// connection), or else the status.
pub fn failure_reason(outcome: Outcome, status: Option<u16>, error: Option<&str>) -> String {
    match error {
        Some(e) if outcome == Outcome::Refused => format!("refused: {e}"),
        Some(e) => e.to_string(),
        None => format!("HTTP {}", status.unwrap_or(0)),
    }
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

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Delivered,
        Outcome::Throttled,
        Outcome::Failed,
        Outcome::Gone,
        Outcome::Refused,
    ];

    /// The name the API and the metrics' `outcome` label use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Throttled => "throttled",
            Outcome::Failed => "failed",
            Outcome::Gone => "gone",
            Outcome::Refused => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_the_serialized_ones() {
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }

    #[test]
    fn retry_state_reads_what_it_wrote_and_refuses_anything_else() {
        let st = RetryState {
            attempts: 3,
            next_at_ms: 1_700_000_000_123,
        };
        assert_eq!(RetryState::decode(&st.encode()), Ok(st));
        for bad in ["", "3", "3:", ":5", "x:5", "3:y", "-1:5", "3:5:7"] {
            assert_eq!(
                RetryState::decode(bad),
                Err(CorruptRetryState(bad.to_string())),
                "{bad:?}"
            );
        }
    }
}
