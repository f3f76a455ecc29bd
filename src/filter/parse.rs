//! Parsing filters from JSON, naming the path of any fault.

use serde_json::{Map, Value};

use super::{ATTRIBUTES, Attr, Compare, Expr, Filter, FilterError, json::split_path};

const DIALECTS: &str = "exact, prefix, suffix, all, any or not";

impl Filter {
    /// Parses a subscription's `filters`: a list of filters that must all
    /// match (empty: every event), or a single filter.
    pub fn parse(v: &Value) -> Result<Filter, FilterError> {
        Self::parse_at(v, "filters")
    }

    /// As [`Filter::parse`], with errors named from `root` (`filter` for
    /// the query parameter).
    pub fn parse_at(v: &Value, root: &str) -> Result<Filter, FilterError> {
        let expr = match v {
            Value::Array(list) => Expr::All(
                list.iter()
                    .enumerate()
                    .map(|(i, f)| expr(f, &format!("{root}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => expr(other, root)?,
        };
        Ok(Filter { expr })
    }
}

fn fault(path: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn expr(v: &Value, path: &str) -> Result<Expr, FilterError> {
    let Some(obj) = v.as_object() else {
        return Err(fault(
            path,
            format!("a filter must be an object with one dialect key ({DIALECTS})"),
        ));
    };
    let mut keys = obj.iter();
    let (dialect, arg) = match (keys.next(), keys.next()) {
        (Some(one), None) => one,
        (None, _) => return Err(fault(path, format!("empty filter; use one of {DIALECTS}"))),
        (Some(_), Some(_)) => {
            let names: Vec<String> = obj.keys().map(|k| format!("{k:?}")).collect();
            return Err(fault(
                path,
                format!(
                    "a filter has exactly one dialect key, this one has {}",
                    names.join(", ")
                ),
            ));
        }
    };
    let here = format!("{path}.{dialect}");
    match dialect.as_str() {
        "exact" => compare(Compare::Exact, arg, &here),
        "prefix" => compare(Compare::Prefix, arg, &here),
        "suffix" => compare(Compare::Suffix, arg, &here),
        "all" => list(arg, &here).map(Expr::All),
        "any" => list(arg, &here).map(Expr::Any),
        "not" => Ok(Expr::Not(Box::new(expr(arg, &here)?))),
        other => Err(fault(
            path,
            format!("unknown dialect {other:?}; expected {DIALECTS}"),
        )),
    }
}

fn list(v: &Value, path: &str) -> Result<Vec<Expr>, FilterError> {
    match v.as_array() {
        Some(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, f)| expr(f, &format!("{path}[{i}]")))
            .collect(),
        Some(_) => Err(fault(path, "must hold at least one filter")),
        None => Err(fault(path, "must be an array of filters")),
    }
}

fn compare(how: Compare, v: &Value, path: &str) -> Result<Expr, FilterError> {
    let pairs: &Map<String, Value> = match v.as_object() {
        Some(m) if !m.is_empty() => m,
        _ => {
            return Err(fault(
                path,
                "must be an object of attribute names to strings, e.g. {\"type\": \"…\"}",
            ));
        }
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let Some(text) = value.as_str() else {
            return Err(fault(path, format!("value of {name:?} must be a string")));
        };
        out.push((attribute(name, path)?, text.to_string()));
    }
    Ok(Expr::Compare(how, out))
}

fn attribute(name: &str, path: &str) -> Result<Attr, FilterError> {
    if let Some((_, a)) = ATTRIBUTES.iter().find(|(n, _)| *n == name) {
        return Ok(a.clone());
    }
    if let Some(rest) = name.strip_prefix("data.") {
        return match split_path(rest) {
            Some(parts) => Ok(Attr::Data(parts.into_iter().map(String::from).collect())),
            None => Err(fault(
                path,
                format!(
                    "{name:?} is not a data path; write data.<field>, nested fields joined by dots"
                ),
            )),
        };
    }
    let known: Vec<&str> = ATTRIBUTES.iter().map(|(n, _)| *n).collect();
    Err(fault(
        path,
        format!(
            "unknown attribute {name:?}; expected one of {} or data.<field>",
            known.join(", ")
        ),
    ))
}
