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

/// Longest consumer name.
pub const MAX_CONSUMER_NAME: usize = 64;

/// Whether `name` is a consumer name: 1 to [`MAX_CONSUMER_NAME`] of
/// `a-z`, `0-9`, `-`, `_`, starting with a letter or digit (names appear
/// in paths, tokens and links).
pub fn is_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CONSUMER_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Names are consumer names, unique; `default` is built in.
pub fn check_consumers(problems: &mut Vec<String>, consumers: &[ConsumerConfig]) {
    for (i, c) in consumers.iter().enumerate() {
        if !is_consumer_name(&c.name) || c.name == "default" {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(name: &str) -> ConsumerConfig {
        ConsumerConfig {
            name: name.into(),
            description: String::new(),
            sources: everything(),
            resources: vec![],
        }
    }

    #[test]
    fn names_lists_and_token_scopes_are_checked() {
        let mut problems = Vec::new();
        check_consumers(
            &mut problems,
            &[consumer("lab"), consumer("lab"), consumer("default")],
        );
        let text = problems.join("\n");
        assert!(
            text.contains("consumers[1].name") && text.contains("consumers[2].name"),
            "{text}"
        );
        assert!(text.contains("consumers[0].resources"), "{text}");
        let tokens = [
            TokenConfig::new("a", Scope::Consumer, "A"),
            TokenConfig {
                consumer: Some("nope".into()),
                ..TokenConfig::new("b", Scope::Consumer, "B")
            },
            TokenConfig {
                consumer: Some("lab".into()),
                ..TokenConfig::new("c", Scope::Admin, "C")
            },
            TokenConfig {
                sources: Some(vec!["s".into()]),
                ..TokenConfig::new("d", Scope::Admin, "D")
            },
            TokenConfig {
                consumer: Some("lab".into()),
                ..TokenConfig::new("e", Scope::Consumer, "E")
            },
        ];
        let mut problems = Vec::new();
        check_token_scopes(&mut problems, &tokens, &[consumer("lab")]);
        let text = problems.join("\n");
        for i in 0..4 {
            assert!(text.contains(&format!("api.tokens[{i}]")), "{text}");
        }
        assert!(!text.contains("api.tokens[4]"), "{text}");
    }
}
