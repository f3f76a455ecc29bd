//! Events as downstream systems see them: CloudEvents 1.0 JSON (`docs/events.md`),
//! the same for webhook bodies, REST replay and the live stream.

use std::cell::RefCell;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{events::Event, store::Target};

/// What an event needs from its target's configuration.
#[derive(Debug, Clone)]
pub struct EventSource {
    pub target: Target,
    /// Upstream base URL + resource, the CloudEvents `source`.
    pub source_url: String,
    pub type_prefix: String,
    /// The record's id and stamp fields, which a projection always keeps.
    pub fields: crate::config::FieldNames,
}

#[derive(Debug, Serialize)]
pub struct CloudEvent<'a> {
    pub specversion: &'static str,
    /// `<source>:<resource>:<record>:<stamp>`: stable across retries and replays.
    pub id: String,
    pub source: &'a str,
    #[serde(rename = "type")]
    pub ty: String,
    pub subject: &'a str,
    pub time: String,
    pub datacontenttype: &'static str,
    pub updatestamp: u64,
    pub snapshot: bool,
    /// The stream ID: where a consumer resumes.
    pub streamid: String,
    /// The distributed-tracing extension: the trace of the poll that
    /// appended the event (`trace.rs`).
    pub traceparent: String,
    pub data: &'a RawValue,
}

impl EventSource {
    pub fn event<'a>(&'a self, e: &'a Event) -> CloudEvent<'a> {
        let data: &RawValue = serde_json::from_str(&e.data).unwrap_or_else(|_| {
            // Stored data is always the upstream's JSON object; never fails in practice.
            serde_json::from_str("null").expect("null is JSON")
        });
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.observed);
        CloudEvent {
            specversion: "1.0",
            id: self.id(e),
            source: &self.source_url,
            ty: self.ty(e),
            subject: &e.record,
            time: humantime::format_rfc3339_millis(time).to_string(),
            datacontenttype: "application/json",
            updatestamp: e.stamp,
            snapshot: e.snapshot,
            streamid: e.id.to_string(),
            traceparent: self.traceparent(e),
            data,
        }
    }

    /// `<prefix>.<resource>.<op>`; for `_relay/health`, `<prefix>.source.<state>`
    /// or `<prefix>.table.<state>` (a record `source/resource`), from the data.
    fn ty(&self, e: &Event) -> String {
        #[derive(serde::Deserialize)]
        struct Transition {
            state: String,
        }
        if self.target.is_internal()
            && let Ok(t) = serde_json::from_str::<Transition>(&e.data)
        {
            let level = if e.record.contains('/') {
                "table"
            } else {
                "source"
            };
            return format!("{}.{level}.{}", self.type_prefix, t.state);
        }
        format!("{}.{}.{}", self.type_prefix, self.target.resource, e.op)
    }

    /// The CloudEvents `id` alone: `<source>:<resource>:<record>:<stamp>`.
    pub fn id(&self, e: &Event) -> String {
        format!(
            "{}:{}:{}:{}",
            self.target.source, self.target.resource, e.record, e.stamp
        )
    }

    /// The `traceparent` of `e`'s append. Every event of one poll shares
    /// its `observed`, so the last one derived (two SHA-256s) is kept per
    /// thread: a replay page or a batch derives it once, not per event.
    fn traceparent(&self, e: &Event) -> String {
        thread_local! {
            static LAST: RefCell<Option<(Target, u64, String)>> = const { RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((t, observed, tp)) = last.as_ref()
                && *observed == e.observed
                && *t == self.target
            {
                return tp.clone();
            }
            let tp = self.trace(e).append_parent();
            *last = Some((self.target.clone(), e.observed, tp.clone()));
            tp
        })
    }

    /// The trace of the poll that appended `e`, derived from its `observed`.
    pub fn trace(&self, e: &Event) -> crate::trace::PollTrace {
        crate::trace::PollTrace::of(&self.target.source, &self.target.resource, e.observed)
    }

    pub fn to_json(&self, e: &Event) -> String {
        serde_json::to_string(&self.event(e)).expect("cloud events serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Op, StreamId};

    #[test]
    fn carries_the_contract_fields_and_raw_data() {
        let src = EventSource {
            target: Target::new("pc", "patients"),
            source_url: "https://h/api/patients".into(),
            type_prefix: "com.example".into(),
            fields: Default::default(),
        };
        let e = Event {
            id: StreamId::new(12, 1),
            op: Op::Deleted,
            record: "abc".into(),
            stamp: 9,
            prev: Some(4),
            snapshot: false,
            observed: 1_700_000_000_123,
            data: r#"{"uuid":"abc","score":1.50}"#.into(),
            prev_id: None,
            before: None,
        };
        let json = src.to_json(&e);
        assert!(
            json.contains(r#""data":{"uuid":"abc","score":1.50}"#),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "pc:patients:abc:9");
        assert_eq!(v["type"], "com.example.patients.deleted");
        assert_eq!(v["subject"], "abc");
        assert_eq!(v["updatestamp"], 9);
        assert_eq!(v["streamid"], "12-1");
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["source"], "https://h/api/patients");
        let trace = crate::trace::PollTrace::of("pc", "patients", 1_700_000_000_123);
        assert_eq!(v["traceparent"], trace.append_parent());
    }
}
