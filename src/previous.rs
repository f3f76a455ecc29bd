//! Previous values (docs/events.md, "Previous values"): for a subscription
//! with `"previous": true`, or replay and live stream with `previous=true`,
//! an event's `data` is `{"record": <the record as received>, "previous":
//! <the old values of the fields that changed>}` and the CloudEvent names
//! [`DATASCHEMA`]. The old version is looked up only for readers that ask
//! (`RecordStore::fill_previous`: the replaced version's own event, or its
//! kept copy once retention removed that event), so nothing is stored per
//! event or kept per subscriber.
//!
//! `previous` holds, for each field whose value differs between the
//! versions, its old value exactly as received (`null` for a field the old
//! version lacked); an object in both versions holds only its own changed
//! fields. It is `null` for `created` events and for events
//! whose old version the relay does not have (appended before it kept
//! records, or with `keep_records = false`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::events::Event;

/// The `dataschema` of events whose data carries previous values.
pub const DATASCHEMA: &str = "urn:stamp-relay:schema:record-with-previous:1";

type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// The old values of the fields that changed from `before` to `after`, as
/// a JSON object; none when either is not a JSON object. A field that is an
/// object in both versions holds only its own changed fields (as Stripe's
/// `previous_attributes` does), so a nested score that changed shows alone.
pub fn changed(before: &str, after: &str) -> Option<String> {
    let old: Fields = serde_json::from_str(before).ok()?;
    let new: Fields = serde_json::from_str(after).ok()?;
    serde_json::to_string(&diff(&old, &new)).ok()
}

/// A changed field's old value: raw, absent (`null`), or for an object in
/// both versions that object's own changed fields.
#[derive(Serialize)]
#[serde(untagged)]
enum Old<'a> {
    Raw(&'a RawValue),
    Absent(()),
    Nested(BTreeMap<String, Old<'a>>),
}

fn diff<'a>(old: &Fields<'a>, new: &Fields<'a>) -> BTreeMap<String, Old<'a>> {
    // Equal when the bytes are, or both parse to the same value (1.50 is
    // 1.5); two values that do not parse differ unless their bytes agree.
    let same = |a: &RawValue, b: &RawValue| {
        a.get() == b.get()
            || matches!(
                (
                    serde_json::from_str::<serde_json::Value>(a.get()),
                    serde_json::from_str::<serde_json::Value>(b.get())
                ),
                (Ok(x), Ok(y)) if x == y
            )
    };
    let object = |v: &'a RawValue| serde_json::from_str::<Fields<'a>>(v.get()).ok();
    let mut out = BTreeMap::new();
    for (k, v) in new {
        let entry = match old.get(k) {
            Some(o) if same(o, v) => continue,
            Some(o) => match (object(o), object(v)) {
                (Some(o), Some(v)) => Old::Nested(diff(&o, &v)),
                _ => Old::Raw(o),
            },
            None => Old::Absent(()),
        };
        out.insert(k.clone(), entry);
    }
    for (k, o) in old {
        if !new.contains_key(k) {
            out.insert(k.clone(), Old::Raw(o));
        }
    }
    out
}

/// The `data` of an event with previous values.
pub fn data(e: &Event) -> Box<RawValue> {
    let previous = e
        .before
        .as_deref()
        .and_then(|b| changed(b, &e.data))
        .unwrap_or_else(|| "null".into());
    let record = if serde_json::from_str::<&RawValue>(&e.data).is_ok() {
        e.data.as_str()
    } else {
        "null"
    };
    let json = format!("{{\"record\":{record},\"previous\":{previous}}}");
    RawValue::from_string(json)
        .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_fields_with_their_old_raw_values() {
        let before = r#"{"uuid":"a","score":3,"note":"x","gone":1.50,"same":{"a": 1}}"#;
        let after = r#"{"uuid":"a","score":8,"note":"x","new":true,"same":{"a":1}}"#;
        assert_eq!(
            changed(before, after).unwrap(),
            r#"{"gone":1.50,"new":null,"score":3}"#
        );
        assert_eq!(changed("{}", "{}").unwrap(), "{}");
        // Nested objects: only their changed fields, at any depth.
        let before = r#"{"assessment":{"pain_score":3,"site":"a","face":{"x":1,"y":2}}}"#;
        let after = r#"{"assessment":{"pain_score":8,"site":"a","face":{"x":1,"y":5}}}"#;
        assert_eq!(
            changed(before, after).unwrap(),
            r#"{"assessment":{"face":{"y":2},"pain_score":3}}"#
        );
        // An object that replaced a scalar (or the reverse) is a plain value.
        assert_eq!(
            changed(r#"{"a":1}"#, r#"{"a":{"b":1}}"#).unwrap(),
            r#"{"a":1}"#
        );
        assert_eq!(changed("[1]", "{}"), None);
    }

    #[test]
    fn data_wraps_the_record_and_null_without_a_known_version() {
        let mut e = Event {
            id: crate::events::StreamId::new(4, 0),
            op: crate::events::Op::Updated,
            record: "a".into(),
            stamp: 4,
            prev: Some(2),
            snapshot: false,
            observed: 0,
            data: r#"{"uuid":"a","score":8}"#.into(),
            prev_id: None,
            before: None,
        };
        assert_eq!(
            data(&e).get(),
            r#"{"record":{"uuid":"a","score":8},"previous":null}"#
        );
        e.before = Some(r#"{"uuid":"a","score":3}"#.into());
        assert_eq!(
            data(&e).get(),
            r#"{"record":{"uuid":"a","score":8},"previous":{"score":3}}"#
        );
    }
}
