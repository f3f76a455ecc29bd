//! Upstream pages and records: parsing the DRF envelope and pulling the id,
//! stamp and deleted flag out of each record while keeping its raw JSON.

use std::{borrow::Cow, collections::HashMap};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{config::FieldNames, events::MAX_RECORD_STAMP};

/// One page of a Django REST Framework list response.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub count: u64,
    pub next: Option<String>,
    pub results: Vec<Box<RawValue>>,
}

impl Page {
    /// Parses a body; the error carries the start of the body so the
    /// upstream's own words reach the operator.
    pub fn parse(body: &[u8]) -> Result<Page, String> {
        serde_json::from_slice(body).map_err(|e| {
            format!(
                "the upstream answered with a body that is not a list page ({e}): {}",
                excerpt(body)
            )
        })
    }
}

/// The first few hundred characters of a body, for error messages, with
/// control characters escaped (the upstream wrote them; see
/// [`crate::http::printable`]).
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    crate::http::printable(&s)
}

/// A record version as the upstream showed it.
#[derive(Debug, Clone)]
pub struct UpstreamRecord {
    pub id: String,
    pub stamp: u64,
    pub deleted: bool,
    /// Exactly the bytes received, never re-serialised.
    pub raw: Box<RawValue>,
}

/// A record that cannot become an event, with the reason.
#[derive(Debug, Clone)]
pub struct RejectedRecord {
    /// The record's id, when it has one (a bad stamp).
    pub id: Option<String>,
    pub raw: String,
    pub reason: String,
}

pub fn parse_record(
    raw: Box<RawValue>,
    fields: &FieldNames,
) -> Result<UpstreamRecord, RejectedRecord> {
    let reject = |id: Option<&str>, reason: String| RejectedRecord {
        id: id.map(str::to_string),
        raw: raw.get().to_string(),
        reason,
    };
    // Borrowed keys are the fast path; keys with escapes need owned ones.
    let map: HashMap<Cow<'_, str>, &RawValue> =
        match serde_json::from_str::<HashMap<&str, &RawValue>>(raw.get()) {
            Ok(m) => m.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)).collect(),
            Err(_) => match serde_json::from_str::<HashMap<String, &RawValue>>(raw.get()) {
                Ok(m) => m.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect(),
                Err(_) => return Err(reject(None, "record is not a JSON object".into())),
            },
        };
    let field = |name: &str| map.get(name).copied();
    let id = match field(&fields.id).map(scalar) {
        Some(Some(id)) if !id.is_empty() => id,
        _ => {
            return Err(reject(
                None,
                format!("record has no usable id field {:?}", fields.id),
            ));
        }
    };
    if let Err(why) = carriable(&id) {
        // The id is shown escaped: it may hold what would forge a log line.
        return Err(reject(None, format!("record id {id:?} {why}")));
    }
    let stamp =
        stamp_of(field(&fields.stamp), &id, &fields.stamp).map_err(|why| reject(Some(&id), why))?;
    let deleted = field(&fields.deleted_at).is_some_and(|v| v.get() != "null");
    Ok(UpstreamRecord {
        id,
        stamp,
        deleted,
        raw,
    })
}

/// The stamp of record `id` from its stamp field (named `name`): a
/// positive integer up to [`MAX_RECORD_STAMP`].
fn stamp_of(value: Option<&RawValue>, id: &str, name: &str) -> Result<u64, String> {
    match value.and_then(scalar).and_then(|s| s.parse::<u64>().ok()) {
        Some(s) if s > MAX_RECORD_STAMP => Err(format!(
            "record {id} has stamp {s}, above {MAX_RECORD_STAMP} (2^53 - 1), the largest \
             stamp every reader holds exactly; a later poll could never reach past it"
        )),
        Some(s) if s > 0 => Ok(s),
        _ => Err(format!(
            "record {id} has no positive integer stamp field {name:?}"
        )),
    }
}

/// The longest record id taken, in bytes of UTF-8 (docs/events.md).
pub const MAX_ID_BYTES: usize = 256;

