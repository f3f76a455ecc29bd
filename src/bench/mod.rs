//! `stamp-relay bench`: the initial-load benchmark. Every figure is printed
//! next to a baseline measured in the same run, as a ratio, because this
//! machine is shared and absolute numbers drift.
//!
//! - throughput: N simulator records loaded by the relay into a fresh Redis,
//!   against a raw pipelined `XADD` of the same payloads; into the embedded
//!   store; and with `paging = "pages"`, whose settle walks' extra upstream
//!   requests are printed as a share of the plain walk (settle.rs).
//! - churn: the highest write rate per table at which every `pages` poll
//!   still moves the cursor (settle.rs).
//! - rss: the relay's resident memory while it loads M records with keyset
//!   paging, sampled as the stream grows (the simulator runs in its own process).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

mod api;
mod cluster;
mod delivery;
mod filter;
mod records;
mod rss;
mod settle;
pub mod sources;
mod sse;

use crate::{
    app::Relay,
    config::{Paging, RawConfig, SourceConfig, StoreConfig},
    record::parse_record,
    store,
    upstream::Upstream,
};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Records for the throughput comparison.
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Records for the record store's cost: Redis bytes per record and ingest
    /// rate with `keep_records` off and on (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub record_store_records: usize,
    /// Records for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub rss_records: usize,
    /// A Redis to use; by default a fresh `redis-server` on a free port.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Also load into a Redis Cluster: the seed nodes given (comma
    /// separated), or three local masters started here when none are.
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    pub redis_cluster: Option<Vec<String>>,
    /// Live-stream clients for the fan-out measurement.
    #[arg(long, default_value_t = 1000)]
    pub sse_clients: usize,
    /// Run only the webhook part, after loading --records into Redis.
    #[arg(long)]
    pub delivery_only: bool,
    /// Run only the SSE fan-out, after loading --records into Redis: a
    /// quick loop while working on the live path.
    #[arg(long)]
    pub sse_only: bool,
    /// Records of the table the churn figure writes to (0 skips it): the
    /// highest write rate at which every `pages` poll moves the cursor.
    #[arg(long, default_value_t = 5000)]
    pub churn_records: usize,
    /// Run only the churn figure.
    #[arg(long)]
    pub churn_only: bool,
    /// Run only the load figures (raw XADD, the relay into Redis and into
    /// the embedded store): a quick loop while working on ingest.
    #[arg(long)]
    pub ingest_only: bool,
    /// Only the many-sources benchmark, once per number given (e.g.
    /// `--sources 200,2000`): N sources x --tables-per-source tables on one
    /// simulator, the relay as processes of their own (sources.rs).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub sources: Vec<usize>,
    /// Tables per source in the many-sources benchmark (at most 5).
    #[arg(long, default_value_t = 5)]
    pub tables_per_source: usize,
    /// Poll interval of the many-sources benchmark's sources.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Relay instances sharing the many-sources benchmark's tables (2
    /// measures the split and a takeover).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// The idle window of the many-sources benchmark (default: the interval).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_window: Option<Duration>,
    /// Run only the memory part (used by the benchmark itself).
    #[arg(long, hide = true)]
    pub rss_only: bool,
}

/// A child process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The simulator as a separate process holding `n` stamp-ordered patients.
async fn simulator(n: usize) -> anyhow::Result<(Guard, String)> {
    let port = free_port()?;
    let child = Command::new(std::env::current_exe()?)
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--order",
            "stamp",
        ])
        .args([
            "--patients",
            &n.to_string(),
            "--assessments",
            "0",
            "--users",
            "0",
        ])
        .args(["--sites", "0", "--comments", "0", "--max-page-size", "1000"])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the simulator")?;
    let guard = Guard(child);
    wait_for_port(port, "the simulator").await?;
    Ok((guard, format!("http://127.0.0.1:{port}/api")))
}

async fn redis(
    url: &Option<String>,
    dir: &std::path::Path,
) -> anyhow::Result<(Option<Guard>, String)> {
    if let Some(url) = url {
        return Ok((None, url.clone()));
    }
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir", dir.to_str().unwrap_or(".")])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start redis-server; install it or pass --redis-url")?;
    let guard = Guard(child);
    wait_for_port(port, "redis-server").await?;
    Ok((Some(guard), format!("redis://127.0.0.1:{port}")))
}

