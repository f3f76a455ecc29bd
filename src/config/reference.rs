//! The commented reference configuration, `config/relay.default.toml`:
//! every key with its default and meaning. `stamp-relay defaults` prints
//! it; the tests below keep it equal to the structs of this module, so a
//! key added to the code without a line there fails the build's tests.

/// The reference file, as shipped in the binary.
pub const REFERENCE: &str = include_str!("../../config/relay.default.toml");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use figment::{
        Figment,
        providers::{Format, Toml},
    };
    use serde_json::Value;

    use super::REFERENCE;
    use crate::config::{
        AuthConfig, ConsumerConfig, RawConfig, Scope, SourceConfig, SubscriptionConfig, TokenConfig,
    };

    /// `section.key` of every key line in the reference, live or commented.
    fn keys_in_reference() -> BTreeSet<String> {
        let mut section = String::new();
        let mut keys = BTreeSet::new();
        for line in REFERENCE.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(header) = line.strip_prefix('[') {
                let end = header.find(']').unwrap_or(header.len());
                section = header[..end].trim_matches(['[', ']']).to_string();
                continue;
            }
            let Some((key, _)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                keys.insert(format!("{section}.{key}"));
            }
        }
        keys
    }

    /// Collects the dotted path of every leaf; arrays of tables count as
    /// their element's keys, and an empty table is a leaf.
    fn leaves(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    leaves(&format!("{prefix}.{k}"), v, out);
                }
            }
            Value::Array(items) if items.first().is_some_and(Value::is_object) => {
                items.iter().for_each(|item| leaves(prefix, item, out));
            }
            _ => {
                out.insert(prefix.trim_start_matches('.').to_string());
            }
        }
    }

    fn source(auth: AuthConfig) -> SourceConfig {
        let toml = "name = \"s\"\nbase_url = \"https://x.example\"\nresources = [\"r\"]";
        SourceConfig {
            auth,
            ..toml::from_str(toml).unwrap()
        }
    }

    /// Optional keys left out of the serialized form when unset.
    fn with_optionals(mut s: SourceConfig) -> SourceConfig {
        s.tls_ca_file = Some("ca.pem".into());
        s
    }

    /// A configuration with one of every table and every auth kind.
    fn every_key() -> Value {
        let mut raw = RawConfig::default();
        raw.api.tokens.push(TokenConfig {
            sources: Some(vec!["s".into()]),
            resources: Some(vec!["s/r".into()]),
            consumer: Some("c".into()),
            ..TokenConfig::new("t", Scope::Read, "T")
        });
        raw.consumers.push(ConsumerConfig {
            name: "c".into(),
            description: String::new(),
            sources: vec!["*".into()],
            resources: vec!["*".into()],
        });
        let auths = [
            AuthConfig::None,
            AuthConfig::OAuth {
                client_id_env: "A".into(),
                client_secret_env: "B".into(),
                token_url: None,
            },
            AuthConfig::Basic {
                username_env: "U".into(),
                password_env: "P".into(),
            },
            AuthConfig::Bearer {
                token_env: "T".into(),
            },
        ];
        raw.sources = auths.into_iter().map(source).map(with_optionals).collect();
        raw.delivery.tls_ca_file = Some("ca.pem".into());
        let sub =
            "id = \"i\"\nurl = \"https://x.example\"\nresources = [\"*\"]\nsecret_env = \"S\"";
        raw.subscriptions
            .push(toml::from_str::<SubscriptionConfig>(sub).unwrap());
        raw.subscriptions[0].consumer = Some("c".into());
        serde_json::to_value(&raw).unwrap()
    }

    #[test]
    fn the_reference_names_every_key() {
        let mut keys = BTreeSet::new();
        leaves("", &every_key(), &mut keys);
        let documented = keys_in_reference();
        let missing: Vec<_> = keys.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "config/relay.default.toml lacks these keys: {missing:?}"
        );
        let unknown: Vec<_> = documented.difference(&keys).collect();
        assert!(
            unknown.is_empty(),
            "config/relay.default.toml names keys the code does not have: {unknown:?}"
        );
    }

    #[test]
    fn the_references_values_are_the_defaults() {
        let raw: RawConfig = Figment::from(Toml::string(REFERENCE))
            .extract()
            .expect("the reference loads");
        let defaults = serde_json::to_value(RawConfig::default()).unwrap();
        let loaded = serde_json::to_value(&raw).unwrap();
        for section in ["store", "api", "delivery"] {
            assert_eq!(loaded[section], defaults[section], "[{section}]");
        }
        let example = serde_json::to_value(source(AuthConfig::None)).unwrap();
        for (key, value) in example.as_object().unwrap() {
            if !["name", "base_url", "resources"].contains(&key.as_str()) {
                assert_eq!(&loaded["sources"][0][key], value, "sources.{key}");
            }
        }
        raw.validate(&|_| None)
            .expect("the reference is a valid configuration");
    }
}
