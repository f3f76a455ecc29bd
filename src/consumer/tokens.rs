//! A consumer's credentials: API tokens (`ct.<consumer>.<secret>`, stored
//! as SHA-256 digests and shown once) and portal links
//! (`pl.<consumer>.<expiry>.<tag>`): an HMAC-SHA256 over the consumer, the
//! expiry and the consumer's link generation, with a key every instance
//! shares, so a link is short-lived and revoking (raising the generation)
//! voids every link issued before. Both name their consumer in clear so
//! one document read checks them.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A token issued through `POST /v1/consumers/{name}/tokens`, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// Names the token in the API (`DELETE …/tokens/{id}`); not secret.
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created_ms: u64,
}

/// A new token for `consumer`: the value to show once and what to store.
pub fn issue(consumer: &str, description: &str, now_ms: u64) -> (String, IssuedToken) {
    let secret: [u8; 32] = rand::random();
    let token = format!("ct.{consumer}.{}", B64.encode(secret));
    let id: [u8; 6] = rand::random();
    let stored = IssuedToken {
        id: hex(&id),
        description: description.into(),
        sha256: hex(&Sha256::digest(token.as_bytes())),
        created_ms: now_ms,
    };
    (token, stored)
}

/// The consumer a presented consumer token names, if it has that shape.
pub fn token_consumer(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix("ct.")?;
    let (name, secret) = rest.split_once('.')?;
    (!name.is_empty() && !secret.is_empty()).then_some(name)
}

/// Whether `presented` is one of `issued`, compared through digests in
/// constant time, every token checked.
pub fn token_matches(issued: &[IssuedToken], presented: &str) -> bool {
    let digest = hex(&Sha256::digest(presented.as_bytes()));
    issued.iter().fold(false, |found, t| {
        found | ct_eq(t.sha256.as_bytes(), digest.as_bytes())
    })
}

/// The key portal links are signed with (shared by every instance).
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(***)")
    }
}

impl LinkKey {
    pub fn new(bytes: [u8; 32]) -> LinkKey {
        LinkKey(bytes)
    }

    /// A new random key, base64 (as stored).
    pub fn generate() -> String {
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    }

    /// The key from its stored base64.
    pub fn decode(stored: &str) -> Option<LinkKey> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(stored)
            .ok()?;
        Some(LinkKey(bytes.try_into().ok()?))
    }

    fn mac(&self, consumer: &str, expiry: u64, generation: u64) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(
            format!("stamp-relay portal link\n{consumer}\n{expiry}\n{generation}").as_bytes(),
        );
        mac
    }

    /// A portal link token for `consumer`, valid until `expiry` (unix s).
    pub fn sign(&self, consumer: &str, expiry: u64, generation: u64) -> String {
        let tag = self
            .mac(consumer, expiry, generation)
            .finalize()
            .into_bytes();
        format!("pl.{consumer}.{expiry}.{}", B64.encode(tag))
    }

    /// Whether `link` (parsed by [`parse_link`]) is valid at `now_secs`
    /// for the consumer's current `generation`.
    pub fn verify(&self, link: &Link<'_>, generation: u64, now_secs: u64) -> bool {
        let Ok(tag) = B64.decode(link.tag) else {
            return false;
        };
        link.expiry > now_secs
            && self
                .mac(link.consumer, link.expiry, generation)
                .verify_slice(&tag)
                .is_ok()
    }
}

/// A presented portal link token, not yet verified.
pub struct Link<'a> {
    pub consumer: &'a str,
    pub expiry: u64,
    tag: &'a str,
}

/// The parts of a portal link token, if it has that shape.
pub fn parse_link(presented: &str) -> Option<Link<'_>> {
    let mut parts = presented.strip_prefix("pl.")?.split('.');
    let (Some(consumer), Some(expiry), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(Link {
        consumer,
        expiry: expiry.parse().ok()?,
        tag,
    })
}

/// Constant-time equality of two byte strings (their lengths are not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_their_digest_only() {
        let (token, stored) = issue("care", "", 1);
        assert_eq!(token_consumer(&token), Some("care"));
        assert!(token_matches(std::slice::from_ref(&stored), &token));
        assert!(!token_matches(&[stored], &format!("{token}x")));
    }

    #[test]
    fn links_expire_and_are_revoked_by_the_generation() {
        let key = LinkKey::new([7; 32]);
        let link = key.sign("care", 100, 3);
        let parsed = parse_link(&link).unwrap();
        assert_eq!(parsed.consumer, "care");
        assert!(key.verify(&parsed, 3, 99));
        assert!(!key.verify(&parsed, 3, 100), "expired");
        assert!(!key.verify(&parsed, 4, 99), "revoked");
        assert!(!LinkKey::new([8; 32]).verify(&parsed, 3, 99), "other key");
        let forged = link.replace("pl.care.", "pl.lab.");
        assert!(!key.verify(&parse_link(&forged).unwrap(), 3, 99));
    }
}
