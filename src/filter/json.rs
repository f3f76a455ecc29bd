//! Reading record JSON without building a tree: one pass over an object's
//! entries, each value kept as its raw text, so a filter or a projection
//! touches only the fields it names and numbers keep their exact bytes.

use std::{borrow::Cow, fmt};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Calls `f` with each key (unescaped) and raw value of the JSON object
/// `json`, in order. Returns false, having called `f` for nothing or only
/// a prefix, when `json` is not an object.
pub fn for_each_entry<'de>(json: &'de str, f: impl FnMut(Cow<'de, str>, &'de RawValue)) -> bool {
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(Entries(f)).is_ok() && de.end().is_ok()
}

struct Entries<F>(F);

impl<'de, F: FnMut(Cow<'de, str>, &'de RawValue)> Visitor<'de> for Entries<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(k)) = map.next_key()? {
            let v: &'de RawValue = map.next_value()?;
            (self.0)(k, v);
        }
        Ok(())
    }
}

/// A key borrowed from the input unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The text a filter compares a record value by: a string's value, a
/// number's or boolean's JSON text; `None` for null, objects and arrays.
pub fn scalar_text(v: &RawValue) -> Option<Cow<'_, str>> {
    let s = v.get();
    match s.as_bytes().first()? {
        b'"' if !s.contains('\\') => Some(Cow::Borrowed(&s[1..s.len() - 1])),
        b'"' => serde_json::from_str::<String>(s).ok().map(Cow::Owned),
        b'{' | b'[' | b'n' => None,
        _ => Some(Cow::Borrowed(s)),
    }
}

/// Dotted paths into a record (`assessment.pain_score`) as a tree keyed by
/// field name; `end` marks a node where a path ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathTree {
    pub end: bool,
    pub children: Vec<(String, PathTree)>,
}

impl PathTree {
    /// Adds `path` (already split and checked).
    pub fn insert(&mut self, path: &[&str]) {
        match path.split_first() {
            None => self.end = true,
            Some((head, rest)) => {
                let pos = match self.children.iter().position(|(k, _)| k == head) {
                    Some(p) => p,
                    None => {
                        self.children.push((head.to_string(), PathTree::default()));
                        self.children.len() - 1
                    }
                };
                self.children[pos].1.insert(rest)
            }
        }
    }

    pub fn child(&self, key: &str) -> Option<&PathTree> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, t)| t)
    }
}

/// Splits a dotted field path, refusing empty segments.
pub fn split_path(path: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = path.split('.').collect();
    (!parts.iter().any(|p| p.is_empty())).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_raw_values_and_unescape_keys() {
        let mut seen = Vec::new();
        let ok = for_each_entry(r#"{"a": 1.50, "b\"c": {"x": [1]}, "d": null}"#, |k, v| {
            seen.push((k.into_owned(), v.get().to_string()))
        });
        assert!(ok);
        assert_eq!(
            seen,
            [
                ("a".to_string(), "1.50".to_string()),
                ("b\"c".into(), r#"{"x": [1]}"#.into()),
                ("d".into(), "null".into())
            ]
        );
        assert!(!for_each_entry("[1]", |_, _| {}));
        assert!(!for_each_entry(r#"{"a":1} x"#, |_, _| {}));
    }

    #[test]
    fn scalars_compare_by_value_or_json_text() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        assert_eq!(scalar_text(&raw(r#""F""#)).as_deref(), Some("F"));
        assert_eq!(scalar_text(&raw(r#""a\"b""#)).as_deref(), Some("a\"b"));
        assert_eq!(scalar_text(&raw("1.50")).as_deref(), Some("1.50"));
        assert_eq!(scalar_text(&raw("true")).as_deref(), Some("true"));
        for none in ["null", "{}", "[1]"] {
            assert_eq!(scalar_text(&raw(none)), None, "{none}");
        }
    }

    #[test]
    fn a_path_tree_shares_prefixes() {
        let mut t = PathTree::default();
        t.insert(&["site"]);
        t.insert(&["assessment", "pain_score"]);
        t.insert(&["assessment"]);
        t.insert(&["site"]);
        assert_eq!(t.children.len(), 2);
        let a = t.child("assessment").unwrap();
        assert!(a.end && a.child("pain_score").unwrap().end && !t.end);
        assert_eq!(split_path("a.b"), Some(vec!["a", "b"]));
        assert_eq!(split_path("a..b"), None);
        assert_eq!(split_path(""), None);
    }
}
