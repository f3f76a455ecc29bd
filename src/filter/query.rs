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
