//! Webhook subscriptions: the stored model and the validation of what API
//! clients send. Pure logic; persistence is in the store, HTTP in `api`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    events::{Op, StreamId},
    table::Table,
};

mod headers;
mod secret;
mod start;
pub mod state;
mod webhook_url;
pub use headers::{reserved_header, validate_headers};
pub use secret::SigningSecret;
pub use start::StartSpec;
pub use webhook_url::{WebhookUrl, url_for_logs};

pub const MAX_BATCH: u32 = 1000;
/// The consumer (src/consumer.rs) of a subscription stored without one.
pub const DEFAULT_CONSUMER: &str = "default";

fn default_consumer() -> String {
    DEFAULT_CONSUMER.into()
}

fn is_default_consumer(c: &str) -> bool {
    c == DEFAULT_CONSUMER
}
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
    pub url: WebhookUrl,
    /// The tables it receives; stored and shown as `["*"]` or
    /// `["source/resource", ...]`.
    pub resources: Coverage,
    /// Empty means every op.
    pub ops: Vec<Op>,
    /// Where delivery starts, per table: after this ID. Stored as
    /// `{"source/resource": "<stamp>-<seq>"}`.
    #[serde(with = "start_map")]
    pub start: BTreeMap<Table, StreamId>,
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
    pub secret: SigningSecret,
    /// The secret before the last rotation and when it stops being signed with (unix ms).
    pub previous_secret: Option<(SigningSecret, u64)>,
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
    /// Filters in the CloudEvents Subscriptions API dialects that must all
    /// match (src/filter); absent: every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<serde_json::Value>,
    /// The record fields events carry (the id and stamp fields always);
    /// empty for thin events, absent for whole records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// Declared in the configuration file (`[[subscriptions]]`): the API
    /// neither deletes nor rewrites it (src/declared.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<ManagedBy>,
    /// When `POST …/retry` last asked for every waiting retry to be due now
    /// (unix ms): a change tells the running workers to do so in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_requested_ms: Option<u64>,
    /// The consumer it belongs to (src/consumer.rs); absent in storage
    /// means [`DEFAULT_CONSUMER`], so older subscriptions need no migration.
    #[serde(
        default = "default_consumer",
        skip_serializing_if = "is_default_consumer"
    )]
    pub consumer: String,
}

/// What owns a subscription other than the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    /// A `[[subscriptions]]` entry of the configuration file.
    Config,
}

impl Subscription {
    /// Where delivery of `table` begins before the first claim: after this ID.
    pub fn start_of(&self, table: &Table) -> StreamId {
        // A table covered through "*" but configured after the
        // subscription was made has no entry: it starts at the beginning.
        self.start.get(table).copied().unwrap_or(StreamId::ZERO)
    }

    /// Whether this subscription receives events of `table`.
    pub fn covers(&self, table: &Table) -> bool {
        self.resources.covers(table)
    }
}

/// Which tables a subscription covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Coverage {
    /// `["*"]`: every configured table, also ones configured later; the
    /// relay's own tables (`_relay/health`) only when named.
    All,
    /// The tables named.
    Only(Vec<Table>),
}

impl Coverage {
    pub fn covers(&self, table: &Table) -> bool {
        match self {
            Coverage::All => !table.is_internal(),
            Coverage::Only(tables) => tables.contains(table),
        }
    }

    /// The configured tables it covers.
    pub fn of(&self, known: &[Table]) -> Vec<Table> {
        known.iter().filter(|t| self.covers(t)).cloned().collect()
    }

    fn names(&self) -> Vec<String> {
        match self {
            Coverage::All => vec!["*".into()],
            Coverage::Only(tables) => tables.iter().map(Table::to_string).collect(),
        }
    }

    /// A list with `*` anywhere in it covers everything.
    fn from_names(names: &[String]) -> Result<Coverage, String> {
        if names.iter().any(|n| n == "*") {
            return Ok(Coverage::All);
        }
        names
            .iter()
            .map(|n| n.parse())
            .collect::<Result<_, _>>()
            .map(Coverage::Only)
    }
}

impl Serialize for Coverage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Coverage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Coverage, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        Coverage::from_names(&names).map_err(serde::de::Error::custom)
    }
}

pub fn new_id() -> String {
    format!("sub_{}", uuid::Uuid::new_v4().simple())
}

/// Where a subscription starts reading on its tables (or a replay
/// restarts).
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// After each table's last event when the subscription is made.
    Now,
    /// Before each table's first event.
    Beginning,
    /// After these stamps; on creation, tables not named start now.
    Stamps(BTreeMap<Table, u64>),
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

