//! Reading a live stream (`text/event-stream`) the way a client does.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// Reads SSE frames until `want` events arrived or `within` passed.
pub async fn read_sse(
    resp: &mut reqwest::Response,
    buf: &mut String,
    want: usize,
    within: Duration,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < want && Instant::now() < deadline {
        let chunk = match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            resp.chunk(),
        )
        .await
        {
            Ok(Ok(Some(c))) => c,
            _ => break,
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let id = frame
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|s| s.trim().to_string());
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|s| s.trim().to_string());
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}