fn source(base_url: &str, page_size: u32, paging: Paging) -> anyhow::Result<SourceConfig> {
    let mut s: SourceConfig = serde_json::from_value(serde_json::json!({
        "name": "bench", "base_url": base_url, "resources": ["patients"], "page_size": page_size,
    }))?;
    s.paging = paging;
    Ok(s)
}

/// Loads everything once with the relay; returns (events, seconds).
async fn relay_load(store: StoreConfig, base_url: &str) -> anyhow::Result<(u64, f64)> {
    let (report, secs) = load_once(&store, base_url, Paging::Keyset).await?;
    Ok((report.outcome.appended(), secs))
}

/// One `sync_once` of a fresh relay with `paging`; returns its report and
/// how long it took. `sync_once` releases the lease, so the next relay on
/// this store polls at once.
async fn load_once(
    store: &StoreConfig,
    base_url: &str,
    paging: Paging,
) -> anyhow::Result<(crate::poller::PollReport, f64)> {
    load_source(store, source(base_url, 1000, paging)?).await
}

/// [`load_once`] of a given source configuration.
async fn load_source(
    store: &StoreConfig,
    src: SourceConfig,
) -> anyhow::Result<(crate::poller::PollReport, f64)> {
    let config = RawConfig {
        store: store.clone(),
        sources: vec![src],
        ..RawConfig::default()
    }
    .validate(&|_| None)?;
    let mut relay = Relay::with_store(config, store::open(store).await?)?;
    let started = Instant::now();
    let (_, report) = relay
        .sync_once(&CancellationToken::new())
        .await
        .pop()
        .expect("one table");
    Ok((report?, started.elapsed().as_secs_f64()))
}

