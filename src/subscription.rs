//! Webhook subscriptions: the stored model and the validation of what API
//! clients send. Pure logic; persistence is in the store, HTTP in `api`.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{
    events::{Op, StreamId},
    store::Target,
};

mod headers;
pub use headers::{reserved_header, validate_headers};

pub const MAX_BATCH: u32 = 1000;
/// Requests in flight per subscription and table at most.
pub const MAX_IN_FLIGHT: u32 = 256;
/// Requests in flight per subscription and table unless the subscription says.
pub const DEFAULT_IN_FLIGHT: u32 = 32;

fn default_in_flight() -> u32 {
    DEFAULT_IN_FLIGHT
}

/// A subscription as stored. `secret` never leaves the relay except in the
/// answer to creation and rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    /// `source/resource` names, or `*` for every target.
    pub resources: Vec<String>,
    /// Empty means every op.
    pub ops: Vec<Op>,
    /// Where delivery starts, per target (`source/resource` -> stream ID).
    pub start: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub batch_size: u32,
    /// Requests in flight at once per table; never two of one record, so 1
    /// sends one request at a time.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// Requests per second at most; none means unlimited.
    pub rate_limit: Option<u32>,
    pub enabled: bool,
    pub description: String,
    pub secret: String,
    /// The secret before the last rotation and when it stops being signed with (unix ms).
    pub previous_secret: Option<(String, u64)>,
    /// Why delivery disabled it (410 Gone, continuous failure); cleared on re-enable.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Raised by every update; a write names the version it read, so two
    /// updates at once cannot lose one another (see `store::update_subscription`).
    #[serde(default)]
    pub version: u64,
    /// Events carry the old values of the fields that changed (src/previous.rs).
    #[serde(default)]
    pub previous: bool,
}

impl Subscription {
    /// Where delivery of `target` begins before the first claim: after this ID.
    pub fn start_of(&self, target: &Target) -> StreamId {
        self.start
            .get(&target.to_string())
            .and_then(|s| s.parse().ok())
            .unwrap_or(StreamId::ZERO)
    }

    /// Whether this subscription receives events of `target`.
    pub fn covers(&self, target: &Target) -> bool {
        let name = target.to_string();
        self.resources.iter().any(|r| r == "*" || *r == name)
    }
}

/// A fresh `whsec_` secret: base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn new_id() -> String {
    format!("sub_{}", uuid::Uuid::new_v4().simple())
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StartSpec {
    Named(String),
    Stamps(BTreeMap<String, u64>),
}

/// The body of `POST /v1/subscriptions`. An optional field may be left out
/// but not sent as `null` (openapi.yaml gives none of them a null).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub url: String,
    pub resources: Vec<String>,
    #[serde(default)]
    pub ops: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    pub start: Option<StartSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "present")]
    pub batch_size: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub max_in_flight: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub previous: Option<bool>,
}

/// The body of `PATCH /v1/subscriptions/{id}`: every field optional, none
/// `null` but `rate_limit`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default, deserialize_with = "present")]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub resources: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub ops: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "present")]
    pub batch_size: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub max_in_flight: Option<u32>,
    /// `null` removes the limit; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub previous: Option<bool>,
}

/// A field that is there: `Some` of its value, which for a plain `T` may
/// not be `null` (absent fields get `None` from `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A field that failed validation, for a problem answer naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A receiver URL as logs may show it: scheme, host and port only. Webhook
/// URLs often carry a token in their path or query (or credentials), and
/// logs travel further than the API that shows the whole URL to admins.
pub fn url_for_logs(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.path() == "/" && u.query().is_none() => u.origin().ascii_serialization(),
        Ok(u) => format!("{}/…", u.origin().ascii_serialization()),
        Err(_) => "(not a URL)".into(),
    }
}

pub fn validate_url(url: &str) -> Result<(), Invalid> {
    let u =
        url::Url::parse(url).map_err(|e| invalid("url", format!("{url:?} is not a URL ({e})")))?;
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
    Ok(())
}

