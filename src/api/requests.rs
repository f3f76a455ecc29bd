//! The bodies of the subscription routes as clients send them: strings
//! and options, checked and turned into the subscription model
//! (`subscription.rs`) by the handlers in `subscriptions.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    subscription::{Invalid, Start},
    target::Target,
};

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
    /// Events carry the old values of the fields that changed.
    #[serde(default, deserialize_with = "present")]
    pub previous: Option<bool>,
    /// Filters that must all match (CloudEvents Subscriptions API dialects).
    #[serde(default, deserialize_with = "present")]
    pub filters: Option<serde_json::Value>,
    /// The record fields events carry; `[]` for thin events.
    #[serde(default, deserialize_with = "present")]
    pub fields: Option<serde_json::Value>,
}

/// The body of `PATCH /v1/subscriptions/{id}`: every field optional, none
/// `null` but `rate_limit`, `filters` and `fields`.
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
    /// Events carry the old values of the fields that changed.
    #[serde(default, deserialize_with = "present")]
    pub previous: Option<bool>,
    /// `null` removes the filters (every event); absent leaves them.
    #[serde(default, deserialize_with = "present")]
    pub filters: Option<Option<serde_json::Value>>,
    /// `null` sends whole records again; absent leaves the choice.
    #[serde(default, deserialize_with = "present")]
    pub fields: Option<Option<serde_json::Value>>,
}

/// A field that is there: `Some` of its value, which for a plain `T` may
/// not be `null` (absent fields get `None` from `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `start` (creation) or `from` (replay) as sent: a name, or stamps per
/// `source/resource`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StartSpec {
    Named(String),
    Stamps(BTreeMap<String, u64>),
}

impl StartSpec {
    /// The start this names over `targets`. `field` is its name in the body
    /// (for errors); `now` whether `"now"` is allowed (on creation, not in a
    /// replay).
    pub fn parse(self, field: &str, targets: &[Target], now: bool) -> Result<Start, Invalid> {
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
                    |(name, stamp)| match targets.iter().find(|t| t.to_string() == name) {
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
    fn start_names_and_stamps_parse_against_the_targets() {
        let t: Vec<Target> = vec!["pc/patients".parse().unwrap()];
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
        assert_eq!(patch(r#"{"filters":null}"#).unwrap().filters, Some(None));
        assert_eq!(
            patch(r#"{"fields":[]}"#).unwrap().fields,
            Some(Some(serde_json::json!([])))
        );
    }
}
