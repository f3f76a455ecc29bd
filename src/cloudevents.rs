//! Events as downstream systems see them: CloudEvents 1.0 JSON (`docs/events.md`),
//! the same for webhook bodies, REST replay and the live stream.

use crate::{events::Event, store::Table};

/// What an event needs from its table's configuration.
#[derive(Debug, Clone)]
pub struct EventSource {
    pub table: Table,
    /// Upstream base URL + resource, the CloudEvents `source`.
    pub source_url: String,
    pub type_prefix: String,
    /// The record's id and stamp fields, which a projection always keeps.
    pub fields: crate::config::FieldNames,
}

impl EventSource {
    /// `<prefix>.<resource>.<op>`; for `_relay/health`, `<prefix>.source.<state>`
    /// or `<prefix>.table.<state>` (a record `source/resource`), from the data.
    pub fn ty(&self, e: &Event) -> String {
        #[derive(serde::Deserialize)]
        struct Transition {
            state: String,
        }
        if self.table.is_internal()
            && let Ok(t) = serde_json::from_str::<Transition>(&e.data)
        {
            let level = if e.record.contains('/') {
                "table"
            } else {
                "source"
            };
            return format!("{}.{level}.{}", self.type_prefix, t.state);
        }
        format!("{}.{}.{}", self.type_prefix, self.table.resource, e.op)
    }

    /// The CloudEvents `id` alone: `<source>:<resource>:<record>:<stamp>`.
    pub fn id(&self, e: &Event) -> String {
        format!(
            "{}:{}:{}:{}",
            self.table.source, self.table.resource, e.record, e.stamp
        )
    }

    /// The `traceparent` of `e`'s append (two SHA-256s: [`Writer`] keeps
    /// the last one, as every event of one poll shares it).
    fn traceparent(&self, e: &Event) -> String {
        self.trace(e).append_parent()
    }

    /// The trace of the poll that appended `e`, derived from its `observed`.
    pub fn trace(&self, e: &Event) -> crate::trace::PollTrace {
        crate::trace::PollTrace::of(&self.table.source, &self.table.resource, e.observed)
    }

    /// `e`'s CloudEvents JSON, as [`Writer`] writes it.
    pub fn to_json(&self, e: &Event) -> String {
        let mut out = Vec::with_capacity(e.data.len() + 400);
        Writer::new(self).write(&mut out, e, &e.data, None);
        String::from_utf8(out).expect("CloudEvents JSON is UTF-8")
    }
}

/// Writes CloudEvents JSON straight into a buffer, field by field in the
/// order of [`CloudEvent`], with the record's stored bytes as `data`: no
/// JSON tree, no re-validation of the record (the store holds only
/// records `record.rs` parsed on ingest). The time and `traceparent` of
/// the last poll seen are kept, as every event of one poll shares them.
pub struct Writer<'a> {
    src: &'a EventSource,
    /// `observed`, its RFC 3339 time and its `traceparent`.
    last: Option<(u64, String, String)>,
}

impl<'a> Writer<'a> {
    pub fn new(src: &'a EventSource) -> Self {
        Writer { src, last: None }
    }

