//! [`SigningSecret`]: a subscription's Standard Webhooks signing secret.
//! Stored and answered (at creation and rotation only) as the string it
//! is; `Debug` never shows it, so no log line or error can carry it.

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SigningSecret(String);

impl SigningSecret {
    /// A fresh `whsec_` secret: base64 of 32 random bytes.
    pub fn generate() -> SigningSecret {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SigningSecret(format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    /// One given by an operator (the configuration file), checked there.
    pub fn given(s: impl Into<String>) -> SigningSecret {
        SigningSecret(s.into())
    }

    /// The secret itself: for signing, and the answers that hand it out.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SigningSecret {
    fn from(s: &str) -> SigningSecret {
        SigningSecret(s.to_string())
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("whsec_***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_whsec_and_32_bytes() {
        use base64::Engine;
        let s = SigningSecret::generate();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.as_str().strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_ne!(s, SigningSecret::generate());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = SigningSecret::generate();
        assert!(s.as_str().starts_with("whsec_"));
        assert_eq!(format!("{s:?}"), "whsec_***");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!("\"{}\"", s.as_str()));
        assert_eq!(serde_json::from_str::<SigningSecret>(&json).unwrap(), s);
    }
}