/// Whether an id can go everywhere an id goes (stream entries, the
/// `webhook-id` header, URLs, logs): no control characters, at most
/// [`MAX_ID_BYTES`]. Other characters are carried, percent-encoded in
/// headers.
fn carriable(id: &str) -> Result<(), String> {
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "is {} bytes long; ids of at most {MAX_ID_BYTES} bytes are taken",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("holds control characters; ids must be printable".into());
    }
    Ok(())
}

/// A string or integer JSON value as text; anything else is not an id/stamp.
fn scalar(v: &RawValue) -> Option<String> {
    let s = v.get();
    if s.starts_with('"') {
        serde_json::from_str::<String>(s).ok()
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(s.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<UpstreamRecord, RejectedRecord> {
        parse_record(
            RawValue::from_string(json.into()).unwrap(),
            &FieldNames::default(),
        )
    }

    #[test]
    fn keeps_raw_bytes_and_reads_fields() {
        let r = parse(r#"{"uuid":"a","update_stamp":760,"deleted_at":null, "x": 1.50}"#).unwrap();
        assert_eq!((r.id.as_str(), r.stamp, r.deleted), ("a", 760, false));
        assert_eq!(
            r.raw.get(),
            r#"{"uuid":"a","update_stamp":760,"deleted_at":null, "x": 1.50}"#
        );
        let d =
            parse(r#"{"uuid":7,"update_stamp":"8","deleted_at":"2024-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!((d.id.as_str(), d.stamp, d.deleted), ("7", 8, true));
    }

    #[test]
    fn rejects_records_without_id_or_stamp() {
        assert!(
            parse(r#"{"update_stamp":3}"#)
                .unwrap_err()
                .reason
                .contains("id")
        );
        assert!(
            parse(r#"{"uuid":"a"}"#)
                .unwrap_err()
                .reason
                .contains("stamp")
        );
        assert!(parse(r#"{"uuid":"a","update_stamp":-1}"#).is_err());
        assert!(parse(r#"[1]"#).unwrap_err().reason.contains("object"));
        assert_eq!(parse(r#"{"uuid":"a"}"#).unwrap_err().raw, r#"{"uuid":"a"}"#);
        assert_eq!(
            parse(r#"{"uuid":"a"}"#).unwrap_err().id.as_deref(),
            Some("a")
        );
        assert_eq!(parse(r#"{"update_stamp":3}"#).unwrap_err().id, None);
    }

    #[test]
    fn rejects_ids_that_cannot_be_carried_and_stamps_past_2_pow_53() {
        let control = parse(r#"{"uuid":"a\u001b[31mb\n","update_stamp":3}"#).unwrap_err();
        assert!(
            control.reason.contains("control characters"),
            "{}",
            control.reason
        );
        assert!(
            control.reason.contains(r#""a\u{1b}[31mb\n""#),
            "{}",
            control.reason
        );
        let long = format!(r#"{{"uuid":"{}","update_stamp":3}}"#, "x".repeat(257));
        assert!(parse(&long).unwrap_err().reason.contains("257 bytes"));
        let fits = format!(r#"{{"uuid":"{}","update_stamp":3}}"#, "é".repeat(128));
        assert!(parse(&fits).is_ok(), "256 bytes, printable");
        assert!(parse(r#"{"uuid":"Zoë O'Brien/1","update_stamp":3}"#).is_ok());
        let huge = parse(r#"{"uuid":"a","update_stamp":9223372036854775813}"#).unwrap_err();
        assert!(
            huge.reason.contains("above 9007199254740991"),
            "{}",
            huge.reason
        );
        assert_eq!(huge.id.as_deref(), Some("a"));
        assert!(parse(r#"{"uuid":"a","update_stamp":9007199254740992}"#).is_err());
        assert!(parse(r#"{"uuid":"a","update_stamp":9007199254740991}"#).is_ok());
    }

    #[test]
    fn page_errors_quote_the_body() {
        let e = Page::parse(br#"{"count": 3, "results": [{"uuid""#).unwrap_err();
        assert!(e.contains(r#"{"count": 3"#), "{e}");
    }
}
