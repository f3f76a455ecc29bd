//! openapi.yaml as tests read it: the document, the routes it describes,
//! and a check of a real answer against the schema documented for it.

use std::collections::BTreeSet;

use serde_json::Value;

/// The document as JSON.
pub fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// (METHOD, path) pairs the document describes.
pub fn documented() -> BTreeSet<(String, String)> {
    let spec = spec();
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in ["get", "post", "patch", "put", "delete"] {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut cur = spec;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            resolve(spec, cur)
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// A small JSON Schema check: `$ref`, `allOf`, `oneOf`, `type`, `required`,
/// `properties`, `items`, `enum`, `const`, `additionalProperties: false`.
pub fn validate(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(spec, s, v, at)?;
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array)
        && !one.iter().any(|s| validate(spec, s, v, at).is_ok())
    {
        return Err(format!("{at}: matches none of oneOf"));
    }
    match schema.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => {
            return Err(format!("{at}: expected {t}, got {v}"));
        }
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)) => {
            return Err(format!("{at}: expected one of {ts:?}, got {v}"));
        }
        _ => {}
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return Err(format!("{at}: expected {c}, got {v}"));
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !v.is_null()
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} is not in {e:?}"));
    }
    if let Some(obj) = v.as_object() {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{at}: missing required {r:?}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(spec, s, val, &format!("{at}.{k}"))?,
                None => {
                    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return Err(format!("{at}: undocumented property {k:?}"));
                    }
                    if let Some(extra) =
                        schema.get("additionalProperties").filter(|a| a.is_object())
                    {
                        validate(spec, extra, val, &format!("{at}.{k}"))?;
                    }
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(spec, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a response against the documented schema of (method, path, status).
pub fn check_response(method: &str, path: &str, status: u16, content_type: &str, body: &Value) {
    let spec = spec();
    let op = &spec["paths"][path][method.to_lowercase()];
    assert!(!op.is_null(), "{method} {path} is not documented");
    let resp = resolve(&spec, &op["responses"][status.to_string()]);
    assert!(
        !resp.is_null(),
        "{method} {path} answered {status}, which is not documented"
    );
    let media = content_type.split(';').next().unwrap().trim();
    let schema = &resp["content"][media]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {status}: no schema for {media}"
    );
    if let Err(e) = validate(&spec, schema, body, "body") {
        panic!("{method} {path} {status} does not match openapi.yaml: {e}\n{body:#}");
    }
}
