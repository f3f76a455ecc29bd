//! Upstream credentials given through `/v1/sources`, sealed at rest with
//! XChaCha20-Poly1305 under a key from the environment
//! (`STAMP_RELAY_SOURCE_KEY`, 32 bytes in base64). The source's name is the
//! associated data, so a sealed blob copied onto another source does not
//! open. `STAMP_RELAY_SOURCE_KEY_PREVIOUS` may hold the key before a
//! rotation: blobs it sealed still open, and the next write of the source
//! seals them under the current key (docs/security.md).

use std::{collections::BTreeMap, fmt};

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use hmac::{KeyInit as _, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::config::{PREVIOUS_SOURCE_KEY_VAR as PREVIOUS_KEY_VAR, SOURCE_KEY_VAR as KEY_VAR};
use crate::config::{SourceKeys, source_key_bytes};

/// The credential values of one source by name (`client_id`,
/// `client_secret`, `username`, `password`, `token`). `Debug` prints `***`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credentials(pub BTreeMap<String, String>);

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials({:?}: ***)",
            self.0.keys().collect::<Vec<_>>()
        )
    }
}

/// A sealed blob as stored: which key sealed it, the nonce and the
/// ciphertext (with its tag), in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The first 8 hex digits of SHA-256 of the key: names the key, not it.
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// The key (and the previous one) sealing credentials. `Debug` prints its id.
#[derive(Clone)]
pub struct SourceKey {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
}

impl fmt::Debug for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceKey({}: ***)", key_id(&self.current))
    }
}

fn key_id(key: &[u8; 32]) -> String {
    hex8(&Sha256::digest(key))
}

fn hex8(bytes: &[u8]) -> String {
    bytes[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl SourceKey {
    /// The keys the configuration read: `Ok(None)` when [`KEY_VAR`] is
    /// unset (sources without credentials still work), an error naming
    /// the variable when one is malformed.
    pub fn from_config(keys: &SourceKeys) -> Result<Option<SourceKey>, String> {
        let Some(current) = &keys.current else {
            return Ok(None);
        };
        let current = source_key_bytes(KEY_VAR, current.expose())?;
        let previous = keys
            .previous
            .as_ref()
            .map(|v| source_key_bytes(PREVIOUS_KEY_VAR, v.expose()))
            .transpose()?;
        Ok(Some(SourceKey { current, previous }))
    }

    /// The key from the environment through `env` (see `from_config`).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<SourceKey>, String> {
        let keys = SourceKeys::from_env(env).map_err(|e| e.join("; "))?;
        Self::from_config(&keys)
    }

    pub fn new(current: [u8; 32]) -> SourceKey {
        SourceKey {
            current,
            previous: None,
        }
    }

    /// Seals `creds` for source `name` under the current key.
    pub fn seal(&self, name: &str, creds: &Credentials) -> Sealed {
        let cipher = XChaCha20Poly1305::new_from_slice(&self.current).expect("a 32-byte key");
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let plain = serde_json::to_vec(creds).expect("a map of strings serializes");
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: name.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length the API accepts");
        Sealed {
            key_id: key_id(&self.current),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        }
    }

    /// Opens what [`SourceKey::seal`] sealed for `name`, under the key its
    /// `key_id` names (current or previous); the error says which key is
    /// missing, never anything of the secret.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<Credentials, String> {
        let key = [Some(self.current), self.previous]
            .into_iter()
            .flatten()
            .find(|k| key_id(k) == sealed.key_id)
            .ok_or_else(|| {
                format!(
                    "the credentials of source {name:?} were sealed under key {}, which is neither \
                     {KEY_VAR} nor {PREVIOUS_KEY_VAR}; set the key they were sealed with, or give \
                     the source new credentials (PATCH its auth)",
                    sealed.key_id
                )
            })?;
        let unreadable = || {
            format!("the sealed credentials of source {name:?} do not open (altered in the store?)")
        };
        let nonce = STANDARD.decode(&sealed.nonce).map_err(|_| unreadable())?;
        let ct = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| unreadable())?;
        if nonce.len() != 24 {
            return Err(unreadable());
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&key).expect("a 32-byte key");
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| unreadable())?;
        serde_json::from_slice(&plain).map_err(|_| unreadable())
    }

    /// A key for another purpose derived from the current one
    /// (HMAC-SHA256 of `purpose`), so one secret serves several uses
    /// without one use revealing another's key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.current).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `sealed` is under an older key than the current one.
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != key_id(&self.current)
    }

    /// A short fingerprint of the credentials of `name`: the first 8 hex of
    /// an HMAC-SHA256 under a key derived from the sealing key, so it tells
    /// one secret from another without a way to test guesses offline
    /// (someone reading the store or an answer has no key).
    pub fn fingerprint(&self, name: &str, creds: &Credentials) -> String {
        let derived = Sha256::new()
            .chain_update(b"stamp-relay source fingerprint\0")
            .chain_update(self.current)
            .finalize();
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&derived).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        for (k, v) in &creds.0 {
            mac.update(&[0]);
            mac.update(k.as_bytes());
            mac.update(&[0]);
            mac.update(v.as_bytes());
        }
        hex8(&mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials(
            [(
                "client_secret".to_string(),
                "hunter2-very-secret".to_string(),
            )]
            .into_iter()
            .collect(),
        )
    }

    #[test]
    fn seals_and_opens_bound_to_the_source_name() {
        let key = SourceKey::new([7; 32]);
        let sealed = key.seal("acme", &creds());
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("hunter2"), "{stored}");
        assert_eq!(key.open("acme", &sealed).unwrap(), creds());
        assert!(key.open("other", &sealed).is_err(), "the name is bound in");
        let wrong = SourceKey::new([8; 32]);
        let e = wrong.open("acme", &sealed).unwrap_err();
        assert!(e.contains(KEY_VAR) && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_previous_key_still_opens_and_is_stale() {
        let old = SourceKey::new([1; 32]);
        let sealed = old.seal("acme", &creds());
        let env = |v: &str| match v {
            KEY_VAR => Some(STANDARD.encode([2u8; 32])),
            PREVIOUS_KEY_VAR => Some(STANDARD.encode([1u8; 32])),
            _ => None,
        };
        let key = SourceKey::from_env(&env).unwrap().unwrap();
        assert_eq!(key.open("acme", &sealed).unwrap(), creds());
        assert!(key.is_stale(&sealed));
        assert!(!key.is_stale(&key.seal("acme", &creds())));
    }

    #[test]
    fn a_malformed_key_names_its_variable_and_debug_hides_secrets() {
        let env = |v: &str| (v == KEY_VAR).then(|| STANDARD.encode([1u8; 16]));
        let e = SourceKey::from_env(&env).unwrap_err();
        assert!(e.contains(KEY_VAR) && e.contains("16 bytes"), "{e}");
        assert!(SourceKey::from_env(&|_| None).unwrap().is_none());
        assert!(!format!("{:?}", creds()).contains("hunter2"));
        let key = SourceKey::new([7; 32]);
        let (a, b) = (
            key.fingerprint("acme", &creds()),
            key.fingerprint("acme", &Credentials::default()),
        );
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }
}