/// The coverage a client's `resources` names, every name a configured
/// table or `*`.
pub fn parse_resources(resources: &[String], known: &[Table]) -> Result<Coverage, Invalid> {
    if resources.is_empty() {
        return Err(invalid(
            "resources",
            "list at least one \"source/resource\", or [\"*\"]",
        ));
    }
    for (i, r) in resources.iter().enumerate() {
        if r != "*" && !known.iter().any(|t| t.to_string() == *r) {
            let names: Vec<String> = known.iter().map(Table::to_string).collect();
            return Err(invalid(
                format!("resources[{i}]"),
                format!(
                    "{r:?} is not a configured target; known: {}",
                    names.join(", ")
                ),
            ));
        }
    }
    Coverage::from_names(resources).map_err(|e| invalid("resources", e))
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

/// Previous values and a projection do not combine, as in replay.
pub fn validate_fields_alone(previous: bool, fields: &Option<Vec<String>>) -> Result<(), Invalid> {
    if previous && fields.is_some() {
        return Err(invalid(
            "fields",
            "fields cannot be combined with previous: true; ask for one or the other",
        ));
    }
    Ok(())
}

/// The start point of each table (`now` is each table's last ID at
/// creation).
pub fn resolve_start(
    start: &Start,
    tables: &[Table],
    now: &HashMap<Table, StreamId>,
) -> BTreeMap<Table, StreamId> {
    let now_of = |t: &Table| now.get(t).copied().unwrap_or_default();
    tables
        .iter()
        .map(|t| {
            let id = match start {
                Start::Now => now_of(t),
                Start::Beginning => StreamId::ZERO,
                Start::Stamps(m) => m.get(t).map_or_else(|| now_of(t), |s| StreamId::new(*s, 0)),
            };
            (t.clone(), id)
        })
        .collect()
}

/// `start` as stored and shown: `{"source/resource": "<stamp>-<seq>"}`,
/// parsed into tables and stream IDs when read (a malformed entry is an
/// error, never a start at the beginning).
pub mod start_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::{events::StreamId, table::Table};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Table, StreamId>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(t, id)| (t.to_string(), id.to_string())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Table, StreamId>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(t, id)| {
                Ok((
                    t.parse().map_err(D::Error::custom)?,
                    id.parse().map_err(D::Error::custom)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Vec<Table> {
        vec![Table::new("pc", "patients"), Table::new("pc", "users")]
    }

    #[test]
    fn resources_must_be_configured() {
        assert_eq!(
            parse_resources(&["pc/patients".into()], &tables()),
            Ok(Coverage::Only(vec![tables()[0].clone()]))
        );
        assert_eq!(
            parse_resources(&["*".into(), "pc/users".into()], &tables()),
            Ok(Coverage::All)
        );
        let e = parse_resources(&["pc/patients".into(), "pc/nope".into()], &tables()).unwrap_err();
        assert_eq!(e.field, "resources[1]");
        assert!(parse_resources(&[], &tables()).is_err());
    }

    #[test]
    fn urls_and_limits_are_checked() {
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
    fn start_points_resolve_per_table() {
        let t = tables();
        let now: HashMap<Table, StreamId> = [(t[0].clone(), StreamId::new(9, 0))].into();
        let at = |m: &BTreeMap<Table, StreamId>, name: &str| m[&name.parse::<Table>().unwrap()];
        let s = resolve_start(&Start::Now, &t, &now);
        assert_eq!(at(&s, "pc/patients"), StreamId::new(9, 0));
        assert_eq!(at(&s, "pc/users"), StreamId::ZERO);
        let b = resolve_start(&Start::Beginning, &t, &now);
        assert_eq!(at(&b, "pc/patients"), StreamId::ZERO);
        let m: BTreeMap<Table, u64> = [(t[1].clone(), 4)].into();
        let s = resolve_start(&Start::Stamps(m), &t, &now);
        assert_eq!(at(&s, "pc/users"), StreamId::new(4, 0));
        assert_eq!(at(&s, "pc/patients"), StreamId::new(9, 0));
    }

    #[test]
    fn start_is_stored_as_names_and_ids_and_refused_when_malformed() {
        let doc = |start: &str| {
            format!(
                r#"{{"id":"sub_1","url":"https://x.example","resources":["*"],"ops":[],"start":{start},"headers":{{}},"batch_size":1,"rate_limit":null,"enabled":true,"description":"","secret":"whsec_dGVzdA==","previous_secret":null,"created_ms":0,"updated_ms":0}}"#
            )
        };
        let stored = doc(r#"{"pc/patients":"9-0","pc/users":"4-2"}"#);
        let sub: Subscription = serde_json::from_str(&stored).unwrap();
        let t: Table = "pc/users".parse().unwrap();
        assert_eq!(sub.start_of(&t), StreamId::new(4, 2));
        let back = serde_json::to_value(&sub).unwrap();
        // Documents from before filters: none, and stored as they were.
        assert!(sub.filters.is_none() && sub.fields.is_none());
        assert!(back.get("filters").is_none() && back.get("fields").is_none());
        assert_eq!(
            back["start"],
            serde_json::json!({"pc/patients": "9-0", "pc/users": "4-2"})
        );
        for bad in [r#"{"pc/users":"soon"}"#, r#"{"pcusers":"4-0"}"#] {
            assert!(
                serde_json::from_str::<Subscription>(&doc(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
