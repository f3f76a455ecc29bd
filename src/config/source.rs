//! The `[[sources]]` section: one upstream, how it pages, how the relay
//! authenticates to it, and the field and query names it uses.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Paging {
    /// Walk `page=1..`, sort, commit; safe for any result order.
    #[default]
    Pages,
    /// `sync=<highest stamp so far>` per page; only for upstreams sorted by stamp.
    Keyset,
}

/// What a poller does when its table's upstream went back in time (a
/// restore or a reset; see poller/rebase.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnUpstreamReset {
    /// Reload the table from `sync=0` as a snapshot (`snapshot=1`): the
    /// upstream's versions win, records it no longer returns are `deleted`.
    #[default]
    Resnapshot,
    /// Append nothing and fail every poll of the table, naming the reset,
    /// until the upstream shows the relay's cursor again.
    Pause,
}

/// What the reconcile sweep does with records the upstream no longer
/// returns (hard deletes, against the contract; see poller/breaks.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HardDeletes {
    /// Log, count and mark them; append nothing.
    #[default]
    Report,
    /// Also append a `deleted` event with stamp 0 for each (docs/events.md).
    Emit,
}

/// How the relay authenticates to the upstream, as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    OAuth {
        client_id_env: String,
        client_secret_env: String,
        /// Defaults to `{base_url}/integration/auth/`.
        token_url: Option<String>,
    },
    Basic {
        username_env: String,
        password_env: String,
    },
    Bearer {
        token_env: String,
    },
    #[default]
    None,
}

/// The upstream credentials, resolved from the environment.
#[derive(Debug, Clone)]
pub enum Auth {
    OAuth {
        client_id: Secret,
        client_secret: Secret,
        token_url: Url,
    },
    Basic {
        username: Secret,
        password: Secret,
    },
    Bearer {
        token: Secret,
    },
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryNames {
    pub sync: String,
    pub page: String,
    pub page_size: String,
}

impl Default for QueryNames {
    fn default() -> Self {
        Self {
            sync: "sync".into(),
            page: "page".into(),
            page_size: "page_size".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldNames {
    pub id: String,
    pub stamp: String,
    pub deleted_at: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        Self {
            id: "uuid".into(),
            stamp: "update_stamp".into(),
            deleted_at: "deleted_at".into(),
        }
    }
}

/// Stamps re-read below the cursor on every poll. Size it to the number of
/// stamps one table issues during the longest upstream commit delay or page
/// walk; re-reading is cheap because duplicates are dropped by the index.
pub const DEFAULT_OVERLAP: u64 = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub base_url: String,
    pub resources: Vec<String>,
    #[serde(with = "humantime_serde", default = "defaults::poll_interval")]
    pub poll_interval: Duration,
    #[serde(default = "defaults::page_size")]
    pub page_size: u32,
    #[serde(default)]
    pub paging: Paging,
    #[serde(default = "defaults::overlap")]
    pub overlap: u64,
    /// Walks of the `pages` strategy before a poll gives up on a fast-changing set.
    #[serde(default = "defaults::max_walks")]
    pub max_walks: u32,
    /// Poll intervals without a good poll before a table's health says
    /// `failing` rather than `degraded` (health.rs).
    #[serde(default = "defaults::failing_after_intervals")]
    pub failing_after_intervals: u32,
    /// How often a full `sync=0` walk compares the upstream with the record
    /// index and appends what the polls missed (see poller/reconcile.rs);
    /// off when absent.
    #[serde(with = "humantime_serde", default)]
    pub reconcile_interval: Option<Duration>,
    /// With `paging = "pages"`, a reconcile sweep after every initial load:
    /// it repairs what an upstream that reads a page's count and its rows
    /// in two snapshots made the load miss (docs/upstream.md).
    #[serde(default = "defaults::reconcile_after_load")]
    pub reconcile_after_load: bool,
    /// Records one `pages` poll may hold in memory.
    #[serde(default = "defaults::max_delta_records")]
    pub max_delta_records: usize,
    /// `resnapshot` (default) or `pause`, when the upstream went back in time.
    #[serde(default)]
    pub on_upstream_reset: OnUpstreamReset,
    /// `report` (default) or `emit`: records a reconcile sweep finds gone.
    #[serde(default)]
    pub hard_deletes: HardDeletes,
    #[serde(with = "humantime_serde", default = "defaults::request_timeout")]
    pub request_timeout: Duration,
    /// Attempts per upstream request before the poll fails.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter, up to `retry_max`.
    #[serde(with = "humantime_serde", default = "defaults::retry_base")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde", default = "defaults::retry_max")]
    pub retry_max: Duration,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub query: QueryNames,
    #[serde(default)]
    pub fields: FieldNames,
    /// The proxy the upstream is reached through; environment proxy
    /// variables are ignored.
    #[serde(default)]
    pub proxy: Option<String>,
    /// A PEM file of CA certificates trusted for this upstream, beside the
    /// system's roots (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Keep each record's latest version (record lookup, the compatible
    /// `?sync=` API, previous values; see src/store/records.rs).
    #[serde(default = "defaults::keep_records")]
    pub keep_records: bool,
    /// The upstream's largest page size, which the compatible API caps at.
    #[serde(default = "defaults::max_page_size")]
    pub max_page_size: u32,
    /// Records whose stamp is more than this above the table's highest
    /// are rejected (a corrupt stamp would otherwise move the cursor past
    /// every later change); absent: no limit but i64::MAX.
    #[serde(default)]
    pub max_stamp_jump: Option<u64>,
    /// The largest page answer read; a larger one fails the poll.
    #[serde(default = "defaults::max_page_bytes")]
    pub max_page_bytes: usize,
    /// Record schemas per resource for the event catalog: a JSON Schema
    /// file's path or the schema inline; others are inferred.
    #[serde(default)]
    pub schemas: std::collections::BTreeMap<String, DeclaredSchema>,
}

/// A record schema the configuration declares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeclaredSchema {
    File(std::path::PathBuf),
    Inline(serde_json::Map<String, serde_json::Value>),
}

impl DeclaredSchema {
    /// The schema, read from its file when it names one.
    pub fn load(&self) -> Result<serde_json::Value, String> {
        match self {
            DeclaredSchema::Inline(m) => Ok(serde_json::Value::Object(m.clone())),
            DeclaredSchema::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                match serde_json::from_str(&text) {
                    Ok(v @ serde_json::Value::Object(_)) => Ok(v),
                    Ok(_) => Err(format!("{} is not a JSON Schema object", path.display())),
                    Err(e) => Err(format!("{} is not JSON: {e}", path.display())),
                }
            }
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub fn poll_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn page_size() -> u32 {
        500
    }
    pub fn overlap() -> u64 {
        super::DEFAULT_OVERLAP
    }
    pub fn max_walks() -> u32 {
        5
    }
    pub fn failing_after_intervals() -> u32 {
        3
    }
    pub fn reconcile_after_load() -> bool {
        true
    }
    pub fn max_delta_records() -> usize {
        2_000_000
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_attempts() -> u32 {
        6
    }
    pub fn retry_base() -> Duration {
        Duration::from_millis(500)
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(30)
    }
    pub fn keep_records() -> bool {
        true
    }
    pub fn max_page_size() -> u32 {
        1000
    }
    pub fn max_page_bytes() -> usize {
        32 << 20
    }
}

/// One validated upstream source.
#[derive(Debug, Clone)]
pub struct Source {
    pub settings: SourceConfig,
    pub base_url: Url,
    pub auth: Auth,
}

impl Source {
    pub fn name(&self) -> &str {
        &self.settings.name
    }
}
