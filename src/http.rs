//! HTTP helpers both clients share, the upstream poller's and the webhook
//! sender's: the retry delay, `Retry-After`, and error chains in words.

use std::time::Duration;

use rand::Rng;

/// Delay before retry number `attempt` (1-based): exponential from `base`,
/// capped at `max`, with "equal jitter" so retries of many relays spread out.
pub fn backoff(base: Duration, max: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    let half = d / 2;
    half + half.mul_f64(rng.random::<f64>())
}

/// Parses `Retry-After` as seconds or an HTTP date.
pub fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Text a peer chose (an upstream's error body, a receiver's answer, a
/// header value), fit for a log line: control characters, newlines
/// included, are shown as escapes (`\n`, `\u{1b}`), so a peer can neither
/// forge log lines nor send escape sequences to an operator's terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// The innermost source of an error: what actually went wrong.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    printable(&cur.to_string())
}

/// An error and its sources, outermost first, joined by ": ".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// Trusts the CA certificates of the PEM file at `path` (the setting `key`)
/// beside the system's roots; the error names the setting and the file.
pub fn trust_ca_file(
    builder: reqwest::ClientBuilder,
    path: Option<&std::path::Path>,
    key: &str,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(path) = path else {
        return Ok(builder);
    };
    let fix = "point it at a PEM file of the CA certificates that signed the server's certificate";
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("{key}: cannot read {}: {e}; {fix}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("{key}: {} holds no PEM certificate; {fix}", path.display())
        })?;
    Ok(certs
        .into_iter()
        .fold(builder, |b, c| b.add_root_certificate(c)))
}

/// At most `cap` bytes of an answer's body, and whether there was more:
/// read chunk by chunk and stopped at the cap, so a peer cannot make the
/// relay hold more than that, whatever it sends. Dropping the answer
/// unread closes its connection.
pub async fn read_prefix(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// An answer's whole body, or `None` if it is larger than `cap` (told by
/// its `Content-Length` before anything is read, or found while reading).
pub async fn read_capped(
    resp: reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(None);
    }
    let (body, more) = read_prefix(resp, cap).await?;
    Ok((!more).then_some(body))
}

/// A byte count in words: `32 MiB`, `4 KiB`, `100 bytes`.
pub fn size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut rng = StdRng::seed_from_u64(1);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 1..10 {
            let d = backoff(base, max, attempt, &mut rng);
            let full = (base * 2u32.pow(attempt - 1)).min(max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_names_the_setting() {
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        let e = super::trust_ca_file(
            reqwest::Client::builder(),
            Some(missing),
            "delivery.tls_ca_file",
        );
        let e = e.err().unwrap().to_string();
        assert!(
            e.starts_with("delivery.tls_ca_file: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = super::trust_ca_file(
            reqwest::Client::builder(),
            Some(&junk),
            "sources.pc.tls_ca_file",
        );
        let e = e.err().unwrap().to_string();
        assert!(
            e.contains("sources.pc.tls_ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
    }
}
