//! The CloudEvents JSON a selection sends for an event.

use std::borrow::Cow;

use super::{EventView, Selection};
use crate::{
    cloudevents::{EventSource, Writer},
    events::Event,
};

impl Selection {
    /// The record as this selection sends it: `None` for a thin event.
    pub fn project<'a>(&self, record: &'a str) -> Option<Cow<'a, str>> {
        match &self.fields {
            None => Some(Cow::Borrowed(record)),
            Some(p) if p.is_thin() => None,
            Some(p) => Some(Cow::Owned(p.project(record))),
        }
    }

    /// The event's CloudEvents JSON as this selection sends it, or `None`
    /// when the filter passes it over.
    pub fn render(&self, src: &EventSource, e: &Event) -> Option<String> {
        let mut out = Vec::with_capacity(e.data.len() + 400);
        self.write(&mut Writer::new(src), &mut out, e, false)
            .then(|| String::from_utf8(out).expect("CloudEvents JSON is UTF-8"))
    }

    /// Appends the event's CloudEvents JSON as this selection sends it,
    /// with previous values in its data when `previous` (src/previous.rs);
    /// false, writing nothing, when the filter passes it over. Every
    /// rendering of an event downstream (replay, live stream, webhooks)
    /// comes through here.
    pub fn write(&self, w: &mut Writer<'_>, out: &mut Vec<u8>, e: &Event, previous: bool) -> bool {
        if self.filter.is_some() && !self.matches(&EventView::new(w.source(), e)) {
            return false;
        }
        if previous {
            let data = crate::previous::data(e);
            w.write(out, e, data.get(), Some(crate::previous::DATASCHEMA));
            return true;
        }
        match self.project(&e.data) {
            Some(data) => w.write(out, e, &data, None),
            None => out.extend_from_slice(thin(w.source(), e).as_bytes()),
        }
        true
    }
}

/// A thin event: the CloudEvent without `data` and `datacontenttype`,
/// its attributes in name order.
fn thin(src: &EventSource, e: &Event) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&src.to_json(&Event {
        data: "null".into(),
        ..e.clone()
    }))
    .expect("rendered JSON");
    if let Some(obj) = v.as_object_mut() {
        obj.remove("data");
        obj.remove("datacontenttype");
    }
    v.to_string()
}
