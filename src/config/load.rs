//! Reading the configuration: the defaults, the TOML file, then the
//! `STAMP_RELAY__SECTION__KEY` variables (docs/configuration.md), and every
//! type or unknown-key problem at once, each naming its file line or its
//! environment variable.
//!
//! Serde stops at the first problem, so the tree is read again without
//! each key found wrong until it reads (or a problem cannot be stepped
//! over: a required key missing). The variables are laid over the file's
//! tree here rather than merged by figment, so a list item is set by its
//! index (`STAMP_RELAY__SOURCES__0__BASE_URL`) instead of replacing the list.

use std::path::Path;

use figment::{
    Figment,
    error::Kind,
    providers::{Format, Serialized, Toml},
    value::{Dict, Value},
};

use super::{ConfigError, RawConfig, lines};

/// The prefix of the variables that override the file.
pub const ENV_PREFIX: &str = "STAMP_RELAY__";

/// At most this many problems are stepped over before reading stops.
const MAX_PROBLEMS: usize = 64;

/// One `STAMP_RELAY__` variable: its name and the key path it sets.
struct Override {
    var: String,
    path: Vec<String>,
}

impl RawConfig {
    /// Reads `path` (if any) with `vars` as the environment (the process's
    /// in production, [`env_vars`]): the problems found, and the
    /// configuration read without the keys they name (defaults instead),
    /// when one could be read, so its values can be checked too.
    pub fn load_partly(
        path: Option<&Path>,
        vars: Vec<(String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
        let mut text = String::new();
        if let Some(path) = path {
            text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::one(format!(
                    "config file {}: {e}; pass an existing, readable file to --config",
                    path.display()
                ))
            })?;
            fig = fig.merge(Toml::string(&text));
        }
        let mut tree: Value = fig.extract().map_err(|e| {
            let at = path.map(|p| p.display().to_string()).unwrap_or_default();
            ConfigError::one(format!("config file {at}: {e}; fix the TOML syntax"))
        })?;
        let mut problems = Vec::new();
        let overrides = overlay(&mut tree, vars, &mut problems);
        let origins = Origins {
            file: path.map(Path::to_path_buf),
            text,
            overrides,
        };
        let raw = read_all(tree, &origins, &mut problems);
        Ok(Loaded {
            raw,
            problems,
            origins,
        })
    }
}

/// Every command's configuration: the file (and the `STAMP_RELAY__`
/// overrides) read and validated, every problem at once, each naming where
/// it came from. `more` checks the rules that live above this layer (the
/// `[[subscriptions]]`, with the API's own rules: `declared::problems`).
pub fn load(
    path: Option<&Path>,
    more: fn(&RawConfig) -> Vec<String>,
) -> Result<super::Config, ConfigError> {
    let loaded = RawConfig::load_partly(path, env_vars())?;
    let mut problems = loaded.problems;
    // A key found wrong is read as its default, so the rest is checked too.
    let Some(raw) = loaded.raw else {
        return Err(ConfigError { problems });
    };
    let mut found = more(&raw);
    let config = raw.validate(&|k| std::env::var(k).ok());
    if let Err(e) = &config {
        found.splice(0..0, e.problems.iter().cloned());
    }
    let origins = &loaded.origins;
    problems.extend(found.into_iter().map(|p| origins.annotate(p)));
    match config {
        Ok(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError { problems }),
    }
}

/// The configuration of a command that only reads the store (`status`):
/// the keys' types and the store's values are checked, but no upstream,
/// API or webhook secret need be set.
pub fn load_for_store(path: Option<&Path>) -> Result<RawConfig, ConfigError> {
    let loaded = RawConfig::load_partly(path, env_vars())?;
    let mut problems = loaded.problems;
    let found = loaded.raw.as_ref().map(RawConfig::store_problems);
    let origins = &loaded.origins;
    problems.extend(found.into_iter().flatten().map(|p| origins.annotate(p)));
    match loaded.raw {
        Some(raw) if problems.is_empty() => Ok(raw),
        _ => Err(ConfigError { problems }),
    }
}

/// The process's variables that are text (`std::env::vars` would panic on
/// any other, which are none of ours).
pub fn env_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Lays each `STAMP_RELAY__` variable over the tree, in name order.
fn overlay(
    tree: &mut Value,
    mut vars: Vec<(String, String)>,
    problems: &mut Vec<String>,
) -> Vec<Override> {
    vars.sort();
    let mut out = Vec::new();
    for (var, value) in vars {
        let Some(rest) = var
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .map(|_| &var[ENV_PREFIX.len()..])
        else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            problems.push(format!(
                "{var}: an empty key between `__`; name keys as STAMP_RELAY__SECTION__KEY"
            ));
            continue;
        }
        let parsed: Value = value.parse().expect("parsing a value never fails");
        if let Err(e) = set(tree, &path, parsed) {
            problems.push(format!("{var}: {e}"));
            continue;
        }
        out.push(Override { var, path });
    }
    out
}

