//! [`WebhookUrl`]: a receiver URL, parsed and checked once where it enters
//! (the API, the configuration file) and stored as the string it was given,
//! so documents written before the type read and write as they were.

use serde::{Deserialize, Serialize};

use super::{Invalid, invalid};

/// An `http` or `https` URL naming a host, without credentials (headers
/// carry those). Where it resolves to is the SSRF guard's business, at
/// delivery time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    given: String,
    parsed: url::Url,
}

impl WebhookUrl {
    pub fn parse(given: &str) -> Result<WebhookUrl, Invalid> {
        let u = url::Url::parse(given)
            .map_err(|e| invalid("url", format!("{given:?} is not a URL ({e})")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(invalid("url", "must be an http or https URL"));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(invalid("url", "must name a host"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(invalid(
                "url",
                "must not carry credentials; use headers instead",
            ));
        }
        Ok(WebhookUrl {
            given: given.to_string(),
            parsed: u,
        })
    }

    /// As given (and stored, and shown to admins).
    pub fn as_str(&self) -> &str {
        &self.given
    }

    pub fn url(&self) -> &url::Url {
        &self.parsed
    }

    /// As logs may show it (`url_for_logs`).
    pub fn for_logs(&self) -> String {
        origin_for_logs(&self.parsed)
    }
}

/// A receiver URL as logs may show it: scheme, host and port only. Webhook
/// URLs often carry a token in their path or query (or credentials), and
/// logs travel further than the API that shows the whole URL to admins.
pub fn url_for_logs(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => origin_for_logs(&u),
        Err(_) => "(not a URL)".into(),
    }
}

/// Scheme, host and port only, and `/…` when there was more: webhook URLs
/// often carry a token in their path or query, and logs travel further
/// than the API.
pub(super) fn origin_for_logs(u: &url::Url) -> String {
    let origin = u.origin().ascii_serialization();
    if u.path() == "/" && u.query().is_none() {
        origin
    } else {
        format!("{origin}/…")
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.given)
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.given)
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WebhookUrl, D::Error> {
        let given = String::deserialize(d)?;
        WebhookUrl::parse(&given).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_keep_only_the_origin() {
        assert_eq!(
            url_for_logs("https://user:pw@hooks.example.com:8443/T1/B2/secret?token=abc"),
            "https://hooks.example.com:8443/…"
        );
        assert_eq!(
            url_for_logs("https://hooks.example.com/"),
            "https://hooks.example.com"
        );
        assert_eq!(url_for_logs("nonsense"), "(not a URL)");
    }

    #[test]
    fn urls_are_checked_and_kept_as_given() {
        let u = WebhookUrl::parse("https://Hooks.example.com:8443/T1/B2?token=abc").unwrap();
        assert_eq!(u.as_str(), "https://Hooks.example.com:8443/T1/B2?token=abc");
        assert_eq!(u.url().host_str(), Some("hooks.example.com"));
        assert_eq!(u.for_logs(), "https://hooks.example.com:8443/…");
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, r#""https://Hooks.example.com:8443/T1/B2?token=abc""#);
        assert_eq!(serde_json::from_str::<WebhookUrl>(&json).unwrap(), u);
        let bare = WebhookUrl::parse("https://hooks.example.com").unwrap();
        assert_eq!(bare.for_logs(), "https://hooks.example.com");
        assert_eq!(WebhookUrl::parse("ftp://x").unwrap_err().field, "url");
        assert!(WebhookUrl::parse("https://u:p@example.com").is_err());
        assert!(WebhookUrl::parse("not a url").is_err());
        assert!(serde_json::from_str::<WebhookUrl>(r#""ftp://x""#).is_err());
    }
}
