//! Typed configuration: a TOML file overridden by `STAMP_RELAY__SECTION__KEY`
//! environment variables, validated once at startup.
//!
//! Secrets never live in the file: it names environment variables, and
//! [`RawConfig::validate`] resolves them into [`Secret`]s whose `Debug` hides
//! them. Every command loads its configuration with [`load`]; the
//! `[[subscriptions]]` rules shared with the API live above this layer
//! (`declared::problems`), and the commands pass them in.
//! Every error names the key that is wrong and says what to do.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use url::Url;

/// A value read from the environment that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// One Redis; omit this and `redis_cluster` for the embedded SQLite store.
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster, instead of `redis_url`.
    pub redis_cluster: Vec<String>,
    /// A PEM file of the CA that signed the Redis certificate (`rediss://`);
    /// without it, the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// An environment variable holding the Redis ACL user name.
    pub username_env: Option<String>,
    /// An environment variable holding the Redis password.
    pub password_env: Option<String>,
    pub key_prefix: String,
    pub data_dir: PathBuf,
    /// How long a poll lease outlives its last renewal: the time another
    /// instance waits before taking over a table whose poller died.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The name this process holds leases under; empty: the host's name.
    /// Stable across restarts, so a restarted instance takes its own
    /// leases back at once; two running processes must not share it.
    pub instance_id: String,
    pub retention: RetentionConfig,
}

impl StoreConfig {
    /// Whether events live in Redis (one node or a cluster).
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || !self.redis_cluster.is_empty()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster: Vec::new(),
            tls_ca_file: None,
            username_env: None,
            password_env: None,
            key_prefix: "stamp-relay".into(),
            data_dir: PathBuf::from("./stamp-relay-data"),
            lease_ttl: Duration::from_secs(30),
            instance_id: String::new(),
            retention: RetentionConfig::default(),
        }
    }
}

/// How long events stay in a table's stream (docs/redis-layout.md): trimmed by age or
/// length, never past what an enabled subscription has yet to deliver,
/// unless the hard cap says so. Nothing set: events are kept forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Remove events observed longer ago than this.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Keep at most this many events per table.
    pub max_events: Option<u64>,
    /// Keep at most this many events per table even if a subscription has
    /// not delivered them (it then skips what was removed).
    pub hard_max_events: Option<u64>,
    /// How often the poller of a table trims it.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            max_events: None,
            hard_max_events: None,
            interval: Duration::from_secs(60),
        }
    }
}

impl RetentionConfig {
    pub fn enabled(&self) -> bool {
        self.max_age.is_some() || self.max_events.is_some() || self.hard_max_events.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Admin,
    Read,
    /// Acts as a consumer (`consumer`): its subscriptions, its tables.
    Consumer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub scope: Scope,
    pub token_env: String,
    /// A read token sees only these sources' tables (absent: every source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    /// A read token sees only these tables, `source/resource` (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    /// The consumer a token of scope `consumer` acts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

impl TokenConfig {
    /// A token without limits or consumer.
    pub fn new(name: &str, scope: Scope, token_env: &str) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            scope,
            token_env: token_env.into(),
            sources: None,
            resources: None,
            consumer: None,
        }
    }
}

/// How often a live stream (SSE) sends a comment when there is no event,
/// which keeps its connection from counting as idle.
pub const LIVE_KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub tokens: Vec<TokenConfig>,
    /// CloudEvents `type` is `<prefix>.<resource>.<op>`.
    pub event_type_prefix: String,
    /// Longest time a request may take to answer (not a live stream's life).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request's headers; slow
    /// senders are cut off before they reach authentication.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An answer the client has not taken within this closes the
    /// connection (a client that sends requests and never reads).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A connection on which no byte moved for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Live event streams (SSE) at once; past it a stream request gets 503.
    pub max_sse_clients: usize,
    /// Requests without a valid token one client address may make in a
    /// minute; past it the address gets 429 until the minute ends.
    pub max_failed_logins: u32,
    /// The relay's URL as clients reach it (behind a proxy), for the links
    /// of the compatible API; absent: relative links.
    pub public_url: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            event_type_prefix: "io.stamp-relay".into(),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_sse_clients: 256,
            max_failed_logins: 30,
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub allow_private_targets: bool,
    #[serde(with = "humantime_serde_vec")]
    pub retry_schedule: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a rotated-out webhook secret still signs deliveries.
    #[serde(with = "humantime_serde")]
    pub secret_grace: Duration,
    /// Private address blocks webhooks may reach despite the SSRF guard.
    pub allowed_cidrs: Vec<Cidr>,
    /// A receiver's `Retry-After` is honoured up to this.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// A subscription whose deliveries all fail for this long is disabled.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// Events of one subscription and table held back by waiting retries
    /// at most; at the limit that table claims nothing new for it.
    pub max_waiting_retries: usize,
    /// A PEM file of CA certificates trusted for receivers, beside the
    /// system's roots (a private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let h = 3600;
        Self {
            allow_private_targets: false,
            retry_schedule: [5, 300, 1800, 2 * h, 5 * h, 10 * h, 10 * h]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            request_timeout: Duration::from_secs(15),
            secret_grace: Duration::from_secs(24 * 3600),
            allowed_cidrs: Vec::new(),
            max_retry_after: Duration::from_secs(6 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            max_waiting_retries: 5000,
            tls_ca_file: None,
        }
    }
}