/// 200 upstream changes over 2 s: the live traffic the latency figures measure.
async fn upstream_writes(sim_url: &str) -> anyhow::Result<()> {
    let writes = reqwest::Client::new();
    let url = format!("{}/_sim/random-writes", sim_url.trim_end_matches("/api"));
    for _ in 0..10 {
        writes
            .post(&url)
            .json(&serde_json::json!({"table": "patients", "count": 20}))
            .send()
            .await?
            .error_for_status()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Milliseconds from an event's append (its CloudEvents `time`) to `now_ms`.
fn lag_ms(event: &serde_json::Value, now_ms: u64) -> Option<u64> {
    lag_from(event["time"].as_str()?, now_ms)
}

/// Milliseconds from a CloudEvents `time` to `now_ms`.
fn lag_from(time: &str, now_ms: u64) -> Option<u64> {
    let at = humantime::parse_rfc3339(time).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(now_ms.saturating_sub(at_ms))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    if args.rss_only {
        return rss::run(&args, &dir).await;
    }
    if !args.sources.is_empty() {
        return sources::run(&args, &dir).await;
    }
    if args.churn_only {
        let (_redis, redis_url) = redis(&args.redis_url, &dir).await?;
        let store = StoreConfig {
            redis_url: Some(redis_url),
            key_prefix: format!("bench-{}", std::process::id()),
            ..StoreConfig::default()
        };
        return settle::churn(store, args.churn_records).await;
    }
    println!(
        "stamp-relay bench: initial load of {} records (release build recommended)",
        args.records
    );
    let (_sim, base_url) = simulator(args.records).await?;
    let (_redis, redis_url) = redis(&args.redis_url, &dir).await?;

    let prefix = format!("bench-{}", std::process::id());
    let redis_store = StoreConfig {
        redis_url: Some(redis_url.clone()),
        key_prefix: prefix,
        ..StoreConfig::default()
    };

    if args.delivery_only || args.sse_only {
        let part = if args.sse_only {
            api::Part::Sse
        } else {
            api::Part::Delivery
        };
        relay_load(redis_store.clone(), &base_url).await?;
        api::run(redis_store, &base_url, args.sse_clients, part).await?;
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }

    let payloads = fetch_all(&base_url).await?;
    filter::run(&payloads);
    let single = load_figures(&args, &base_url, &payloads, &redis_store, &dir).await?;
    if args.ingest_only {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    if args.record_store_records > 0 {
        records::run(&redis_url, args.record_store_records, single.0).await?;
    }
    if let Some(nodes) = &args.redis_cluster {
        cluster::run(nodes, &dir, &base_url, &payloads, single).await?;
    }
    if args.rss_records > 0 {
        rss::in_a_process_of_its_own(&args, &redis_url)?;
    }
    if args.churn_records > 0 {
        settle::churn(redis_store.clone(), args.churn_records).await?;
    }
    api::run(redis_store, &base_url, args.sse_clients, api::Part::All).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The load figures: raw pipelined `XADD` (the baseline, 500 per round
/// trip), the relay into Redis and into the embedded store, and a `pages`
/// load; returns (raw, relay) events per second into Redis.
async fn load_figures(
    args: &BenchArgs,
    base_url: &str,
    payloads: &[(String, u64, String)],
    redis_store: &StoreConfig,
    dir: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    // The raw baseline: the same payloads, pipelined XADDs, 500 per round trip.
    let client = redis::Client::open(redis_store.redis_url.as_deref().unwrap_or_default())?;
    let raw_rate = raw_xadd(
        &mut client.get_multiplexed_async_connection().await?,
        payloads,
    )
    .await?;

    let (n, secs) = relay_load(redis_store.clone(), base_url).await?;
    let relay_rate = n as f64 / secs;
    let sqlite_store = StoreConfig {
        data_dir: dir.join("embedded"),
        ..StoreConfig::default()
    };
    let (m, secs2) = relay_load(sqlite_store, base_url).await?;
    let sqlite_rate = m as f64 / secs2;

    println!("{:<44} {:>12} {:>10}", "", "events/s", "ratio");
    println!(
        "{:<44} {:>12.0} {:>10}",
        "raw pipelined XADD (baseline)", raw_rate, "1.00"
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "relay -> redis (fetch + classify + append)",
        relay_rate,
        relay_rate / raw_rate
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "relay -> embedded store",
        sqlite_rate,
        sqlite_rate / raw_rate
    );
    if !args.ingest_only {
        records::embedded(dir, base_url, raw_rate, sqlite_rate).await?;
        let pages_store = StoreConfig {
            key_prefix: format!("bench-pages-{}", std::process::id()),
            ..redis_store.clone()
        };
        settle::run(pages_store, base_url, raw_rate).await?;
    }
    anyhow::ensure!(
        n as usize == args.records && m as usize == args.records,
        "the loads appended {n} and {m} events, expected {}",
        args.records
    );
    Ok((raw_rate, relay_rate))
}

/// The raw baseline: the same payloads, pipelined XADDs, 500 per round
/// trip, into one stream; returns entries per second.
async fn raw_xadd(
    conn: &mut impl redis::aio::ConnectionLike,
    payloads: &[(String, u64, String)],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for chunk in payloads.chunks(500) {
        let mut pipe = redis::pipe();
        for (id, stamp, data) in chunk {
            pipe.cmd("XADD")
                .arg("bench-raw")
                .arg(format!("{stamp}-0"))
                .arg(&[
                    ("op", "created"),
                    ("record", id),
                    ("stamp", &stamp.to_string()),
                ])
                .arg(&[
                    ("prev", ""),
                    ("snapshot", "1"),
                    ("observed", "0"),
                    ("data", data),
                ])
                .ignore();
        }
        let () = pipe.query_async(conn).await?;
    }
    Ok(payloads.len() as f64 / started.elapsed().as_secs_f64())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("stamp-relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Every record of the simulator as (id, stamp, raw JSON), outside any timing.
async fn fetch_all(base_url: &str) -> anyhow::Result<Vec<(String, u64, String)>> {
    let config = RawConfig {
        sources: vec![source(base_url, 1000, Paging::Keyset)?],
        ..RawConfig::default()
    }
    .validate(&|_| None)?;
    let upstream = Upstream::new(config.sources[0].clone())?;
    let fields = config.sources[0].settings.fields.clone();
    let mut out = Vec::new();
    let mut sync = 0;
    loop {
        let page = upstream
            .page("patients", sync, 1, &CancellationToken::new())
            .await?;
        let more = page.next.is_some();
        for raw in page.results {
            let r = parse_record(raw, &fields).map_err(|r| anyhow::anyhow!(r.reason))?;
            sync = r.stamp;
            out.push((r.id, r.stamp, r.raw.get().to_string()));
        }
        if !more {
            return Ok(out);
        }
    }
}
