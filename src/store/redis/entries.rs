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
        let mut pairs = Vec::with_capacity(fields.len() / 2);
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((text(k)?, text(v)?));
        }
        out.push(event(id, pairs)?);
    }
    Ok(out)
}

/// An event from its stream entry's fields.
fn event<K: AsRef<str>, V: Into<String> + AsRef<str>>(
    id: StreamId,
    fields: impl IntoIterator<Item = (K, V)>,
) -> StoreResult<Event> {
    let (mut op, mut record, mut stamp, mut prev, mut snapshot, mut observed, mut data) =
        (None, None, None, None, false, 0, None);
    let (mut before, mut prev_id) = (None, None);
    for (k, v) in fields {
        let text = v.as_ref();
        match k.as_ref() {
            "op" => op = Some(text.parse().map_err(StoreError::Corrupt)?),
            "record" => record = Some(v.into()),
            "stamp" => stamp = text.parse().ok(),
            "prev" => prev = text.parse().ok(),
            "snapshot" => snapshot = text == "1",
            "observed" => observed = text.parse().unwrap_or(0),
            "data" => data = Some(v.into()),
            "before" => before = Some(v.into()),
            "previd" => prev_id = text.parse().ok(),
            _ => {}
        }
    }
    let missing =
        || StoreError::Corrupt(format!("stream entry {id} lacks op, record, stamp or data"));
    Ok(Event {
        id,
        op: op.ok_or_else(missing)?,
        record: record.ok_or_else(missing)?,
        stamp: stamp.ok_or_else(missing)?,
        prev,
        snapshot,
        observed,
        data: data.ok_or_else(missing)?,
        prev_id,
        before,
    })
}

/// Parses the packed reply of `claim.lua`: one bulk string holding, per
/// entry, its ID, its field count and its fields and values, each written
/// as `<byte length>:<bytes>`. One value instead of some seventeen per
/// entry: parsing nested replies cost more CPU than the rest of a delivery.
pub(super) fn parse_packed(reply: redis::Value) -> StoreResult<Vec<Event>> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("unexpected claim reply: {what}"));
    let bytes = match reply {
        redis::Value::BulkString(b) => b,
        redis::Value::Nil => return Ok(Vec::new()),
        redis::Value::Array(a) if a.is_empty() => return Ok(Vec::new()),
        _ => return Err(corrupt("not a string")),
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not UTF-8"))?;
    let mut rest = text;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let id = parse_id(token(&mut rest)?)?;
        let n: usize = token(&mut rest)?
            .parse()
            .map_err(|_| corrupt("bad field count"))?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((token(&mut rest)?, token(&mut rest)?));
        }
        out.push(event(id, pairs)?);
    }
    Ok(out)
}

/// The next `<byte length>:<bytes>` of a packed reply.
fn token<'a>(rest: &mut &'a str) -> StoreResult<&'a str> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("unexpected claim reply: {what}"));
    let (len, after) = rest.split_once(':').ok_or_else(|| corrupt("no length"))?;
    let len: usize = len.parse().map_err(|_| corrupt("bad length"))?;
    let value = after.get(..len).ok_or_else(|| corrupt("truncated"))?;
    *rest = &after[len..];
    Ok(value)
}

pub(super) fn parse_id(s: &str) -> StoreResult<StreamId> {
    s.parse().map_err(StoreError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(items: &[&str]) -> redis::Value {
        let s: String = items.iter().map(|i| format!("{}:{i}", i.len())).collect();
        redis::Value::BulkString(s.into_bytes())
    }

    /// Values holding the separator, multi-byte text and JSON come back
    /// whole; an empty reply is no entries; a cut-off one is an error.
    #[test]
    fn packed_claims_parse_back_to_the_events() {
        let data = r#"{"name":"Zoë:1","n":2}"#;
        let reply = packed(&[
            "5-0", "5", "op", "updated", "record", "a:b", "stamp", "5", "prev", "3", "data", data,
            "7-1", "4", "op", "created", "record", "c", "stamp", "7", "data", "{}",
        ]);
        let events = parse_packed(reply).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, StreamId::new(5, 0));
        assert_eq!(
            (events[0].record.as_str(), events[0].data.as_str()),
            ("a:b", data)
        );
        assert_eq!((events[0].stamp, events[0].prev), (5, Some(3)));
        assert_eq!(events[1].id, StreamId::new(7, 1));
        assert_eq!(events[1].prev, None);
        assert!(
            parse_packed(redis::Value::BulkString(Vec::new()))
                .unwrap()
                .is_empty()
        );
        let redis::Value::BulkString(mut cut) = packed(&["5-0", "1", "data", data]) else {
            unreachable!()
        };
        cut.truncate(cut.len() - 1);
        assert!(parse_packed(redis::Value::BulkString(cut)).is_err());
        // No op, record or stamp: corrupt, not a half-made event.
        assert!(parse_packed(packed(&["5-0", "1", "data", "{}"])).is_err());
    }
}
