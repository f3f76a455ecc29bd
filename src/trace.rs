//! Trace context derived from what a stream entry already holds
//! (docs/tracing.md): a poll's trace id and span ids are hashes of its
//! table and start time, which every event of the poll stores as
//! `observed`. So a delivery attempt, a replay page or a live event finds
//! the trace of the poll that appended it without a field of its own in
//! the Redis layout.

use sha2::{Digest, Sha256};

/// The ids of one poll's trace: the trace, the poll span and the span its
/// appends run in (the parent of every later delivery attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollTrace {
    pub trace_id: [u8; 16],
    pub poll_span: [u8; 8],
    pub append_span: [u8; 8],
}

impl PollTrace {
    /// The trace of the poll of `source`/`resource` that began at
    /// `observed` (unix ms): the first 16 bytes of
    /// SHA-256(`stamp-relay/<source>/<resource>/<observed>`), and the first
    /// 8 bytes of the same with `/poll` or `/append` appended.
    pub fn of(source: &str, resource: &str, observed: u64) -> PollTrace {
        let base = format!("stamp-relay/{source}/{resource}/{observed}");
        PollTrace {
            trace_id: non_zero(digest(&base)),
            poll_span: non_zero(digest(&format!("{base}/poll"))),
            append_span: non_zero(digest(&format!("{base}/append"))),
        }
    }

    /// The W3C `traceparent` of the poll span (upstream requests).
    pub fn poll_parent(&self) -> String {
        traceparent(&self.trace_id, &self.poll_span)
    }

    /// The W3C `traceparent` of the append span: the CloudEvents
    /// distributed-tracing attribute of every event the poll appended.
    pub fn append_parent(&self) -> String {
        traceparent(&self.trace_id, &self.append_span)
    }

    /// The trace id as 32 lowercase hex digits, as logs show it.
    pub fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// `00-<trace id>-<parent id>-01`: version 00, lowercase hex, sampled.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> String {
    format!("00-{}-{}-01", hex(trace_id), hex(span_id))
}

fn digest<const N: usize>(text: &str) -> [u8; N] {
    let hash = Sha256::digest(text.as_bytes());
    let mut out = [0u8; N];
    out.copy_from_slice(&hash[..N]);
    out
}

/// W3C forbids all-zero ids; a hash that is all zeros (never in practice)
/// gets a last byte of 1.
fn non_zero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id.iter().all(|b| *b == 0) {
        id[N - 1] = 1;
    }
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_documented_hashes_in_w3c_form() {
        let t = PollTrace::of("pc", "patients", 1_700_000_000_123);
        let full = hex(&Sha256::digest(b"stamp-relay/pc/patients/1700000000123"));
        assert_eq!(t.trace_hex(), full[..32]);
        let append = hex(&Sha256::digest(
            b"stamp-relay/pc/patients/1700000000123/append",
        ));
        assert_eq!(
            t.append_parent(),
            format!("00-{}-{}-01", &full[..32], &append[..16])
        );
        let tp = t.poll_parent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert!(
            tp.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_lowercase())
        );
        assert_ne!(t.poll_span, t.append_span);
        assert_ne!(t, PollTrace::of("pc", "patients", 1_700_000_000_124));
        assert_eq!(non_zero([0u8; 8]), [0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
