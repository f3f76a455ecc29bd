//! The memory figure: the relay's resident memory while it loads
//! `--rss-records` records with keyset paging, sampled as the stream grows.

use std::{process::Command, time::Duration};

use super::{BenchArgs, redis, relay_load, simulator};
use crate::{
    config::StoreConfig,
    store::{self, Table},
};

/// The memory figure, measured in a process of its own so the loads
/// before it do not count.
pub(super) fn in_a_process_of_its_own(args: &BenchArgs, redis_url: &str) -> anyhow::Result<()> {
    let status = Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "--rss-only",
            "--records",
            "0",
            "--rss-records",
            &args.rss_records.to_string(),
        ])
        .args(["--redis-url", redis_url])
        .status()?;
    anyhow::ensure!(status.success(), "the memory benchmark failed");
    Ok(())
}

/// The memory part: RSS while a keyset load of `rss_records` runs.
pub(super) async fn run(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let (_sim, base_url) = simulator(args.rss_records).await?;
    let (_redis, redis_url) = redis(&args.redis_url, dir).await?;
    let store = StoreConfig {
        redis_url: Some(redis_url),
        key_prefix: format!("bench-rss-{}", std::process::id()),
        ..StoreConfig::default()
    };
    let table = Table::new("bench", "patients");
    let baseline = rss_kb("VmRSS:");
    let probe = store::open(&store).await?;
    let load = tokio::spawn({
        let (store, url) = (store.clone(), base_url.clone());
        async move { relay_load(store, &url).await }
    });
    let total = args.rss_records as u64;
    let mut next_mark = total / 4;
    println!(
        "relay memory during a keyset load of {total} records (the simulator runs in its own process)"
    );
    println!("{:>12} {:>12} {:>12}", "events", "RSS MB", "peak MB");
    println!(
        "{:>12} {:>12.1} {:>12.1}",
        0,
        baseline as f64 / 1024.0,
        rss_kb("VmHWM:") as f64 / 1024.0
    );
    while !load.is_finished() {
        let len = probe.stream_len(&table).await.unwrap_or(0);
        if len >= next_mark {
            println!(
                "{:>12} {:>12.1} {:>12.1}",
                len,
                rss_kb("VmRSS:") as f64 / 1024.0,
                rss_kb("VmHWM:") as f64 / 1024.0
            );
            next_mark += total / 4;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (n, secs) = load.await??;
    println!(
        "{:>12} {:>12.1} {:>12.1}   ({:.0} events/s; peak {:.1} MB above the idle process)",
        n,
        rss_kb("VmRSS:") as f64 / 1024.0,
        rss_kb("VmHWM:") as f64 / 1024.0,
        n as f64 / secs,
        rss_kb("VmHWM:").saturating_sub(baseline) as f64 / 1024.0
    );
    Ok(())
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
