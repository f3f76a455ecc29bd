//! The CloudEvents JSON a selection sends for an event.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{EventView, Selection};
use crate::{
    cloudevents::{CloudEvent, EventSource},
    events::Event,
    tail::LiveEvent,
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
        if !self.matches(&EventView::new(src, e)) {
            return None;
        }
        Some(match self.project(&e.data) {
            Some(Cow::Borrowed(_)) => src.to_json(e),
            Some(Cow::Owned(data)) => src.to_json(&Event { data, ..e.clone() }),
            None => thin(src, e),
        })
    }

    /// As [`Selection::render`] for a live-tail event, reusing its JSON
    /// when the selection takes everything.
    pub fn render_live<'a>(&self, src: &EventSource, live: &'a LiveEvent) -> Option<Cow<'a, str>> {
        if self.is_everything() {
            return Some(Cow::Borrowed(&live.json));
        }
        self.render(src, &live.event).map(Cow::Owned)
    }
}

/// A thin event: the CloudEvent without `data` and `datacontenttype`.
fn thin(src: &EventSource, e: &Event) -> String {
    let bare = Event {
        data: "null".into(),
        ..e.clone()
    };
    let mut v = serde_json::to_value(src.event(&bare)).expect("cloud events serialize");
    if let Some(obj) = v.as_object_mut() {
        obj.remove("data");
        obj.remove("datacontenttype");
    }
    v.to_string()
}

/// One event of a replay page: the CloudEvent itself when the selection
/// takes everything, else the JSON it rendered.
#[derive(Serialize)]
#[serde(untagged)]
pub enum PageEvent<'a> {
    Whole(CloudEvent<'a>),
    Selected(Box<RawValue>),
}

impl Selection {
    /// A replay page's events as this selection sends them, the ones its
    /// filter passes over left out.
    pub fn page<'a>(&self, src: &'a EventSource, events: &'a [Event]) -> Vec<PageEvent<'a>> {
        if self.is_everything() {
            return events
                .iter()
                .map(|e| PageEvent::Whole(src.event(e)))
                .collect();
        }
        events
            .iter()
            .filter_map(|e| self.render(src, e))
            .map(|json| PageEvent::Selected(RawValue::from_string(json).expect("rendered JSON")))
            .collect()
    }
}
