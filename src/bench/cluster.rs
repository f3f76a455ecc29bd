//! The cluster part of `stamp-relay bench --redis-cluster`: the same load
//! into a Redis Cluster (three local masters started here, or the seed
//! nodes given), as a ratio to a raw pipelined `XADD` of the same payloads
//! into that cluster, printed next to the single node's ratio. One table's
//! keys share a slot, so one load runs against one master; the cluster
//! spreads many tables, not one.

use std::process::{Command, Stdio};

use anyhow::Context;

use super::{Guard, free_port, raw_xadd, relay_load, wait_for_port};
use crate::config::StoreConfig;

/// Three masters on free ports below 55536 (each cluster bus port is the
/// port + 10000), joined with `redis-cli --cluster create`.
async fn local_cluster(dir: &std::path::Path) -> anyhow::Result<(Vec<Guard>, Vec<String>)> {
    let mut guards = Vec::new();
    let mut addrs = Vec::new();
    while addrs.len() < 3 {
        let port = free_port()?;
        if port >= 55536 || std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_err() {
            continue;
        }
        let node_dir = dir.join(format!("cluster-{port}"));
        std::fs::create_dir_all(&node_dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", node_dir.to_str().unwrap_or(".")])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server; install it or pass --redis-cluster URLS")?;
        guards.push(Guard(child));
        wait_for_port(port, "redis-server").await?;
        addrs.push(format!("127.0.0.1:{port}"));
    }
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .context("cannot run redis-cli --cluster create")?;
    anyhow::ensure!(status.success(), "redis-cli --cluster create failed");
    for a in &addrs {
        let port = a.rsplit(':').next().unwrap_or_default();
        loop {
            let out = Command::new("redis-cli")
                .args(["-p", port, "cluster", "info"])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Ok((
        guards,
        addrs.iter().map(|a| format!("redis://{a}")).collect(),
    ))
}

/// Prints the single node's ingest ratio and the cluster's, each against a
/// raw baseline on the same Redis.
pub async fn run(
    nodes: &[String],
    dir: &std::path::Path,
    base_url: &str,
    payloads: &[(String, u64, String)],
    single: (f64, f64),
) -> anyhow::Result<()> {
    let (_guards, urls) = if nodes.is_empty() {
        local_cluster(dir).await?
    } else {
        (Vec::new(), nodes.to_vec())
    };
    let client = redis::cluster::ClusterClient::new(urls.clone())?;
    let mut conn = client.get_async_connection().await?;
    let raw_rate = raw_xadd(&mut conn, payloads).await?;
    let store = StoreConfig {
        redis_cluster: urls,
        key_prefix: format!("bench-cluster-{}", std::process::id()),
        ..StoreConfig::default()
    };
    let (n, secs) = relay_load(store, base_url).await?;
    let relay_rate = n as f64 / secs;
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "ingest ratio", "raw XADD/s", "relay ev/s", "ratio"
    );
    for (name, raw, relay) in [
        ("single Redis", single.0, single.1),
        ("Redis Cluster", raw_rate, relay_rate),
    ] {
        println!("{name:<44} {raw:>12.0} {relay:>12.0} {:>10.2}", relay / raw);
    }
    anyhow::ensure!(
        n as usize == payloads.len(),
        "the cluster load appended {n} events, expected {}",
        payloads.len()
    );
    Ok(())
}
