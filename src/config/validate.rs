//! Validation of the configuration file into [`Config`]: every problem is
//! collected, each naming its key and the fix.

use std::time::Duration;

use url::Url;

use super::*;

mod sources;
pub use sources::check_source;
use sources::validate_source;

impl RawConfig {
    /// Checks every value and resolves secrets through `env`.
    pub fn validate(self, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut api_tokens = Vec::new();
        for (i, t) in self.api.tokens.iter().enumerate() {
            let s = secret(
                env,
                &mut problems,
                format!("api.tokens[{i}].token_env"),
                &t.token_env,
            );
            api_tokens.push((t.clone(), s));
        }
        check_tokens(&mut problems, &api_tokens);
        let mut validated = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = |k: &str| format!("sources[{i}].{k}");
            if let Some(source) = validate_source(s, env, &mut problems, &key) {
                validated.push(source);
            }
        }
        let mut names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            problems.push("sources: two sources share a name; names must be unique".into());
        }
        check_api(&mut problems, &self.api);
        check_store(&mut problems, &self.store);
        check_poll(&mut problems, &self.poll);
        if let Err(e) = delivery_fence(self.store.lease_ttl, self.delivery.request_timeout) {
            problems.push(e);
        }
        check_delivery(&mut problems, &self.delivery);
        let subscriptions = check_subscriptions(&self.subscriptions, env, &mut problems);
        super::consumers::check_consumers(&mut problems, &self.consumers);
        super::consumers::check_token_scopes(&mut problems, &self.api.tokens, &self.consumers);
        if let Some(e) = self.telemetry.otlp_endpoint.as_deref().and_then(check_otlp) {
            problems.push(e);
        }
        let source_keys = SourceKeys::from_env(env).unwrap_or_else(|mut e| {
            problems.append(&mut e);
            SourceKeys::default()
        });
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config {
            store: self.store,
            api: self.api,
            api_tokens,
            poll: self.poll,
            sources: validated,
            delivery: self.delivery,
            subscriptions,
            consumers: self.consumers,
            telemetry: self.telemetry,
            source_keys,
        })
    }
}

impl RawConfig {
    /// The problems of the store's values alone, for commands that only
    /// read the store.
    pub fn store_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        check_store(&mut problems, &self.store);
        check_poll(&mut problems, &self.poll);
        problems
    }
}

/// An OTLP endpoint is an http(s) URL.
fn check_otlp(endpoint: &str) -> Option<String> {
    match Url::parse(endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => None,
        _ => Some(format!(
            "telemetry.otlp_endpoint: {endpoint:?} is not an http(s) URL; \
             write the collector's OTLP/HTTP address, e.g. \"http://localhost:4318\""
        )),
    }
}

/// What `[[subscriptions]]` needs of the file and the environment: ids fit
/// for store keys and unique, secrets set and in the `whsec_` form.
fn check_subscriptions(
    subs: &[SubscriptionConfig],
    env: EnvLookup<'_>,
    problems: &mut Vec<String>,
) -> Vec<SubscriptionDecl> {
    let mut out = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        check_name(problems, &format!("subscriptions[{i}].id"), &s.id);
        if subs[..i].iter().any(|o| o.id == s.id) {
            problems.push(format!(
                "subscriptions[{i}].id: {:?} is the id of an earlier entry; ids must be unique",
                s.id
            ));
        }
        let key = format!("subscriptions[{i}].secret_env");
        let secret = secret(env, problems, key.clone(), &s.secret_env);
        if !secret.expose().is_empty()
            && let Err(e) = check_webhook_secret(secret.expose())
        {
            let var = &s.secret_env;
            problems.push(format!("{key}: the secret in {var} {e}"));
        }
        out.push(SubscriptionDecl {
            settings: s.clone(),
            secret,
        });
    }
    out
}

fn check_delivery(problems: &mut Vec<String>, d: &super::DeliveryConfig) {
    let waiting = d.max_waiting_retries;
    if !(1..=MAX_WAITING_RETRIES).contains(&waiting) {
        problems.push(format!(
            "delivery.max_waiting_retries ({waiting}): must be between 1 and {MAX_WAITING_RETRIES}; \
             it bounds the events a delivery worker holds in memory behind waiting retries \
             (per subscription and table), and at the limit that table claims nothing new"
        ));
    }
    if d.retry_schedule.is_empty() {
        problems.push("delivery.retry_schedule: list at least one delay".into());
    }
}

