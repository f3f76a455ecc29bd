//! Custom headers of a subscription: which names it may not set, and what
//! a value may hold.

use std::collections::BTreeMap;

use super::{Invalid, invalid};

/// Headers the relay sets itself: a subscription may not override them.
const SET_BY_RELAY: [&str; 4] = ["content-type", "content-length", "host", "user-agent"];

/// Hop-by-hop headers (RFC 9110 §7.6.1) and their kin: they steer the
/// connection or the message framing, not the receiver, and set by hand
/// they would corrupt the request (`transfer-encoding`) or talk to a proxy.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// Why a custom header name may not be used, or None when it may.
pub fn reserved_header(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    if SET_BY_RELAY.contains(&name.as_str()) {
        Some("is set by the relay and cannot be overridden")
    } else if name.starts_with("webhook-") {
        Some("is reserved for the Standard Webhooks signature headers")
    } else if HOP_BY_HOP.contains(&name.as_str()) || name.starts_with("proxy-") {
        Some("is a hop-by-hop or proxy header and cannot be sent to a receiver")
    } else {
        None
    }
}

pub fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if headers.len() > 32 {
        return Err(invalid("headers", "at most 32 custom headers"));
    }
    for (k, v) in headers {
        let field = format!("headers.{k}");
        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(invalid(field, "is not a valid header name"));
        }
        if let Some(why) = reserved_header(k) {
            return Err(invalid(field, format!("{k} {why}")));
        }
        // Visible ASCII and spaces: other bytes are obsolete in header
        // values (RFC 9110 §5.5), and receivers read them differently.
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(invalid(
                field,
                "must be printable ASCII (no control characters or non-ASCII text)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        let mut h = BTreeMap::new();
        h.insert("X-Team".to_string(), "care".to_string());
        assert!(validate_headers(&h).is_ok());
        for bad in ["caf\u{e9}", "a\u{84}", "line\r\nbreak", "tab\there"] {
            let one = BTreeMap::from([("X-Team".to_string(), bad.to_string())]);
            assert_eq!(validate_headers(&one).unwrap_err().field, "headers.X-Team");
        }
        h.insert("Webhook-Signature".to_string(), "x".to_string());
        assert_eq!(
            validate_headers(&h).unwrap_err().field,
            "headers.Webhook-Signature"
        );
        for name in [
            "Transfer-Encoding",
            "connection",
            "TE",
            "upgrade",
            "Proxy-Authorization",
            "proxy-connection",
            "Host",
            "content-length",
            "keep-alive",
            "trailer",
            "webhook-anything",
            "Content-Type",
        ] {
            let one = BTreeMap::from([(name.to_string(), "x".to_string())]);
            let e = validate_headers(&one).unwrap_err();
            assert_eq!(e.field, format!("headers.{name}"));
            assert!(e.message.starts_with(name), "{}", e.message);
        }
    }
}
