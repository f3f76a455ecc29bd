//! Consumers: the named owners of subscriptions (one downstream team, one
//! receiving system), each with an allow-list of the sources and tables it
//! may receive or read. Stored as documents of kind [`KIND`] so every
//! instance follows; the configuration file's `[[consumers]]` are written
//! there at start with `managed_by = "config"`. The consumer [`DEFAULT`]
//! always exists and allows everything: subscriptions stored without a
//! `consumer` belong to it (docs/consumers.md).

use serde::{Deserialize, Serialize};

use crate::{subscription::ManagedBy, table::Table};

pub mod book;
pub mod tokens;

pub use book::Book;

/// The document kind consumers are stored under.
pub const KIND: &str = "consumers";
/// The consumer of every subscription that names none.
pub const DEFAULT: &str = crate::subscription::DEFAULT_CONSUMER;
/// Longest consumer name.
pub const MAX_NAME: usize = crate::config::MAX_CONSUMER_NAME;
/// Most tokens one consumer may hold at once.
pub const MAX_TOKENS: usize = 16;

/// What a caller may see of the tables: a table is allowed when both lists
/// allow it; `"*"` (or no list) allows every table but the relay's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allow {
    /// Source names, or `"*"`.
    #[serde(default = "all")]
    pub sources: Vec<String>,
    /// Tables as `source/resource`, or `"*"`.
    #[serde(default = "all")]
    pub resources: Vec<String>,
}

fn all() -> Vec<String> {
    vec!["*".into()]
}

impl Default for Allow {
    fn default() -> Self {
        Allow::everything()
    }
}

impl Allow {
    pub fn everything() -> Allow {
        Allow {
            sources: all(),
            resources: all(),
        }
    }

    /// From optional lists (a token's limits): absent allows all.
    pub fn limited(sources: Option<&[String]>, resources: Option<&[String]>) -> Allow {
        Allow {
            sources: sources.map_or_else(all, <[String]>::to_vec),
            resources: resources.map_or_else(all, <[String]>::to_vec),
        }
    }

    /// Whether both lists are `"*"`.
    pub fn is_everything(&self) -> bool {
        self.sources.iter().any(|s| s == "*") && self.resources.iter().any(|s| s == "*")
    }

    /// Whether table `t` may be received or read. The relay's own tables
    /// (`_relay/health`) only for an unlimited caller.
    pub fn allows(&self, t: &Table) -> bool {
        if t.is_internal() {
            return self.is_everything();
        }
        let name = t.to_string();
        let source = self.sources.iter().any(|s| s == "*" || *s == t.source);
        let table = self.resources.iter().any(|r| r == "*" || *r == name);
        source && table
    }

    /// The tables of `coverage` this allow-list does not allow (`"*"` when
    /// it covers every table and this does not allow everything).
    pub fn outside(&self, coverage: &crate::subscription::Coverage) -> Vec<String> {
        use crate::subscription::Coverage;
        match coverage {
            Coverage::All if !self.is_everything() => vec!["*".into()],
            Coverage::All => vec![],
            Coverage::Only(ts) => ts
                .iter()
                .filter(|t| !self.allows(t))
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// The problem with a list, naming `field`: an empty list or entry, or
    /// a table that is not `source/resource`.
    pub fn check(&self, field: &str) -> Result<(), Invalid> {
        for (key, list) in [("sources", &self.sources), ("resources", &self.resources)] {
            let field = format!("{field}{key}");
            if list.is_empty() {
                return Err(Invalid::new(
                    &field,
                    "must name at least one entry, or \"*\"",
                ));
            }
            for entry in list {
                let bad = entry.is_empty()
                    || (key == "resources" && entry != "*" && entry.parse::<Table>().is_err())
                    || (key == "sources" && entry.contains('/'));
                if bad {
                    return Err(Invalid::new(
                        &field,
                        &format!("{entry:?} is not a {}", &key[..key.len() - 1]),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A consumer as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(flatten)]
    pub allow: Allow,
    /// Declared in the configuration file: the API changes neither its
    /// description nor its allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<ManagedBy>,
    /// Tokens issued through the API (digests only).
    #[serde(default)]
    pub tokens: Vec<tokens::IssuedToken>,
    /// Raised by revoking portal links: every link signed before is void.
    #[serde(default)]
    pub link_generation: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Consumer {
    /// The built-in consumer [`DEFAULT`] before anything was stored for it.
    pub fn default_consumer() -> Consumer {
        Consumer {
            name: DEFAULT.into(),
            description: "every subscription that names no consumer".into(),
            allow: Allow::everything(),
            managed_by: None,
            tokens: Vec::new(),
            link_generation: 0,
            created_ms: 0,
            updated_ms: 0,
        }
    }
}

/// A value the API refuses, with the field it names.
#[derive(Debug, Clone)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &str, message: &str) -> Invalid {
        Invalid {
            field: field.into(),
            message: format!("{field}: {message}"),
        }
    }
}

/// Consumer names: 1 to [`MAX_NAME`] of `a-z`, `0-9`, `-`, `_`, starting
/// with a letter or digit (they appear in paths, tokens and links).
pub fn check_name(name: &str) -> Result<(), Invalid> {
    if crate::config::is_consumer_name(name) {
        Ok(())
    } else {
        Err(Invalid::new(
            "name",
            &format!("use 1 to {MAX_NAME} of a-z, 0-9, - and _, starting with a letter or digit"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Table {
        s.parse().unwrap()
    }

    #[test]
    fn allow_lists_intersect() {
        let a = Allow {
            sources: vec!["ehr".into()],
            resources: vec!["*".into()],
        };
        assert!(a.allows(&t("ehr/patients")));
        assert!(!a.allows(&t("lab/results")));
        assert!(!a.allows(&t("_relay/health")));
        let b = Allow {
            sources: vec!["*".into()],
            resources: vec!["ehr/patients".into()],
        };
        assert!(b.allows(&t("ehr/patients")) && !b.allows(&t("ehr/visits")));
        assert!(Allow::everything().allows(&t("_relay/health")));
        assert!(check_name("care-team_1").is_ok() && check_name("Care").is_err());
        assert!(check_name("-x").is_err() && check_name("").is_err());
    }
}
