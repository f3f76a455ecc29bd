//! Standard Webhooks signatures: `webhook-signature` is `v1,` + base64 of
//! HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed with the base64 part of
//! a `whsec_` secret. During a rotation grace period both the new and the
//! old secret sign, space-separated, so receivers can switch at leisure.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The HMAC key of a `whsec_` secret.
pub fn key(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
}

/// A secret's HMAC state with the key already absorbed: cloned for each
/// signature instead of decoding and hashing the key again.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl Key {
    pub fn new(secret: &str) -> Key {
        let key = key(secret).unwrap_or_else(|| secret.as_bytes().to_vec());
        Key(<Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("HMAC takes any key length"))
    }

    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    Key::new(secret).sign(id, timestamp, body)
}

/// The header value for every currently valid key.
pub fn header<'a>(
    keys: impl IntoIterator<Item = &'a Key>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.into_iter()
        .map(|k| k.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any signature in `header` was made with `secret` (for tests and
/// the test receiver).
/// The `webhook-id` of an event id (docs/events.md): the id with every
/// byte outside printable ASCII, space and `%` percent-encoded (`%XX`, upper
/// case), so the header is always printable ASCII and decoding it gives
/// the CloudEvents id back. Ids are at most 256 bytes (`record.rs`), so the
/// header stays short.
pub fn webhook_id(id: &str) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_graphic() && b != b'%';
    if id.bytes().all(plain) {
        return id.into();
    }
    let mut out = String::with_capacity(id.len() * 3);
    for b in id.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

pub fn verify(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let want = sign(secret, id, timestamp, body);
    header.split(' ').any(|sig| {
        sig.len() == want.len()
            && sig
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_ids_are_printable_ascii_and_decode_to_the_event_id() {
        assert_eq!(webhook_id("pc:patients:a-1:42"), "pc:patients:a-1:42");
        assert_eq!(
            webhook_id("pc:patients:Zoë 100%:42"),
            "pc:patients:Zo%C3%AB%20100%25:42"
        );
    }

    /// The test vector of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_vector() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = sign(secret, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body);
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert!(verify(
            secret,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            body,
            &sig
        ));
        assert!(!verify(
            secret,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367554,
            body,
            &sig
        ));
    }

    /// Verification compares every byte: a signature whose differences
    /// cancel out under XOR (two differing characters swapped), a
    /// truncated one, or one with a byte changed does not verify.
    #[test]
    fn verification_rejects_near_misses() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let good = sign(secret, "m", 1, b"{}");
        assert!(verify(secret, "m", 1, b"{}", &good));
        let b = good.as_bytes();
        let (i, j) = (3..b.len())
            .flat_map(|i| (i + 1..b.len()).map(move |j| (i, j)))
            .find(|&(i, j)| b[i] != b[j])
            .expect("a signature has two different characters");
        let mut swapped = b.to_vec();
        swapped.swap(i, j);
        let swapped = String::from_utf8(swapped).unwrap();
        assert!(!verify(secret, "m", 1, b"{}", &swapped), "{swapped}");
        // Two bytes flipped by the same bit also cancel under XOR.
        let mut flipped = b.to_vec();
        flipped[3] ^= 1;
        flipped[4] ^= 1;
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(!verify(secret, "m", 1, b"{}", &flipped), "{flipped}");
        assert!(!verify(secret, "m", 1, b"{}", &good[..good.len() - 1]));
        assert!(!verify(secret, "m", 1, b"{}", &format!("{good}A")));
        assert!(!verify(secret, "m", 1, b"{}", ""));
        assert!(!verify(secret, "m", 1, b"{}", "v1,"));
    }

    /// A `Key` starts every signature from the key-only HMAC state: signing
    /// something else in between, or signing with a clone, gives the same
    /// bytes as the specification vector, and so does a one-key header.
    #[test]
    fn a_prepared_key_signs_each_message_afresh() {
        let key = Key::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let (id, ts) = ("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553);
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let want = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        assert_eq!(key.sign(id, ts, body), want);
        assert_ne!(key.sign("m", 1, b"{}"), want);
        assert_eq!(key.sign(id, ts, body), want);
        assert_eq!(key.clone().sign(id, ts, body), want);
        assert_eq!(header([&key], id, ts, body), want);
    }

    /// A secret that is not base64 keys the HMAC with its own bytes, over
    /// `{id}.{timestamp}.{body}`.
    #[test]
    fn a_secret_that_is_not_base64_keys_with_its_bytes() {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"not base64!").unwrap();
        mac.update(b"m.1.{}");
        let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(sign("not base64!", "m", 1, b"{}"), want);
        assert_eq!(Key::new("not base64!").sign("m", 1, b"{}"), want);
        assert!(verify("not base64!", "m", 1, b"{}", &want));
    }

    /// A signature only verifies for the id, body and secret it was made
    /// with.
    #[test]
    fn verification_rejects_a_tampered_message_or_another_secret() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let sig = sign(secret, "m", 1, b"{}");
        assert!(verify(secret, "m", 1, b"{}", &sig));
        assert!(!verify(secret, "n", 1, b"{}", &sig));
        assert!(!verify(secret, "m", 1, b"{ }", &sig));
        assert!(!verify(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "m",
            1,
            b"{}",
            &sig
        ));
    }

    #[test]
    fn key_is_the_base64_part_of_the_secret() {
        assert_eq!(key("whsec_AAEC"), Some(vec![0, 1, 2]));
        assert_eq!(key("AAEC"), Some(vec![0, 1, 2]));
        assert_eq!(key("whsec_not base64!"), None);
    }

    #[test]
    fn rotation_sends_both_signatures() {
        let (new, old) = (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let h = header(&[Key::new(new), Key::new(old)], "m", 1, b"{}");
        assert_eq!(h.split(' ').count(), 2);
        assert!(verify(new, "m", 1, b"{}", &h) && verify(old, "m", 1, b"{}", &h));
        assert!(!verify(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "m",
            1,
            b"{}",
            &h
        ));
    }
}
