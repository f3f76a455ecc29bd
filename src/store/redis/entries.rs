//! Stream entries as Redis returns them, parsed into events.

use super::{StoreError, StoreResult};
use crate::events::{Event, StreamId};

pub(super) fn field<T: redis::FromRedisValue>(
    e: &redis::streams::StreamId,
    name: &str,
) -> StoreResult<T> {
    e.get(name).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "stream entry {} has no readable field {name:?}",
            e.id
        ))
    })
}

/// Parses an `XRANGE` reply straight from the wire values, moving each
/// field's bytes into the event instead of going through a map per entry
/// (the replay path reads thousands of entries per request).
pub(super) fn parse_entries(reply: redis::Value) -> StoreResult<Vec<Event>> {
    use redis::Value;
    let corrupt = |what: &str| StoreError::Corrupt(format!("unexpected XRANGE reply: {what}"));
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| corrupt("field is not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(corrupt("field is not a string")),
    };
    let Value::Array(entries) = reply else {
        return Err(corrupt("not an array"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(corrupt("entry is not an array"));
        };
        let (Some(Value::Array(fields)), Some(id)) = (parts.pop(), parts.pop()) else {
            return Err(corrupt("entry has no fields"));
        };
        let id = parse_id(&text(id)?)?;
        let (mut op, mut record, mut stamp, mut prev, mut snapshot, mut observed, mut data) =
            (None, None, None, None, false, 0, None);
        let mut before = None;
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let v = text(v)?;
            match text(k)?.as_str() {
                "op" => op = Some(v.parse().map_err(StoreError::Corrupt)?),
                "record" => record = Some(v),
                "stamp" => stamp = v.parse().ok(),
                "prev" => prev = v.parse().ok(),
                "snapshot" => snapshot = v == "1",
                "observed" => observed = v.parse().unwrap_or(0),
                "data" => data = Some(v),
                "before" => before = Some(v),
                _ => {}
            }
        }
        let missing =
            || StoreError::Corrupt(format!("stream entry {id} lacks op, record, stamp or data"));
        out.push(Event {
            id,
            op: op.ok_or_else(missing)?,
            record: record.ok_or_else(missing)?,
            stamp: stamp.ok_or_else(missing)?,
            prev,
            snapshot,
            observed,
            data: data.ok_or_else(missing)?,
            before,
        });
    }
    Ok(out)
}

pub(super) fn parse_id(s: &str) -> StoreResult<StreamId> {
    s.parse().map_err(StoreError::Corrupt)
}
