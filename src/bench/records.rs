//! What the latest-record store (src/store/records.rs) costs on Redis: the
//! same keyset load of N records with `keep_records` off and on, each into
//! its own key prefix of one Redis; bytes per record from `MEMORY USAGE`
//! of every key of the table, and the ingest rate of each as a ratio
//! against the run's raw `XADD` baseline and against each other.

use super::{load_source, simulator, source};
use crate::{
    config::{Paging, StoreConfig},
    store::Target,
};

/// One load: events appended, seconds, and the table's Redis bytes per key.
struct Load {
    events: u64,
    secs: f64,
    bytes: Vec<(&'static str, u64)>,
}

async fn load(redis_url: &str, base_url: &str, keep: bool) -> anyhow::Result<Load> {
    let store = StoreConfig {
        redis_url: Some(redis_url.to_string()),
        key_prefix: format!("bench-records-{keep}-{}", std::process::id()),
        ..StoreConfig::default()
    };
    let mut src = source(base_url, 1000, Paging::Keyset)?;
    src.keep_records = keep;
    let (report, secs) = load_source(&store, src).await?;
    let events = report.outcome.appended();
    let keys = crate::store::redis::Keys::new(&store.key_prefix, &Target::new("bench", "patients"));
    let mut c = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut bytes = Vec::new();
    for (name, key) in [
        ("events", &keys.events),
        ("index", &keys.index),
        ("records", &keys.records),
        ("stamps", &keys.stamps),
    ] {
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut c)
            .await?;
        bytes.push((name, used.unwrap_or(0)));
        let () = redis::cmd("UNLINK").arg(key).query_async(&mut c).await?;
    }
    Ok(Load {
        events,
        secs,
        bytes,
    })
}

/// Loads `n` records with and without the record store and prints bytes
/// per record and ingest ratios (`raw_rate`: the run's XADD baseline).
pub async fn run(redis_url: &str, n: usize, raw_rate: f64) -> anyhow::Result<()> {
    let (_sim, base_url) = simulator(n).await?;
    let without = load(redis_url, &base_url, false).await?;
    let with = load(redis_url, &base_url, true).await?;
    anyhow::ensure!(
        without.events as usize == n && with.events as usize == n,
        "the loads appended {} and {} events, expected {n}",
        without.events,
        with.events
    );
    println!("record store on Redis, keyset load of {n} records (keys measured with MEMORY USAGE)");
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "keep_records", "events", "index", "records", "stamps", "B/record", "events/s", "ratio"
    );
    for (name, l) in [("false", &without), ("true", &with)] {
        let per = |i: usize| l.bytes[i].1 as f64 / n as f64;
        let total: u64 = l.bytes.iter().map(|(_, b)| b).sum();
        let rate = l.events as f64 / l.secs;
        println!(
            "{:<22} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>10.0} {:>10.0} {:>10.2}",
            name,
            per(0),
            per(1),
            per(2),
            per(3),
            total as f64 / n as f64,
            rate,
            rate / raw_rate
        );
    }
    let ratio = (with.events as f64 / with.secs) / (without.events as f64 / without.secs);
    println!("ingest with the record store / without: {ratio:.2} (at least 0.90 wanted)");
    Ok(())
}
