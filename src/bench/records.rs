//! What the latest-record store (src/store/records.rs) costs on Redis: the
//! same keyset load of N records with `keep_records` off and on, each into
//! its own key prefix of one Redis; bytes per record from `MEMORY USAGE`
//! of every key of the table, and the ingest rate of each as a ratio
//! against the run's raw `XADD` baseline and against each other.

use super::{load_source, simulator, source};
use crate::{
    config::{Paging, StoreConfig},
    store::Table,
};

/// One load: events appended, seconds, and the table's Redis bytes per
/// key; with records kept, also after retention removed every event but
/// the last (bytes per key, and seconds the trim took).
struct Load {
    events: u64,
    secs: f64,
    bytes: Vec<(&'static str, u64)>,
    trimmed: Option<(Vec<(&'static str, u64)>, f64)>,
}

/// `MEMORY USAGE` of each of the table's keys.
async fn usage(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &crate::store::redis::Keys,
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let mut bytes = Vec::new();
    for (name, key) in [
        ("events", &keys.events),
        ("index", &keys.index),
        ("records", &keys.records),
        ("stamps", &keys.stamps),
        ("late", &keys.late),
    ] {
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(c)
            .await?;
        bytes.push((name, used.unwrap_or(0)));
    }
    Ok(bytes)
}

/// Retention removing every event but the last: what the kept copies cost.
async fn trim_all(store: &StoreConfig, t: &Table) -> anyhow::Result<f64> {
    let s = crate::store::open(store).await?;
    s.keep_records(t, true);
    let last = s.last_id(t).await?;
    let started = std::time::Instant::now();
    s.trim(t, last).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn load(redis_url: &str, base_url: &str, keep: bool, round: usize) -> anyhow::Result<Load> {
    let store = StoreConfig {
        redis_url: Some(redis_url.to_string()),
        key_prefix: format!("bench-records-{keep}-{round}-{}", std::process::id()),
        ..StoreConfig::default()
    };
    let mut src = source(base_url, 1000, Paging::Keyset)?;
    src.keep_records = keep;
    let (report, secs) = load_source(&store, src).await?;
    let events = report.outcome.appended();
    let t = Table::new("bench", "patients");
    let keys = crate::store::redis::Keys::new(&store.key_prefix, &t);
    // MEMORY USAGE ... SAMPLES 0 walks every element: allow it time.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(300)));
    let mut c = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let bytes = usage(&mut c, &keys).await?;
    let trimmed = if keep && round == 0 {
        let secs = trim_all(&store, &t).await?;
        Some((usage(&mut c, &keys).await?, secs))
    } else {
        None
    };
    let () = redis::cmd("DEL")
        .arg(&keys.events)
        .arg(&keys.index)
        .arg(&keys.records)
        .arg(&keys.stamps)
        .arg(&keys.late)
        .arg(&keys.kept)
        .query_async(&mut c)
        .await?;
    Ok(Load {
        events,
        secs,
        bytes,
        trimmed,
    })
}

/// One row of the table: bytes per record per key and in all.
fn row(label: &str, bytes: &[(&'static str, u64)], n: usize, rest: &str) {
    let per: Vec<String> = bytes
        .iter()
        .map(|(_, b)| format!("{:>8.0}", *b as f64 / n as f64))
        .collect();
    let total: u64 = bytes.iter().map(|(_, b)| b).sum();
    println!(
        "{label:<14} {} {:>10.0} {rest}",
        per.join(" "),
        total as f64 / n as f64
    );
}

/// Rounds of the two loads, alternated (off, on, off, on) so neither
/// always runs on the warmer or the fuller Redis.
const ROUNDS: usize = 2;

/// Loads `n` records with and without the record store and prints bytes
/// per record and ingest ratios (`raw_rate`: the run's XADD baseline).
pub async fn run(redis_url: &str, n: usize, raw_rate: f64) -> anyhow::Result<()> {
    let (_sim, base_url) = simulator(n).await?;
    println!(
        "record store on Redis, keyset loads of {n} records, keep_records off and on alternately"
    );
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "keep_records",
        "events",
        "index",
        "records",
        "stamps",
        "late",
        "B/record",
        "events/s",
        "ratio"
    );
    let mut rates = [0.0f64; 2];
    let mut trimmed = None;
    for round in 0..ROUNDS {
        for keep in [false, true] {
            let l = load(redis_url, &base_url, keep, round).await?;
            anyhow::ensure!(
                l.events as usize == n,
                "a load appended {} events, expected {n}",
                l.events
            );
            let rate = l.events as f64 / l.secs;
            rates[usize::from(keep)] += rate / ROUNDS as f64;
            let rest = format!("{:>10.0} {:>8.2}", rate, rate / raw_rate);
            row(&keep.to_string(), &l.bytes, n, &rest);
            trimmed = trimmed.or(l.trimmed);
        }
    }
    if let Some((bytes, secs)) = trimmed {
        // The stream's one remaining event is noise at this size.
        let rest = format!("(trim: {:.0} events/s)", n as f64 / secs);
        row("true, trimmed", &bytes, n, &rest);
        println!(
            "  (retention removed every event but the last: each record's last version lives on in `records`, listed by `stamps`)"
        );
    }
    println!(
        "mean ingest ratio to the raw XADD baseline: {:.2} without the record store, {:.2} with it; with / without {:.2} (at least 0.90 wanted)",
        rates[0] / raw_rate,
        rates[1] / raw_rate,
        rates[1] / rates[0]
    );
    Ok(())
}

/// The embedded store's load again without the record store (a fresh
/// file), printed under the run's `relay -> embedded store` row
/// (`with_rate`, keep_records on).
pub async fn embedded(
    dir: &std::path::Path,
    base_url: &str,
    raw_rate: f64,
    with_rate: f64,
) -> anyhow::Result<()> {
    let store = StoreConfig {
        data_dir: dir.join("embedded-without-records"),
        ..StoreConfig::default()
    };
    let mut src = source(base_url, 1000, Paging::Keyset)?;
    src.keep_records = false;
    let (report, secs) = load_source(&store, src).await?;
    let rate = report.outcome.appended() as f64 / secs;
    println!(
        "{:<44} {:>12.0} {:>10.2}   with / without: {:.2}",
        "relay -> embedded store, keep_records = false",
        rate,
        rate / raw_rate,
        with_rate / rate
    );
    Ok(())
}
