//! What a reader receives of a table's events: filters in the CloudEvents
//! Subscriptions API dialects (`exact`, `prefix`, `suffix`, `all`, `any`,
//! `not`) over the context attributes and `data.<field>` paths into the
//! record, and a projection of the record's fields (`fields`, empty for
//! thin events). The grammar is in docs/filters.md.
//!
//! A [`Selection`] is both, as replay and the live stream take them
//! (`query.rs`) and as a subscription stores them: `matches` on an
//! [`EventView`] decides, `project` shapes the record, and `write` hands
//! the result to the one CloudEvents renderer (`cloudevents::Writer`).

use std::fmt;

mod eval;
mod json;
mod parse;
mod projection;
mod query;
mod render;

pub use eval::EventView;
pub use projection::Projection;
pub use query::{from_query, subscription_fields};

/// A parsed filter: matches an event when its expression does.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// Every pair must match: `exact`, `prefix` or `suffix` of `Compare`.
    Compare(Compare, Vec<(Attr, String)>),
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Exact,
    Prefix,
    Suffix,
}

/// An attribute a filter names: a CloudEvents context attribute, one of
/// our extensions, or a path into the record (`data.assessment.pain_score`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    Id,
    Type,
    Source,
    Subject,
    Time,
    DataContentType,
    DataSchema,
    SpecVersion,
    UpdateStamp,
    Snapshot,
    StreamId,
    Data(Vec<String>),
}

/// The context attributes and extensions a filter may name.
const ATTRIBUTES: [(&str, Attr); 11] = [
    ("id", Attr::Id),
    ("type", Attr::Type),
    ("source", Attr::Source),
    ("subject", Attr::Subject),
    ("time", Attr::Time),
    ("datacontenttype", Attr::DataContentType),
    ("dataschema", Attr::DataSchema),
    ("specversion", Attr::SpecVersion),
    ("updatestamp", Attr::UpdateStamp),
    ("snapshot", Attr::Snapshot),
    ("streamid", Attr::StreamId),
];

/// Why a filter or a field list was refused, at the JSON path of the fault
/// (`filters[0].any[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FilterError {}

/// Which events a reader gets and how much of each record: no filter
/// passes every event, no projection keeps the whole record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub filter: Option<Filter>,
    pub fields: Option<Projection>,
}

impl Selection {
    /// Whether this selection passes everything unchanged.
    pub fn is_everything(&self) -> bool {
        self.filter.is_none() && self.fields.is_none()
    }

    pub fn matches(&self, view: &EventView<'_>) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(view))
    }
}

#[cfg(test)]
mod tests;