    pub fn source(&self) -> &'a EventSource {
        self.src
    }

    /// Appends `e`'s CloudEvent carrying `data` (the record, or what a
    /// selection made of it), and `dataschema` last when given.
    pub fn write(&mut self, out: &mut Vec<u8>, e: &Event, data: &str, dataschema: Option<&str>) {
        use std::io::Write;
        let src = self.src;
        let t = &src.table;
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":\"");
        escaped(out, &t.source);
        out.push(b':');
        escaped(out, &t.resource);
        out.push(b':');
        escaped(out, &e.record);
        let _ = write!(out, ":{}\",\"source\":", e.stamp);
        string(out, &src.source_url);
        if t.is_internal() {
            out.extend_from_slice(b",\"type\":");
            string(out, &src.ty(e));
            out.extend_from_slice(b",\"subject\":");
        } else {
            out.extend_from_slice(b",\"type\":\"");
            escaped(out, &src.type_prefix);
            out.push(b'.');
            escaped(out, &t.resource);
            let _ = write!(out, ".{}\",\"subject\":", e.op);
        }
        string(out, &e.record);
        let (time, traceparent) = self.poll(e);
        let _ = write!(
            out,
            ",\"time\":\"{time}\",\"datacontenttype\":\"application/json\",\"updatestamp\":{},\"snapshot\":{},\"streamid\":\"{}\",\"traceparent\":\"{traceparent}\",\"data\":",
            e.stamp, e.snapshot, e.id
        );
        out.extend_from_slice(data.as_bytes());
        if let Some(schema) = dataschema {
            out.extend_from_slice(b",\"dataschema\":");
            string(out, schema);
        }
        out.push(b'}');
    }

    /// The time and `traceparent` of `e`'s poll.
    fn poll(&mut self, e: &Event) -> (&str, &str) {
        if self.last.as_ref().is_none_or(|(o, _, _)| *o != e.observed) {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.observed);
            let time = humantime::format_rfc3339_millis(at).to_string();
            self.last = Some((e.observed, time, self.src.traceparent(e)));
        }
        let (_, time, tp) = self.last.as_ref().expect("just set");
        (time, tp)
    }
}

/// The content type of one CloudEvent in structured mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// The content type of a JSON array of CloudEvents.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// A webhook body, its content type and its `webhook-id`: one event
/// unbatched is the CloudEvent itself (`application/cloudevents+json`, the
/// event's id); otherwise a JSON array of them
/// (`application/cloudevents-batch+json`, `<first id>+<the others' count>`,
/// so a retried batch keeps its id). `write` appends one event's JSON.
pub fn webhook_body<E: std::borrow::Borrow<Event>>(
    src: &EventSource,
    events: &[E],
    batch: bool,
    mut write: impl FnMut(&mut Writer<'_>, &mut Vec<u8>, &Event),
) -> (Vec<u8>, &'static str, String) {
    let single = !batch && events.len() == 1;
    let size: usize = events.iter().map(|e| e.borrow().data.len() + 480).sum();
    let mut out = Vec::with_capacity(size + 2);
    let mut w = Writer::new(src);
    if !single {
        out.push(b'[');
    }
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(&mut w, &mut out, e.borrow());
    }
    let first = events
        .first()
        .map(|e| src.id(e.borrow()))
        .unwrap_or_default();
    if single {
        return (out, CONTENT_TYPE, first);
    }
    out.push(b']');
    let id = format!("{first}+{}", events.len().saturating_sub(1));
    (out, BATCH_CONTENT_TYPE, id)
}

/// A JSON string, quoted and escaped as serde_json writes it.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s);
    out.push(b'"');
}