fn secret(env: EnvLookup<'_>, problems: &mut Vec<String>, key: String, var: &str) -> Secret {
    match env(var) {
        Some(v) if !v.is_empty() => Secret(v),
        _ => {
            problems.push(format!(
                "{key}: environment variable {var} is not set; export it with the secret"
            ));
            Secret(String::new())
        }
    }
}

fn check_api(problems: &mut Vec<String>, api: &ApiConfig) {
    for (i, t) in api.tokens.iter().enumerate() {
        if t.name.is_empty() {
            problems.push(format!("api.tokens[{i}].name: must not be empty"));
        }
    }
    for (key, zero) in [
        ("api.max_connections", api.max_connections == 0),
        ("api.max_sse_clients", api.max_sse_clients == 0),
        ("api.header_read_timeout", api.header_read_timeout.is_zero()),
        ("api.write_timeout", api.write_timeout.is_zero()),
        ("api.max_failed_logins", api.max_failed_logins == 0),
    ] {
        if zero {
            problems.push(format!("{key}: must be greater than zero"));
        }
    }
    let least = api.request_timeout.max(LIVE_KEEP_ALIVE);
    if api.idle_timeout <= least {
        problems.push(format!(
            "api.idle_timeout ({}): must be longer than {} (api.request_timeout, and the {} \
             keep-alive of live streams): nothing moves on a connection while an answer is \
             prepared or between live events",
            humantime::format_duration(api.idle_timeout),
            humantime::format_duration(least),
            humantime::format_duration(LIVE_KEEP_ALIVE),
        ));
    }
}

/// Tokens long enough not to be guessed, and each a different value: a
/// read token equal to an admin token would be an admin token.
fn check_poll(problems: &mut Vec<String>, poll: &PollConfig) {
    for (key, v) in [
        ("poll.max_concurrent", poll.max_concurrent),
        ("poll.host_max_concurrent", poll.host_max_concurrent),
        (
            "poll.host_max_per_second",
            poll.host_max_per_second as usize,
        ),
    ] {
        if v == 0 {
            problems.push(format!("{key}: must be at least 1"));
        }
    }
}

fn check_tokens(problems: &mut Vec<String>, tokens: &[(TokenConfig, Secret)]) {
    for (i, (t, s)) in tokens.iter().enumerate() {
        let (var, value) = (&t.token_env, s.expose());
        let chars = value.chars().count();
        if chars > 0 && chars < MIN_TOKEN_CHARS {
            problems.push(format!(
                "api.tokens[{i}].token_env: the token in {var} has {chars} characters; \
                 use at least {MIN_TOKEN_CHARS} (e.g. the output of `openssl rand -hex 32`)"
            ));
        }
        if let Some((j, (other, _))) = tokens[..i]
            .iter()
            .enumerate()
            .find(|(_, (_, o))| chars > 0 && o.expose() == value)
        {
            problems.push(format!(
                "api.tokens[{i}].token_env: the token in {var} is also the token of \
                 api.tokens[{j}] ({:?}); give every token its own value",
                other.name
            ));
        }
    }
}

/// The shortest API token accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The store's own values: names, retention limits and the lease.
fn check_store(problems: &mut Vec<String>, store: &StoreConfig) {
    check_redis(problems, store);
    check_name(problems, "store.key_prefix", &store.key_prefix);
    let r = &store.retention;
    for (key, v) in [
        ("store.retention.max_events", r.max_events),
        ("store.retention.hard_max_events", r.hard_max_events),
    ] {
        if v == Some(0) {
            problems.push(format!(
                "{key}: must be at least 1 (omit it to keep every event)"
            ));
        }
    }
    if let (Some(soft), Some(hard)) = (r.max_events, r.hard_max_events)
        && hard < soft
    {
        problems.push(format!(
            "store.retention.hard_max_events ({hard}) must not be below store.retention.max_events ({soft})"
        ));
    }
    if r.interval < Duration::from_millis(10) {
        problems.push("store.retention.interval: must be at least 10ms".into());
    }
    if store.lease_ttl < Duration::from_millis(100) {
        problems.push("store.lease_ttl: must be at least 100ms".into());
    }
}

