//! How the Redis store reaches Redis: one node through a reconnecting
//! `ConnectionManager`, or a Redis Cluster through the redis crate's cluster
//! client, which follows `MOVED`/`ASK`, refreshes its slot map when a master
//! dies and its replica takes over, and reconnects by itself. Both sit
//! behind [`RedisConn`], so every command, script and pipeline of the store
//! is written once. TLS (`rediss://`) trusts the system's roots, or only the
//! CA of `store.tls_ca_file`; the ACL user and password come from the URL or
//! from the environment variables `store.username_env`/`store.password_env`
//! name, so they need not be written in the configuration file.

use std::time::Duration;

use redis::{
    Cmd, Pipeline, RedisFuture, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};

use crate::config::StoreConfig;

/// The URL with any password replaced, safe for logs and errors.
pub(super) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable redis url>".into(),
    }
}

/// A connection to one Redis node or to a cluster; cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The configuration key naming the Redis in use, for error messages.
pub fn config_key(cfg: &StoreConfig) -> &'static str {
    if cfg.redis_cluster.is_empty() {
        "store.redis_url"
    } else {
        "store.redis_cluster"
    }
}

/// The URLs to connect to, with the ACL user and password of the
/// environment variables the configuration names filled in.
pub fn node_urls(cfg: &StoreConfig) -> anyhow::Result<Vec<String>> {
    let urls: Vec<&String> = cfg.redis_url.iter().chain(&cfg.redis_cluster).collect();
    let from_env = |key: &str, var: &Option<String>| -> anyhow::Result<Option<String>> {
        let Some(var) = var else { return Ok(None) };
        std::env::var(var).map(Some).map_err(|_| {
            anyhow::anyhow!("{key} names the environment variable {var}, which is not set; set it or remove {key}")
        })
    };
    let user = from_env("store.username_env", &cfg.username_env)?;
    let pass = from_env("store.password_env", &cfg.password_env)?;
    urls.into_iter()
        .map(|u| {
            let mut url =
                url::Url::parse(u).map_err(|e| anyhow::anyhow!("{}: {e}", config_key(cfg)))?;
            let bad = |_| anyhow::anyhow!("{}: cannot hold credentials", config_key(cfg));
            if let Some(user) = &user {
                url.set_username(user).map_err(bad)?;
            }
            if let Some(pass) = &pass {
                url.set_password(Some(pass)).map_err(bad)?;
            }
            Ok(url.to_string())
        })
        .collect()
}

fn certificates(cfg: &StoreConfig) -> anyhow::Result<Option<TlsCertificates>> {
    let Some(path) = &cfg.tls_ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "store.tls_ca_file: cannot read {}: {e}; point it at the PEM file of the CA that signed the Redis certificate",
            path.display()
        )
    })?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// Opens the connection the configuration names; the caller names the
/// (redacted) URL in any error.
pub async fn open(cfg: &StoreConfig, urls: Vec<String>) -> anyhow::Result<RedisConn> {
    let certs = certificates(cfg)?;
    let fail = |e: redis::RedisError| anyhow::anyhow!("{e}");
    if cfg.redis_cluster.is_empty() {
        let url = urls.into_iter().next().unwrap_or_default();
        let client = match certs {
            Some(c) => redis::Client::build_with_tls(url, c),
            None => redis::Client::open(url),
        }
        .map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(fail)?;
        return Ok(RedisConn::Single(conn));
    }
    // A failover takes about twice the cluster's node timeout; the retries
    // (with waits up to 2 s) ride it out before an error reaches the poller,
    // which would retry anyway.
    let mut builder = ClusterClientBuilder::new(urls)
        .connection_timeout(Duration::from_secs(3))
        .response_timeout(Duration::from_secs(30))
        .overall_response_timeout(None)
        .retries(8)
        .max_retry_wait(2_000);
    if let Some(c) = certs {
        builder = builder.certs(c);
    }
    let client = builder.build().map_err(fail)?;
    let conn = client.get_async_connection().await.map_err(fail)?;
    Ok(RedisConn::Cluster(conn))
}