/// Sets `path` in the tree: a number indexes a list (the next index
/// appends an item), any other key a table.
fn set(node: &mut Value, path: &[String], v: Value) -> Result<(), String> {
    let Some((key, rest)) = path.split_first() else {
        *node = v;
        return Ok(());
    };
    let fresh = || match rest.first().map(|k| k.parse::<usize>()) {
        Some(Ok(_)) => Value::from(Vec::<Value>::new()),
        _ => Value::from(Dict::new()),
    };
    match node {
        Value::Dict(_, dict) => {
            let child = dict.entry(key.clone()).or_insert_with(fresh);
            set(child, rest, v)
        }
        Value::Array(_, items) => {
            let i: usize = key.parse().map_err(|_| {
                format!("{key:?} is not a list index; list items are set as __0__, __1__, ...")
            })?;
            if i == items.len() {
                items.push(fresh());
            }
            let len = items.len();
            let item = items.get_mut(i).ok_or_else(|| {
                format!("index {i} skips items: the list has {len}; set index {len} next")
            })?;
            set(item, rest, v)
        }
        _ => {
            *node = fresh();
            set(node, path, v)
        }
    }
}

/// What [`RawConfig::load_partly`] read: the configuration (when one could
/// be read), its problems, and where each key came from.
pub struct Loaded {
    pub raw: Option<RawConfig>,
    pub problems: Vec<String>,
    pub origins: Origins,
}

/// Where each key's value came from, to name in its problem.
pub struct Origins {
    file: Option<std::path::PathBuf>,
    text: String,
    overrides: Vec<Override>,
}

impl Origins {
    /// A problem of the validation (`sources[0].base_url: …`) with where
    /// the key it names came from.
    pub fn annotate(&self, problem: String) -> String {
        let key: String = problem
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
            .collect();
        let path: Vec<String> = key
            .replace('[', ".")
            .replace(']', "")
            .split('.')
            .map(String::from)
            .collect();
        let known = [
            "store",
            "api",
            "sources",
            "delivery",
            "subscriptions",
            "consumers",
        ];
        if !known.contains(&path[0].as_str()) {
            return problem;
        }
        let origin = self.of(&path);
        format!("{problem}{origin}")
    }

    /// ` (STAMP_RELAY__…)` or ` (line N of file)` for the key at `path`.
    fn of(&self, path: &[String]) -> String {
        let from_env = self
            .overrides
            .iter()
            .filter(|o| path.starts_with(&o.path) || o.path.starts_with(path))
            .max_by_key(|o| o.path.len());
        if let Some(o) = from_env.filter(|_| !path.is_empty()) {
            return format!(" (environment variable {})", o.var);
        }
        match (&self.file, lines::line_of(&self.text, path)) {
            (Some(f), Some(n)) => format!(" (line {n} of {})", f.display()),
            _ => String::new(),
        }
    }
}

