//! The HTTP clients of the upstreams, one per distinct client setting
//! (request timeout, proxy, trusted CA file and its content) rather than
//! one per source: building a client loads the system's root certificates,
//! which took a relay 53–88 s for 2,000 sources, and one client keeps one
//! connection pool for every source on the same host.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use crate::config::Source;

/// What makes two sources' clients differ.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    request_timeout: Duration,
    proxy: Option<String>,
    /// The CA file and its bytes: a file rewritten gives another client.
    ca: Option<(PathBuf, Vec<u8>)>,
}

/// Every client made in this process, by setting.
fn clients() -> &'static Mutex<HashMap<Key, reqwest::Client>> {
    static CLIENTS: OnceLock<Mutex<HashMap<Key, reqwest::Client>>> = OnceLock::new();
    CLIENTS.get_or_init(Mutex::default)
}

/// The client for `source`'s settings: the one made before for the same
/// settings, or a new one. An unreadable CA file is an error naming the
/// source's setting.
pub fn client_for(source: &Source) -> anyhow::Result<reqwest::Client> {
    let s = &source.settings;
    // Read here only to tell the file's versions apart; a file that
    // cannot be read is reported by the build below.
    let ca = s
        .tls_ca_file
        .as_ref()
        .map(|p| (p.clone(), std::fs::read(p).unwrap_or_default()));
    let key = Key {
        request_timeout: s.request_timeout,
        proxy: s.proxy.clone(),
        ca,
    };
    if let Some(c) = clients()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return Ok(c.clone());
    }
    let client = build(source)?;
    let mut all = clients().lock().unwrap_or_else(|p| p.into_inner());
    Ok(all.entry(key).or_insert(client).clone())
}

fn build(source: &Source) -> anyhow::Result<reqwest::Client> {
    let s = &source.settings;
    let builder = reqwest::Client::builder()
        .timeout(s.request_timeout)
        .connect_timeout(Duration::from_secs(10).min(s.request_timeout))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stamp-relay/", env!("CARGO_PKG_VERSION")));
    let key = format!("sources.{}.tls_ca_file", source.name());
    let builder = crate::http::trust_ca_file(builder, s.tls_ca_file.as_deref(), &key)?;
    // Only the configured proxy, never one from the environment.
    Ok(match &s.proxy {
        Some(p) => builder.proxy(reqwest::Proxy::all(p)?),
        None => builder.no_proxy(),
    }
    .build()?)
}