/// `humantime_serde` for a list of durations.
mod humantime_serde_vec {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// `[telemetry]`: OpenTelemetry export (docs/tracing.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP collector (`http://host:4318`); unset, nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "stamp-relay".into(),
        }
    }
}

/// How this instance polls (src/scheduler.rs): how many polls at once, and
/// the budget of requests each upstream host (or source) is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Polls running at once at most, over every table.
    pub max_concurrent: usize,
    /// Requests in flight at once at most, per budget.
    pub host_max_concurrent: usize,
    /// Requests started per second at most, per budget.
    pub host_max_per_second: u32,
    /// What shares one budget: `host` (every source on one scheme, host and
    /// port) or `source` (each source its own).
    pub budget_per: BudgetPer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPer {
    #[default]
    Host,
    Source,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            max_concurrent: 32,
            host_max_concurrent: 32,
            host_max_per_second: 200,
            budget_per: BudgetPer::Host,
        }
    }
}

/// The file as written, before secrets are resolved.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub poll: PollConfig,
    pub sources: Vec<SourceConfig>,
    pub delivery: DeliveryConfig,
    /// Webhook subscriptions the file declares.
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Consumers the file declares (docs/consumers.md).
    pub consumers: Vec<ConsumerConfig>,
    pub telemetry: TelemetryConfig,
}

/// The validated configuration every component is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub api_tokens: Vec<(TokenConfig, Secret)>,
    pub poll: PollConfig,
    pub sources: Vec<Source>,
    pub delivery: DeliveryConfig,
    pub subscriptions: Vec<SubscriptionDecl>,
    pub consumers: Vec<ConsumerConfig>,
    pub telemetry: TelemetryConfig,
    /// The key sealing credentials of sources made through the API
    /// (`STAMP_RELAY_SOURCE_KEY`) and the one before a rotation
    /// (`STAMP_RELAY_SOURCE_KEY_PREVIOUS`), checked to be 32 bytes.
    pub source_keys: SourceKeys,
}

/// The variable holding the key that seals API-made sources' credentials.
pub const SOURCE_KEY_VAR: &str = "STAMP_RELAY_SOURCE_KEY";
/// The variable holding that key before a rotation.
pub const PREVIOUS_SOURCE_KEY_VAR: &str = "STAMP_RELAY_SOURCE_KEY_PREVIOUS";

/// The sealing keys from the environment, when set.
#[derive(Debug, Clone, Default)]
pub struct SourceKeys {
    pub current: Option<Secret>,
    pub previous: Option<Secret>,
}

impl SourceKeys {
    /// Reads both variables through `env`; a malformed one is a problem
    /// naming it.
    pub fn from_env(env: EnvLookup<'_>) -> Result<SourceKeys, Vec<String>> {
        let mut problems = Vec::new();
        let mut read = |var: &str| {
            let v = env(var).filter(|v| !v.is_empty())?;
            match source_key_bytes(var, &v) {
                Ok(_) => Some(Secret(v)),
                Err(e) => {
                    problems.push(e);
                    None
                }
            }
        };
        let keys = SourceKeys {
            current: read(SOURCE_KEY_VAR),
            previous: read(PREVIOUS_SOURCE_KEY_VAR),
        };
        if problems.is_empty() {
            Ok(keys)
        } else {
            Err(problems)
        }
    }
}

/// The 32 bytes of a sealing key given in base64 in variable `var`.
pub fn source_key_bytes(var: &str, value: &str) -> Result<[u8; 32], String> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let fix = "it must be 32 random bytes in base64 (`openssl rand -base64 32`)";
    let bytes = STANDARD
        .decode(value.trim())
        .map_err(|_| format!("{var}: not base64; {fix}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{var}: holds {} bytes; {fix}", b.len()))
}

/// Everything wrong with a configuration, one problem per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(p: String) -> Self {
        Self { problems: vec![p] }
    }
}

/// Reads a variable through the lookup (the process environment in production).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Joins a path below a base URL, keeping the base's own path.
pub fn join(base: &Url, rest: &str) -> Url {
    let mut u = base.clone();
    let path = format!("{}/{}", u.path().trim_end_matches('/'), rest);
    u.set_path(&path);
    u
}

mod cidr;
mod consumers;
mod lines;
mod load;
mod reference;
mod source;
mod subscriptions;
mod validate;

pub use cidr::{Cidr, canonical};
pub use consumers::{ConsumerConfig, MAX_CONSUMER_NAME, is_consumer_name};
pub use load::{ENV_PREFIX, Loaded, Origins, env_vars, load, load_for_store};
pub use reference::REFERENCE;
pub use source::{
    Auth, AuthConfig, DEFAULT_OVERLAP, DeclaredSchema, FieldNames, HardDeletes, OnUpstreamReset,
    Paging, QueryNames, Source, SourceConfig,
};
pub use subscriptions::{SubscriptionConfig, SubscriptionDecl, check_webhook_secret};
pub use validate::check_source;

#[cfg(test)]
mod tests;