/// `s` escaped as inside a JSON string, without the quotes.
fn escaped(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(s.as_bytes());
    } else {
        let quoted = serde_json::to_string(s).expect("strings serialize");
        out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Op, StreamId};
    use serde::Serialize;
    use serde_json::value::RawValue;

    /// The renderer [`Writer`] replaced (a struct serialized by serde,
    /// `data` re-validated per event), kept as the oracle its bytes are
    /// compared with.
    #[derive(Serialize)]
    struct CloudEvent<'a> {
        specversion: &'static str,
        id: String,
        source: &'a str,
        #[serde(rename = "type")]
        ty: String,
        subject: &'a str,
        time: String,
        datacontenttype: &'static str,
        updatestamp: u64,
        snapshot: bool,
        streamid: String,
        traceparent: String,
        data: &'a RawValue,
    }

    fn reference<'a>(src: &'a EventSource, e: &'a Event, data: &'a RawValue) -> CloudEvent<'a> {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.observed);
        CloudEvent {
            specversion: "1.0",
            id: src.id(e),
            source: &src.source_url,
            ty: format!("{}.{}.{}", src.type_prefix, src.table.resource, e.op),
            subject: &e.record,
            time: humantime::format_rfc3339_millis(time).to_string(),
            datacontenttype: "application/json",
            updatestamp: e.stamp,
            snapshot: e.snapshot,
            streamid: e.id.to_string(),
            traceparent: src.trace(e).append_parent(),
            data,
        }
    }

    /// The old form of an event with previous values: `dataschema` after
    /// the flattened CloudEvent.
    #[derive(Serialize)]
    struct WithPrevious<'a> {
        #[serde(flatten)]
        event: CloudEvent<'a>,
        dataschema: &'static str,
    }

    fn sample_events() -> Vec<Event> {
        let records = ["abc", "a\"b\\c", "z\u{7f}ë\u{1}\n", "12345", "x:y"];
        let datas = [
            r#"{"uuid":"abc","score":1.50}"#,
            r#"{"name":"Zoë \"Q\"","nested":{"a":[1,2,{"b":null}]},"e":1e3}"#,
            r#"{ "spaced" : true }"#,
        ];
        let mut out = Vec::new();
        for (i, record) in records.iter().enumerate() {
            for (j, data) in datas.iter().enumerate() {
                let n = (i * 3 + j) as u64;
                out.push(Event {
                    id: StreamId::new(1000 + n, n % 3),
                    op: [Op::Created, Op::Updated, Op::Deleted, Op::Restored][(i + j) % 4],
                    record: record.to_string(),
                    stamp: u64::MAX - n,
                    prev: Some(n),
                    snapshot: n.is_multiple_of(2),
                    // Two polls, so the writer's cached time and trace change.
                    observed: 1_700_000_000_123 + 1000 * (n / 7),
                    data: data.to_string(),
                    prev_id: None,
                    before: (j > 0).then(|| datas[j - 1].to_string()),
                });
            }
        }
        out
    }

    /// Replay pages, live frames and webhook bodies stay byte for byte what
    /// the serde renderer made, for odd records, sources and data alike.
    #[test]
    fn the_writer_renders_byte_for_byte_what_serde_did() {
        let srcs = [
            EventSource {
                table: Table::new("pc", "patients"),
                source_url: "https://h/api/patients".into(),
                type_prefix: "com.example".into(),
                fields: Default::default(),
            },
            EventSource {
                table: Table::new("s\"1", "r\\x"),
                source_url: "https://h/\"quoted\"\u{2}".into(),
                type_prefix: "io.ë".into(),
                fields: Default::default(),
            },
        ];
        for src in &srcs {
            let mut w = Writer::new(src);
            let events = sample_events();
            for e in &events {
                let data: &RawValue = serde_json::from_str(&e.data).unwrap();
                let old = serde_json::to_string(&reference(src, e, data)).unwrap();
                let mut out = Vec::new();
                w.write(&mut out, e, &e.data, None);
                assert_eq!(String::from_utf8(out).unwrap(), old);
                assert_eq!(src.to_json(e), old);
                let prev = crate::previous::data(e);
                let old = serde_json::to_string(&WithPrevious {
                    event: reference(src, e, &prev),
                    dataschema: crate::previous::DATASCHEMA,
                })
                .unwrap();
                let mut out = Vec::new();
                w.write(&mut out, e, prev.get(), Some(crate::previous::DATASCHEMA));
                assert_eq!(String::from_utf8(out).unwrap(), old);
            }
            // A batch body is the array of the same events.
            let all: Vec<_> = events
                .iter()
                .map(|e| reference(src, e, serde_json::from_str(&e.data).unwrap()))
                .collect();
            let (body, ty, id) = webhook_body(src, &events, true, |w, out, e| {
                w.write(out, e, &e.data, None)
            });
            assert_eq!(body, serde_json::to_vec(&all).unwrap());
            assert_eq!(ty, "application/cloudevents-batch+json");
            assert_eq!(id, format!("{}+{}", all[0].id, all.len() - 1));
            let (body, ty, id) = webhook_body(src, &events[..1], false, |w, out, e| {
                w.write(out, e, &e.data, None)
            });
            assert_eq!(body, serde_json::to_vec(&all[0]).unwrap());
            assert_eq!(
                (ty, id.as_str()),
                ("application/cloudevents+json", all[0].id.as_str())
            );
        }
    }

    #[test]
    fn carries_the_contract_fields_and_raw_data() {
        let src = EventSource {
            table: Table::new("pc", "patients"),
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
