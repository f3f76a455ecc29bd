//! The `[[consumers]]` section: consumers declared in the file
//! (docs/consumers.md), and the checks that tie `[[api.tokens]]` limits
//! and consumer tokens to them.

use serde::{Deserialize, Serialize};

use super::{Scope, TokenConfig};

/// One `[[consumers]]` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Its name in the API, in subscriptions' `consumer` and in tokens.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Source names it may receive or read, or `["*"]`.
    #[serde(default = "everything")]
    pub sources: Vec<String>,
    /// Tables (`source/resource`) it may receive or read, or `["*"]`.
    #[serde(default = "everything")]
    pub resources: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

/// Names: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or
/// digit; `default` is built in.
pub fn check_consumers(problems: &mut Vec<String>, consumers: &[ConsumerConfig]) {
    for (i, c) in consumers.iter().enumerate() {
        let valid = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name.as_bytes()[0].is_ascii_alphanumeric()
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid || c.name == "default" {
            problems.push(format!(
                "consumers[{i}].name: {:?} is not a consumer name; use 1 to 64 of a-z, 0-9, - and _ \
                 (\"default\" is built in)",
                c.name
            ));
        }
        if consumers[..i].iter().any(|o| o.name == c.name) {
            problems.push(format!(
                "consumers[{i}].name: {:?} is the name of an earlier entry; names must be unique",
                c.name
            ));
        }
        for (key, list) in [("sources", &c.sources), ("resources", &c.resources)] {
            if list.is_empty() || list.iter().any(String::is_empty) {
                problems.push(format!(
                    "consumers[{i}].{key}: name at least one entry, or [\"*\"]"
                ));
            }
        }
    }
}

/// A token's `consumer` names a declared consumer (or `default`) and comes
/// with scope `consumer`; limits go with scope `read` only.
pub fn check_token_scopes(
    problems: &mut Vec<String>,
    tokens: &[TokenConfig],
    consumers: &[ConsumerConfig],
) {
    for (i, t) in tokens.iter().enumerate() {
        match (&t.scope, &t.consumer) {
            (Scope::Consumer, None) => problems.push(format!(
                "api.tokens[{i}].consumer: a token of scope \"consumer\" names its consumer"
            )),
            (Scope::Consumer, Some(c))
                if c != "default" && !consumers.iter().any(|d| &d.name == c) =>
            {
                problems.push(format!(
                    "api.tokens[{i}].consumer: {c:?} is not a [[consumers]] name (nor \"default\")"
                ))
            }
            (Scope::Admin | Scope::Read, Some(_)) => problems.push(format!(
                "api.tokens[{i}].consumer: only a token of scope \"consumer\" names a consumer"
            )),
            _ => {}
        }
        let limited = t.sources.is_some() || t.resources.is_some();
        if limited && t.scope != Scope::Read {
            problems.push(format!(
                "api.tokens[{i}].sources: limits are for scope \"read\" tokens; a consumer \
                 token follows its consumer's lists, an admin token sees everything"
            ));
        }
    }
}
