//! The bodies of the subscription routes as clients send them: strings
//! and options, checked and turned into the subscription model
//! (`subscription.rs`) by the handlers in `subscriptions.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

pub use crate::subscription::StartSpec;

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
    /// `start` at 0 may begin at the oldest event kept on a table whose
    /// retention removed events (api/positions.rs).
    #[serde(default, deserialize_with = "present")]
    pub from_oldest_kept: Option<bool>,
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
    /// The consumer it belongs to (docs/consumers.md); absent: the
    /// caller's consumer, or `default` for an admin.
    #[serde(default, deserialize_with = "present")]
    pub consumer: Option<String>,
}

/// The body of `PATCH /v1/subscriptions/{id}`: every field optional, none
/// `null` but `rate_limit`, `filters` and `fields`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