pub fn validate_resources(resources: &[String], known: &[Target]) -> Result<(), Invalid> {
    if resources.is_empty() {
        return Err(invalid(
            "resources",
            "list at least one \"source/resource\", or [\"*\"]",
        ));
    }
    for (i, r) in resources.iter().enumerate() {
        if r != "*" && !known.iter().any(|t| t.to_string() == *r) {
            let names: Vec<String> = known.iter().map(Target::to_string).collect();
            return Err(invalid(
                format!("resources[{i}]"),
                format!(
                    "{r:?} is not a configured target; known: {}",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

pub fn parse_ops(ops: &[String]) -> Result<Vec<Op>, Invalid> {
    ops.iter()
        .enumerate()
        .map(|(i, o)| {
            o.parse().map_err(|_| {
                invalid(
                    format!("ops[{i}]"),
                    format!("{o:?} is not one of created, updated, deleted, restored"),
                )
            })
        })
        .collect()
}

pub fn validate_batch(batch: u32) -> Result<(), Invalid> {
    between_1_and("batch_size", batch, MAX_BATCH, "")
}

pub fn validate_in_flight(n: u32) -> Result<(), Invalid> {
    between_1_and("max_in_flight", n, MAX_IN_FLIGHT, " requests")
}

fn between_1_and(field: &str, n: u32, max: u32, unit: &str) -> Result<(), Invalid> {
    if n == 0 || n > max {
        return Err(invalid(field, format!("must be between 1 and {max}{unit}")));
    }
    Ok(())
}

pub fn validate_rate(rate: Option<u32>) -> Result<(), Invalid> {
    match rate {
        Some(0) | Some(10_001..) => Err(invalid(
            "rate_limit",
            "must be between 1 and 10000 requests per second",
        )),
        _ => Ok(()),
    }
}

pub fn validate_description(d: &str) -> Result<(), Invalid> {
    if d.chars().count() > 1000 {
        return Err(invalid("description", "at most 1000 characters"));
    }
    Ok(())
}

/// Resolves the start point against the targets' current positions
/// (`now` is each target's last ID at creation).
pub fn resolve_start(
    spec: Option<&StartSpec>,
    targets: &[Target],
    now: &HashMap<Target, StreamId>,
) -> Result<BTreeMap<String, String>, Invalid> {
    let mut out = BTreeMap::new();
    match spec {
        None => resolve_named("now", targets, now, &mut out)?,
        Some(StartSpec::Named(name)) => resolve_named(name, targets, now, &mut out)?,
        Some(StartSpec::Stamps(map)) => {
            for (name, stamp) in map {
                if !targets.iter().any(|t| t.to_string() == *name) {
                    return Err(invalid(
                        format!("start.{name}"),
                        "is not one of the subscription's resources",
                    ));
                }
                out.insert(name.clone(), StreamId::new(*stamp, 0).to_string());
            }
            for t in targets {
                out.entry(t.to_string())
                    .or_insert_with(|| now.get(t).copied().unwrap_or_default().to_string());
            }
        }
    }
    Ok(out)
}

fn resolve_named(
    name: &str,
    targets: &[Target],
    now: &HashMap<Target, StreamId>,
    out: &mut BTreeMap<String, String>,
) -> Result<(), Invalid> {
    for t in targets {
        let id = match name {
            "now" => now.get(t).copied().unwrap_or_default(),
            "beginning" => StreamId::ZERO,
            _ => {
                return Err(invalid(
                    "start",
                    "must be \"now\", \"beginning\" or {\"source/resource\": stamp, ...}",
                ));
            }
        };
        out.insert(t.to_string(), id.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn logged_urls_keep_only_the_origin() {
        assert_eq!(
            super::url_for_logs("https://user:pw@hooks.example.com:8443/T1/B2/secret?token=abc"),
            "https://hooks.example.com:8443/…"
        );
        assert_eq!(
            super::url_for_logs("https://hooks.example.com/"),
            "https://hooks.example.com"
        );
        assert_eq!(super::url_for_logs("nonsense"), "(not a URL)");
    }

    use super::*;

    fn targets() -> Vec<Target> {
        vec![Target::new("pc", "patients"), Target::new("pc", "users")]
    }

    #[test]
    fn secrets_are_whsec_and_32_bytes() {
        let s = new_secret();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
        assert_ne!(s, new_secret());
    }

    #[test]
    fn resources_must_be_configured() {
        assert!(validate_resources(&["pc/patients".into()], &targets()).is_ok());
        assert!(validate_resources(&["*".into()], &targets()).is_ok());
        let e =
            validate_resources(&["pc/patients".into(), "pc/nope".into()], &targets()).unwrap_err();
        assert_eq!(e.field, "resources[1]");
        assert!(validate_resources(&[], &targets()).is_err());
    }

    #[test]
    fn urls_and_limits_are_checked() {
        assert!(validate_url("https://example.com/hook").is_ok());
        assert_eq!(validate_url("ftp://x").unwrap_err().field, "url");
        assert!(validate_url("https://u:p@example.com").is_err());
        assert!(validate_url("not a url").is_err());
        assert!(
            validate_batch(0).is_err()
                && validate_batch(1001).is_err()
                && validate_batch(100).is_ok()
        );
        assert!(validate_in_flight(0).is_err() && validate_in_flight(257).is_err());
        assert!(validate_in_flight(1).is_ok() && validate_in_flight(256).is_ok());
        assert!(validate_rate(Some(0)).is_err() && validate_rate(None).is_ok());
        assert_eq!(parse_ops(&["deleted".into()]).unwrap(), vec![Op::Deleted]);
        assert_eq!(parse_ops(&["x".into()]).unwrap_err().field, "ops[0]");
    }

    #[test]
    fn optional_fields_may_be_absent_but_not_null() {
        let create = |extra: &str| {
            serde_json::from_str::<CreateRequest>(&format!(
                r#"{{"url":"https://x.example","resources":["*"]{extra}}}"#
            ))
        };
        assert!(create("").is_ok());
        assert!(create(r#","description":null"#).is_err());
        assert!(create(r#","batch_size":null"#).is_err());
        let patch = |body: &str| serde_json::from_str::<PatchRequest>(body);
        assert!(patch(r#"{"resources":null}"#).is_err());
        assert_eq!(
            patch(r#"{"rate_limit":null}"#).unwrap().rate_limit,
            Some(None)
        );
        assert_eq!(patch("{}").unwrap().rate_limit, None);
    }

    #[test]
    fn start_points_resolve_per_target() {
        let t = targets();
        let now: HashMap<Target, StreamId> = [(t[0].clone(), StreamId::new(9, 0))].into();
        let s = resolve_start(None, &t, &now).unwrap();
        assert_eq!(s["pc/patients"], "9-0");
        assert_eq!(s["pc/users"], "0-0");
        let b = resolve_start(Some(&StartSpec::Named("beginning".into())), &t, &now).unwrap();
        assert_eq!(b["pc/patients"], "0-0");
        let m: BTreeMap<String, u64> = [("pc/users".to_string(), 4)].into();
        let s = resolve_start(Some(&StartSpec::Stamps(m)), &t, &now).unwrap();
        assert_eq!(s["pc/users"], "4-0");
        assert_eq!(s["pc/patients"], "9-0");
        assert!(resolve_start(Some(&StartSpec::Named("later".into())), &t, &now).is_err());
    }
}
