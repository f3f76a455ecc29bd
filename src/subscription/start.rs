//! `start` (creation, and `[[subscriptions]]` in the configuration file) or
//! `from` (replay) as written: a name, or stamps per `source/resource`,
//! parsed against the subscription's tables into a [`Start`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Invalid, Start};
use crate::{events::MAX_STAMP, table::Table};

/// `start` (creation) or `from` (replay) as sent: a name, or stamps per
/// `source/resource`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StartSpec {
    Named(String),
    Stamps(BTreeMap<String, u64>),
}

impl StartSpec {
    /// The start this names over `tables`. `field` is its name in the body
    /// (for errors); `now` whether `"now"` is allowed (on creation, not in a
    /// replay).
    pub fn parse(self, field: &str, tables: &[Table], now: bool) -> Result<Start, Invalid> {
        match self {
            StartSpec::Named(n) if n == "now" && now => Ok(Start::Now),
            StartSpec::Named(n) if n == "beginning" => Ok(Start::Beginning),
            StartSpec::Named(_) => Err(Invalid {
                field: field.into(),
                message: format!(
                    "must be {}\"beginning\" or {{\"source/resource\": stamp, ...}}",
                    if now { "\"now\", " } else { "" }
                ),
            }),
            StartSpec::Stamps(m) => m
                .into_iter()
                .map(
                    |(name, stamp)| match tables.iter().find(|t| t.to_string() == name) {
                        Some(_) if stamp > MAX_STAMP => Err(Invalid {
                            field: format!("{field}.{name}"),
                            message: format!("is above {MAX_STAMP}, the largest stamp"),
                        }),
                        Some(t) => Ok((t.clone(), stamp)),
                        None => Err(Invalid {
                            field: format!("{field}.{name}"),
                            message: "is not one of the subscription's resources".into(),
                        }),
                    },
                )
                .collect::<Result<_, _>>()
                .map(Start::Stamps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_names_and_stamps_parse_against_the_tables() {
        let t: Vec<Table> = vec!["pc/patients".parse().unwrap()];
        let named = |n: &str| StartSpec::Named(n.into());
        assert_eq!(named("now").parse("start", &t, true), Ok(Start::Now));
        assert_eq!(
            named("beginning").parse("from", &t, false),
            Ok(Start::Beginning)
        );
        let e = named("now").parse("from", &t, false).unwrap_err();
        assert_eq!(e.field, "from");
        assert_eq!(
            e.message,
            "must be \"beginning\" or {\"source/resource\": stamp, ...}"
        );
        let e = named("later").parse("start", &t, true).unwrap_err();
        assert_eq!(
            e.message,
            "must be \"now\", \"beginning\" or {\"source/resource\": stamp, ...}"
        );
        let stamps = |n: &str| StartSpec::Stamps([(n.to_string(), 4)].into());
        assert_eq!(
            stamps("pc/patients").parse("start", &t, true),
            Ok(Start::Stamps([(t[0].clone(), 4)].into()))
        );
        assert_eq!(
            stamps("pc/users")
                .parse("start", &t, true)
                .unwrap_err()
                .field,
            "start.pc/users"
        );
        let past = StartSpec::Stamps([("pc/patients".to_string(), u64::MAX)].into());
        let e = past.parse("start", &t, true).unwrap_err();
        assert_eq!(e.field, "start.pc/patients");
        assert!(
            e.message.contains("above 9223372036854775807"),
            "{}",
            e.message
        );
    }
}
