//! One `[[sources]]` entry (or a `/v1/sources` body) checked: its URL,
//! auth, limits and names, each problem naming its field.

use url::Url;

use super::*;

/// One source checked exactly as `check-config` checks a `[[sources]]`
/// entry, each problem naming its field as `key` spells it (the API's
/// `/v1/sources` names the bare field).
pub fn check_source(
    s: &SourceConfig,
    env: EnvLookup<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Source, Vec<String>> {
    let mut problems = Vec::new();
    match validate_source(s, env, &mut problems, key) {
        Some(source) if problems.is_empty() => Ok(source),
        _ => Err(problems),
    }
}

pub(super) fn validate_source(
    s: &SourceConfig,
    env: EnvLookup<'_>,
    problems: &mut Vec<String>,
    key: &dyn Fn(&str) -> String,
) -> Option<Source> {
    check_name(problems, &key("name"), &s.name);
    if s.name == crate::table::RELAY_SOURCE {
        problems.push(format!(
            "{}: {:?} names the relay's own tables (_relay/health); choose another name",
            key("name"),
            s.name
        ));
    }
    if s.resources.is_empty() {
        problems.push(format!("{}: list at least one resource", key("resources")));
    }
    for (j, r) in s.resources.iter().enumerate() {
        check_name(problems, &key(&format!("resources[{j}]")), r);
    }
    let base_url = parse_http_url(&s.base_url)
        .map_err(|e| problems.push(format!("{}: {e}", key("base_url"))))
        .ok();
    if let Some(p) = &s.proxy
        && reqwest::Proxy::all(p.as_str()).is_err()
    {
        problems.push(format!("{}: {p:?} is not a proxy URL", key("proxy")));
    }
    check_source_limits(s, problems, key);
    for (resource, schema) in &s.schemas {
        let at = key(&format!("schemas.{resource}"));
        if !s.resources.contains(resource) {
            problems.push(format!(
                "{at}: {resource:?} is not one of this source's resources"
            ));
        }
        if let Err(e) = schema.load() {
            problems.push(format!(
                "{at}: {e}; give a JSON Schema file or an inline table"
            ));
        }
    }
    let auth = resolve_auth(&s.auth, base_url.as_ref(), env, problems, key);
    Some(Source {
        settings: s.clone(),
        base_url: base_url?,
        auth: auth?,
    })
}

/// The upstream credentials, resolved from the environment; the OAuth
/// token URL defaults to `{base_url}/integration/auth/`.
fn resolve_auth(
    auth: &AuthConfig,
    base_url: Option<&Url>,
    env: EnvLookup<'_>,
    problems: &mut Vec<String>,
    key: &dyn Fn(&str) -> String,
) -> Option<Auth> {
    match auth {
        AuthConfig::None => Some(Auth::None),
        AuthConfig::Bearer { token_env } => Some(Auth::Bearer {
            token: secret(env, problems, key("auth.token_env"), token_env),
        }),
        AuthConfig::Basic {
            username_env,
            password_env,
        } => Some(Auth::Basic {
            username: secret(env, problems, key("auth.username_env"), username_env),
            password: secret(env, problems, key("auth.password_env"), password_env),
        }),
        AuthConfig::OAuth {
            client_id_env,
            client_secret_env,
            token_url,
        } => {
            let client_id = secret(env, problems, key("auth.client_id_env"), client_id_env);
            let client_secret = secret(
                env,
                problems,
                key("auth.client_secret_env"),
                client_secret_env,
            );
            let token_url = match (token_url, base_url) {
                (Some(u), _) => parse_http_url(u)
                    .map_err(|e| problems.push(format!("{}: {e}", key("auth.token_url"))))
                    .ok(),
                (None, Some(b)) => Some(join(b, "integration/auth/")),
                (None, None) => None,
            };
            token_url.map(|token_url| Auth::OAuth {
                client_id,
                client_secret,
                token_url,
            })
        }
    }
}

/// A source's sizes and intervals.
fn check_source_limits(s: &SourceConfig, problems: &mut Vec<String>, key: &dyn Fn(&str) -> String) {
    if s.page_size == 0 || s.page_size > 10_000 {
        problems.push(format!("{}: must be between 1 and 10000", key("page_size")));
    }
    if s.poll_interval.is_zero() {
        problems.push(format!(
            "{}: must be greater than zero",
            key("poll_interval")
        ));
    }
    if s.failing_after_intervals == 0 {
        problems.push(format!(
            "{}: must be at least 1",
            key("failing_after_intervals")
        ));
    }
    if s.max_walks == 0 {
        problems.push(format!("{}: must be at least 1", key("max_walks")));
    }
    if s.reconcile_interval.is_some_and(|d| d < s.poll_interval) {
        problems.push(format!(
            "{}: must be at least poll_interval (a sweep walks the whole table); omit it to turn sweeps off",
            key("reconcile_interval")
        ));
    }
    if s.max_attempts == 0 {
        problems.push(format!("{}: must be at least 1", key("max_attempts")));
    }
    if s.max_page_bytes < 1 << 16 {
        problems.push(format!(
            "{}: must be at least 65536 (64 KiB); it bounds one page answer in memory",
            key("max_page_bytes")
        ));
    }
}
