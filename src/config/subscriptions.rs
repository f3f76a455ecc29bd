//! The `[[subscriptions]]` section: webhook subscriptions declared in the
//! file (docs/webhooks.md, "Subscriptions in the configuration file"). This layer
//! checks what needs nothing but the file and the environment (the id, the
//! signing secret); the rules a subscription shares with the API are
//! checked by `declared.rs` with the API's own functions.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::Secret;

/// One `[[subscriptions]]` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Its id in the store and the API; the entry is found by it at restarts.
    pub id: String,
    pub url: String,
    /// `"source/resource"` names, or `["*"]`.
    pub resources: Vec<String>,
    /// The environment variable holding the `whsec_<base64>` signing secret.
    pub secret_env: String,
    #[serde(default)]
    pub ops: Vec<String>,
    /// As the API's `filters`: a list of filters that must all match.
    #[serde(default)]
    pub filters: Option<serde_json::Value>,
    /// As the API's `fields`: record field paths, `[]` for thin events.
    #[serde(default)]
    pub fields: Option<serde_json::Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub rate_limit: Option<u32>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub previous: bool,
    /// Where delivery starts when the relay first creates it: `"now"`,
    /// `"beginning"` or `{"source/resource" = stamp}`.
    #[serde(default)]
    pub start: Option<serde_json::Value>,
    /// A start at the beginning of a table whose retention removed events
    /// begins at the oldest event kept (a warning in the log) instead of
    /// leaving the subscription disabled (docs/replay.md).
    #[serde(default)]
    pub from_oldest_kept: bool,
    /// The `[[consumers]]` entry it belongs to; absent: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

/// A `[[subscriptions]]` entry with its secret read from the environment.
#[derive(Debug, Clone)]
pub struct SubscriptionDecl {
    pub settings: SubscriptionConfig,
    pub secret: Secret,
}

/// A signing secret in the Standard Webhooks form, `whsec_` and the base64
/// of 24 to 64 random bytes. The error never shows the value.
pub fn check_webhook_secret(secret: &str) -> Result<(), String> {
    let key = secret
        .strip_prefix("whsec_")
        .ok_or("must start with whsec_ (the Standard Webhooks form, whsec_<base64>)")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| "the part after whsec_ is not base64")?;
    if !(24..=64).contains(&bytes.len()) {
        return Err(format!(
            "the key is {} bytes; use 24 to 64 random bytes (e.g. whsec_$(head -c 32 /dev/urandom | base64))",
            bytes.len()
        ));
    }
    Ok(())
}