/// Reads the tree into a `RawConfig`, stepping over each wrong key: every
/// problem is noted; `None` when one could not be stepped over.
fn read_all(mut tree: Value, origin: &Origins, problems: &mut Vec<String>) -> Option<RawConfig> {
    for _ in 0..MAX_PROBLEMS {
        let e = match tree.deserialize::<RawConfig>() {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        // The key at fault, for a field the struct lacks or misses too.
        let mut path = e.path.clone();
        let field = match &e.kind {
            Kind::UnknownField(name, _) => Some(name.as_str()),
            Kind::MissingField(name) => Some(name.as_ref()),
            _ => None,
        };
        if let Some(name) = field.filter(|n| path.last().map(String::as_str) != Some(*n)) {
            path.push(name.to_string());
        }
        if let Kind::MissingField(_) = e.kind {
            problems.push(describe(&path, &e.kind));
            return None;
        }
        problems.push(format!("{}{}", describe(&path, &e.kind), origin.of(&path)));
        if !remove(&mut tree, &path) {
            return None;
        }
    }
    None
}

/// A problem as `key: what; fix`, list items named as `sources[0]`, the
/// way the validation names them.
fn describe(path: &[String], kind: &Kind) -> String {
    let key = path
        .iter()
        .fold(String::new(), |key, part| match part.parse::<usize>() {
            Ok(i) => format!("{key}[{i}]"),
            Err(_) if key.is_empty() => part.clone(),
            Err(_) => format!("{key}.{part}"),
        });
    let hint = match kind {
        Kind::UnknownVariant(..) => "; pick one of the listed values".to_string(),
        Kind::MissingField(_) => format!(
            "; add it to the file or set {ENV_PREFIX}{}",
            path.join("__").to_ascii_uppercase()
        ),
        Kind::UnknownField(..) => "; remove it or fix its spelling".to_string(),
        _ => String::new(),
    };
    if key.is_empty() {
        format!("{kind}{hint}")
    } else {
        format!("{key}: {kind}{hint}")
    }
}

/// Removes the key at `path`; false when there is none.
fn remove(node: &mut Value, path: &[String]) -> bool {
    let Some((key, rest)) = path.split_first() else {
        return false;
    };
    match node {
        Value::Dict(_, dict) if rest.is_empty() => dict.remove(key).is_some(),
        Value::Dict(_, dict) => dict.get_mut(key).is_some_and(|c| remove(c, rest)),
        Value::Array(_, items) => match key.parse::<usize>() {
            Ok(i) if i < items.len() && rest.is_empty() => {
                items.remove(i);
                true
            }
            Ok(i) => items.get_mut(i).is_some_and(|c| remove(c, rest)),
            Err(_) => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, vars: &[(&str, &str)]) -> Result<RawConfig, Vec<String>> {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), file).unwrap();
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        match RawConfig::load_partly(Some(f.path()), vars.collect()) {
            Ok(Loaded {
                raw: Some(raw),
                problems,
                ..
            }) if problems.is_empty() => Ok(raw),
            Ok(loaded) => Err(loaded.problems),
            Err(e) => Err(e.problems),
        }
    }

    const SOURCE: &str =
        "[[sources]]\nname = \"pc\"\nbase_url = \"http://a/api\"\nresources = [\"patients\"]\n";

    #[test]
    fn every_type_and_unknown_key_problem_at_once_with_its_line() {
        let file =
            "[store]\nlease_ttl = 5\nredis_urll = \"x\"\n[delivery]\nrequest_timeout = true\n";
        let problems = load(file, &[]).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        for (key, line) in [
            ("store.lease_ttl", 2),
            ("redis_urll", 3),
            ("delivery.request_timeout", 5),
        ] {
            let p = problems.iter().find(|p| p.contains(key)).expect(key);
            assert!(p.contains(&format!("(line {line} of ")), "{p}");
        }
    }

    #[test]
    fn list_items_are_set_from_the_environment_by_index() {
        let vars = [
            ("STAMP_RELAY__SOURCES__0__BASE_URL", "http://b/api"),
            ("STAMP_RELAY__SOURCES__1__NAME", "second"),
            ("STAMP_RELAY__SOURCES__1__BASE_URL", "http://c/api"),
            ("STAMP_RELAY__SOURCES__1__RESOURCES", "[users, patients]"),
            ("STAMP_RELAY__API__TOKENS__0__NAME", "ops"),
            ("STAMP_RELAY__API__TOKENS__0__SCOPE", "admin"),
            ("STAMP_RELAY__API__TOKENS__0__TOKEN_ENV", "OPS_TOKEN"),
            ("STAMP_RELAY_REQUIRE_REDIS", "1"),
        ];
        let raw = load(SOURCE, &vars).unwrap();
        assert_eq!(raw.sources[0].name, "pc");
        assert_eq!(raw.sources[0].base_url, "http://b/api");
        assert_eq!(raw.sources[1].name, "second");
        assert_eq!(raw.sources[1].resources, ["users", "patients"]);
        assert_eq!(raw.api.tokens[0].token_env, "OPS_TOKEN");
    }

    #[test]
    fn problems_from_the_environment_name_the_variable() {
        let vars = [
            ("STAMP_RELAY__STORE__LEASE_TTL", "5"),
            ("STAMP_RELAY__SOURCES__2__NAME", "x"),
            ("STAMP_RELAY__DELIVERY__NOPE", "1"),
        ];
        let problems = load(SOURCE, &vars).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let named = |var: &str| problems.iter().any(|p| p.contains(var));
        assert!(
            named("(environment variable STAMP_RELAY__STORE__LEASE_TTL)"),
            "{problems:#?}"
        );
        assert!(
            named(
                "STAMP_RELAY__SOURCES__2__NAME: index 2 skips items: the list has 1; set index 1 next"
            ),
            "{problems:#?}"
        );
        assert!(
            named("(environment variable STAMP_RELAY__DELIVERY__NOPE)"),
            "{problems:#?}"
        );
    }
}