/// Names end up in Redis keys and hash tags, so they must not contain
/// the characters that structure those keys.
fn check_name(problems: &mut Vec<String>, key: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        problems.push(format!(
            "{key}: {name:?} must be 1-64 characters of letters, digits, '_', '-' or '.'"
        ));
    }
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    if s.is_empty() {
        return Err(
            "missing; set the upstream's base URL, e.g. https://ua.ap.painchek.com/api".into(),
        );
    }
    let u = Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if !u.username().is_empty() || u.password().is_some() {
        // The URL is not repeated: it holds a password.
        return Err(
            "carries credentials (user:password@), which would show in logs, the \
             status page and GET /v1/resources; remove them and set [sources.auth] \
             kind = \"basic\" with username_env and password_env naming environment \
             variables that hold them"
                .into(),
        );
    }
    match u.scheme() {
        "http" | "https" => Ok(u),
        other => Err(format!("{s:?} has scheme {other:?}; use http or https")),
    }
}

/// The most `delivery.max_waiting_retries` may be: each held event stays in
/// the worker's memory.
pub const MAX_WAITING_RETRIES: usize = 1_000_000;

/// A webhook request starts only while the delivery lease has at least
/// `request_timeout` left (the rate-limit wait comes before that check) and
/// is cut off when the lease ends, so the lease must outlive a whole request
/// with room to renew it: a quarter of the timeout on top.
pub fn delivery_fence(lease_ttl: Duration, request_timeout: Duration) -> Result<(), String> {
    let least = request_timeout + request_timeout / 4;
    if lease_ttl < least {
        return Err(format!(
            "store.lease_ttl ({}) must be at least {} (delivery.request_timeout ({}) plus a quarter): \
             a webhook request starts only while the delivery lease has request_timeout left, \
             so another instance never takes over a request still in flight; \
             raise store.lease_ttl or lower delivery.request_timeout",
            humantime::format_duration(lease_ttl),
            humantime::format_duration(least),
            humantime::format_duration(request_timeout)
        ));
    }
    Ok(())
}

/// One Redis or a cluster, never both; every URL parses with a Redis scheme
/// (a cluster has no Unix sockets); the credential variables are names.
fn check_redis(problems: &mut Vec<String>, store: &crate::config::StoreConfig) {
    if store.redis_url.is_some() && !store.redis_cluster.is_empty() {
        problems.push(
            "store.redis_cluster: give either store.redis_url (one Redis) or store.redis_cluster (seed nodes of a cluster), not both"
                .into(),
        );
    }
    let cluster = store
        .redis_cluster
        .iter()
        .map(|u| ("store.redis_cluster", u, true));
    for (key, url, in_cluster) in store
        .redis_url
        .iter()
        .map(|u| ("store.redis_url", u, false))
        .chain(cluster)
    {
        let checked = url::Url::parse(url)
            .map_err(|e| e.to_string())
            .and_then(|u| match u.scheme() {
                "redis" | "rediss" => Ok(()),
                "unix" | "redis+unix" if !in_cluster => Ok(()),
                s => Err(format!("scheme {s:?} is not redis:// or rediss://")),
            });
        if let Err(e) = checked {
            problems.push(format!("{key}: {e}"));
        }
    }
    let schemes: std::collections::HashSet<_> = store
        .redis_cluster
        .iter()
        .filter_map(|u| url::Url::parse(u).ok().map(|u| u.scheme().to_string()))
        .collect();
    if schemes.len() > 1 {
        problems
            .push("store.redis_cluster: mixes redis:// and rediss:// seed nodes; use one".into());
    }
    for (key, var) in [
        ("store.username_env", &store.username_env),
        ("store.password_env", &store.password_env),
    ] {
        if var
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains('='))
        {
            problems.push(format!("{key}: must name an environment variable"));
        }
    }
}
