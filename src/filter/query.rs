//! Building a selection: from the `filter` and `fields` query parameters of
//! replay and the live stream (`filter=<JSON>`, a filter or a list that
//! must all match; `fields=a,b.c`, empty for thin events), or from the
//! `filters` and `fields` members of a JSON document (a subscription).

use super::{Filter, FilterError, Projection, Selection};
use crate::config::FieldNames;

/// The selection asked for by the query parameters.
pub fn from_query(
    filter: Option<&str>,
    fields: Option<&str>,
    names: &FieldNames,
) -> Result<Selection, FilterError> {
    let filter = filter
        .map(|text| {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| FilterError {
                path: "filter".into(),
                message: format!("not JSON: {e}"),
            })?;
            Filter::parse_at(&v, "filter")
        })
        .transpose()?;
    let fields = fields
        .map(|list| {
            let items: Vec<&str> = match list.trim() {
                "" => Vec::new(),
                l => l.split(',').map(str::trim).collect(),
            };
            Projection::new(&items, names, "fields")
        })
        .transpose()?;
    Ok(Selection { filter, fields })
}

impl Selection {
    /// The selection of a JSON document's `filters` (a list that must all
    /// match) and `fields` (an array of field paths), either absent; errors
    /// are named from those members (`filters[0].any[1]`, `fields[2]`).
    pub fn from_json(
        filters: Option<&serde_json::Value>,
        fields: Option<&serde_json::Value>,
        names: &FieldNames,
    ) -> Result<Selection, FilterError> {
        Ok(Selection {
            filter: filters.map(Filter::parse).transpose()?,
            fields: fields
                .map(|f| Projection::from_json(f, names, "fields"))
                .transpose()?,
        })
    }
}

/// A subscription's `filters` and `fields` checked as delivery parses them
/// (`filters` must be an array, every one of which must match), for the API
/// and the configuration file alike; the field paths as stored.
pub fn subscription_fields(
    filters: Option<&serde_json::Value>,
    fields: Option<&serde_json::Value>,
) -> Result<Option<Vec<String>>, FilterError> {
    if filters.is_some_and(|f| !f.is_array()) {
        return Err(FilterError {
            path: "filters".into(),
            message: "must be an array of filters, every one of which must match".into(),
        });
    }
    Selection::from_json(filters, fields, &FieldNames::default())?;
    Ok(fields.map(|f| {
        let items = f.as_array().map(Vec::as_slice).unwrap_or_default();
        items
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    }))
}
