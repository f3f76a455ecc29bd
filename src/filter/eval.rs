//! Evaluating a filter over one event, reading the record only when a
//! `data.` path is named, and then once.

use std::{borrow::Cow, cell::OnceCell};

use serde_json::value::RawValue;

use super::{
    Attr, Compare, Expr, Filter,
    json::{for_each_entry, scalar_text},
};
use crate::{cloudevents::EventSource, events::Event};

/// An event as a filter sees it: its context attributes, worked out when
/// named, and its record's top-level fields, read on the first `data.`
/// path and kept for the next (for this filter or another one).
pub struct EventView<'a> {
    src: &'a EventSource,
    event: &'a Event,
    ty: OnceCell<String>,
    fields: OnceCell<Vec<(Cow<'a, str>, &'a RawValue)>>,
}

impl<'a> EventView<'a> {
    pub fn new(src: &'a EventSource, event: &'a Event) -> Self {
        EventView {
            src,
            event,
            ty: OnceCell::new(),
            fields: OnceCell::new(),
        }
    }

    /// The record's value at `path`, when the record was read.
    pub(super) fn data(&self, path: &[String]) -> Option<&'a RawValue> {
        let fields = self.fields.get_or_init(|| {
            let mut out = Vec::with_capacity(32);
            for_each_entry(&self.event.data, |k, v| out.push((k, v)));
            out
        });
        let (first, rest) = path.split_first()?;
        // The last of repeated keys, as a JSON parser keeping one would.
        let mut v = fields.iter().rev().find(|(k, _)| k == first)?.1;
        for key in rest {
            let mut found = None;
            for_each_entry(v.get(), |k, x| {
                if k == key.as_str() {
                    found = Some(x);
                }
            });
            v = found?;
        }
        Some(v)
    }

    /// An attribute's text as the CloudEvent carries it; `None` when the
    /// event has no such attribute or the record holds null there.
    fn text(&self, attr: &Attr) -> Option<Cow<'_, str>> {
        let (src, e) = (self.src, self.event);
        Some(match attr {
            Attr::Id => Cow::Owned(src.id(e)),
            Attr::Type => Cow::Borrowed(
                self.ty
                    .get_or_init(|| format!("{}.{}.{}", src.type_prefix, src.table.resource, e.op)),
            ),
            Attr::Source => Cow::Borrowed(&src.source_url),
            Attr::Subject => Cow::Borrowed(&e.record),
            Attr::Time => {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.observed);
                Cow::Owned(humantime::format_rfc3339_millis(t).to_string())
            }
            Attr::DataContentType => Cow::Borrowed("application/json"),
            Attr::DataSchema => return None,
            Attr::SpecVersion => Cow::Borrowed("1.0"),
            Attr::UpdateStamp => Cow::Owned(e.stamp.to_string()),
            Attr::Snapshot => Cow::Borrowed(if e.snapshot { "true" } else { "false" }),
            Attr::StreamId => Cow::Owned(e.id.to_string()),
            Attr::Data(path) => return self.data(path).and_then(scalar_text),
        })
    }
}

impl Filter {
    pub fn matches(&self, view: &EventView<'_>) -> bool {
        eval(&self.expr, view)
    }
}

fn eval(expr: &Expr, view: &EventView<'_>) -> bool {
    match expr {
        Expr::Compare(how, pairs) => pairs.iter().all(|(attr, want)| {
            view.text(attr).is_some_and(|have| match how {
                Compare::Exact => have == want.as_str(),
                Compare::Prefix => have.starts_with(want.as_str()),
                Compare::Suffix => have.ends_with(want.as_str()),
            })
        }),
        Expr::All(all) => all.iter().all(|e| eval(e, view)),
        Expr::Any(any) => any.iter().any(|e| eval(e, view)),
        Expr::Not(e) => !eval(e, view),
    }
}
