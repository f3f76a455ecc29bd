//! A record schema inferred from the records seen: each top-level field's
//! JSON types (`null` among them when it was null) and whether every
//! record had it. Pure, so it is tested without a store.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

#[derive(Debug, Default)]
pub struct Inferred {
    records: u64,
    fields: BTreeMap<String, Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    types: BTreeSet<&'static str>,
    /// Records that had the field.
    present: u64,
}

impl Inferred {
    /// Folds one record in; returns the fields it showed for the first time.
    pub fn observe(&mut self, record: &Value) -> Vec<String> {
        let Some(obj) = record.as_object() else {
            return Vec::new();
        };
        self.records += 1;
        let mut new = Vec::new();
        for (name, v) in obj {
            let seen = self.fields.entry(name.clone()).or_insert_with(|| {
                new.push(name.clone());
                Seen::default()
            });
            seen.types.insert(json_type(v));
            seen.present += 1;
        }
        new
    }

    /// The JSON Schema of the records seen, marked `"x-inferred": true`.
    /// It allows other fields: the upstream may add some.
    pub fn schema(&self) -> Value {
        let properties: serde_json::Map<String, Value> = self
            .fields
            .iter()
            .map(|(name, seen)| (name.clone(), type_schema(&seen.types)))
            .collect();
        let required: Vec<&String> = self
            .fields
            .iter()
            .filter(|(_, s)| s.present == self.records)
            .map(|(name, _)| name)
            .collect();
        json!({
            "type": "object",
            "x-inferred": true,
            "x-versions-seen": self.records,
            "properties": properties,
            "required": required,
        })
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `{"type": t}` or `{"type": [t, …]}`; `number` covers `integer`.
fn type_schema(types: &BTreeSet<&'static str>) -> Value {
    let mut types: Vec<&str> = types.iter().copied().collect();
    if types.contains(&"number") {
        types.retain(|t| *t != "integer");
    }
    match types.as_slice() {
        [one] => json!({ "type": one }),
        many => json!({ "type": many }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_nullability_and_required_fields() {
        let mut i = Inferred::default();
        let first = i.observe(&json!({"uuid": "a", "score": 1, "note": null, "deleted_at": null}));
        assert_eq!(first.len(), 4);
        assert!(
            i.observe(&json!({"uuid": "b", "score": 2.5, "note": "x"}))
                .is_empty()
        );
        assert_eq!(
            i.observe(&json!({"uuid": "c", "score": 3, "tags": []})),
            ["tags"]
        );
        let s = i.schema();
        assert_eq!(s["x-inferred"], true);
        assert_eq!(s["properties"]["score"], json!({"type": "number"}));
        assert_eq!(s["properties"]["note"], json!({"type": ["null", "string"]}));
        assert_eq!(s["properties"]["uuid"], json!({"type": "string"}));
        assert_eq!(s["required"], json!(["score", "uuid"]));
    }
}
