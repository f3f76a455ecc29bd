//! The API part of the benchmark over one running relay: REST replay
//! against a raw `XRANGE` of the same stream, the SSE fan-out (sse.rs) and
//! the webhooks (delivery.rs).

use std::time::{Duration, Instant};

use redis::{AsyncCommands, streams::StreamRangeReply};
use tokio_util::sync::CancellationToken;

use crate::{
    app::Relay,
    config::{RawConfig, Scope, Secret, StoreConfig, TokenConfig},
    store::{self, Table, redis::Keys},
};

pub(super) const TOKEN: &str = "bench-token";

/// Open files this process may hold, from /proc/self/limits.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub(super) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Which parts of the API bench run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Replay, SSE fan-out and webhooks.
    All,
    /// Only the webhooks (`--delivery-only`).
    Delivery,
    /// Only the SSE fan-out (`--sse-only`).
    Sse,
}

/// Replay, SSE fan-out and webhooks over a running relay, or one `part`.
pub async fn run(
    store_cfg: StoreConfig,
    sim_url: &str,
    clients: usize,
    part: Part,
) -> anyhow::Result<()> {
    if let Some(limit) = open_file_limit() {
        anyhow::ensure!(
            limit > 2 * clients + 200,
            "{clients} SSE clients need about {} open files but the limit is {limit}; raise `ulimit -n` or pass a smaller --sse-clients",
            2 * clients + 200
        );
    }
    let mut source = super::source(sim_url, 1000, crate::config::Paging::Keyset)?;
    source.poll_interval = Duration::from_millis(100);
    let mut config = RawConfig {
        store: store_cfg.clone(),
        sources: vec![source],
        ..RawConfig::default()
    }
    .validate(&|_| None)?;
    // The receiver is on loopback.
    config.delivery.allow_private_targets = true;
    // The bench's own clients must never meet the relay's caps: it measures
    // fan-out, not refusals (which a short count would report below).
    config.api.max_sse_clients = config.api.max_sse_clients.max(clients + 16);
    config.api.max_connections = config.api.max_connections.max(2 * clients + 64);
    if part != Part::Delivery {
        println!(
            "(the bench sets api.max_sse_clients = {} and api.max_connections = {} for its {clients} SSE clients)",
            config.api.max_sse_clients, config.api.max_connections
        );
    }
    let token = TokenConfig::new("bench", Scope::Admin, "UNUSED");
    config.api_tokens.push((token, Secret::new(TOKEN)));
    let relay = Relay::with_store(config, store::open(&store_cfg).await?)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let cancel = CancellationToken::new();
    let server = tokio::spawn(relay.run(listener, cancel.clone()));

    let http = reqwest::Client::new();
    if part == Part::All {
        replay(&store_cfg, &http, &base).await?;
    }
    if part != Part::Delivery {
        super::sse::fan_out(&base, sim_url, clients).await?;
    }
    if part != Part::Sse {
        let store = store::open(&store_cfg).await?;
        let table = Table::new("bench", "patients");
        super::delivery::run(&http, &base, TOKEN, sim_url, store.as_ref(), &table).await?;
    }
    cancel.cancel();
    server.await??;
    Ok(())
}

/// Rounds of the replay comparison: raw and REST alternate, and each
/// figure is the median of its rounds, so one disturbed pass (another
/// process on the machine, a compaction) does not move the ratio.
const REPLAY_ROUNDS: usize = 3;

/// REST replay of the whole stream against raw `XRANGE`, alternated
/// [`REPLAY_ROUNDS`] times.
async fn replay(store_cfg: &StoreConfig, http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let (mut raw_rates, mut rest_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..REPLAY_ROUNDS {
        let (raw_n, raw_secs) = raw_xrange(store_cfg).await?;
        let started = Instant::now();
        let rest_n = rest_replay(http, base).await?;
        let rest_rate = rest_n as f64 / started.elapsed().as_secs_f64();
        anyhow::ensure!(
            rest_n == raw_n,
            "REST replay returned {rest_n} events, the stream holds {raw_n}"
        );
        raw_rates.push(raw_n as f64 / raw_secs);
        rest_rates.push(rest_rate);
        ratios.push(rest_rate / (raw_n as f64 / raw_secs));
    }
    let (raw_rate, rest_rate) = (median(&mut raw_rates), median(&mut rest_rates));
    println!();
    println!(
        "{:<44} {:>12} {:>10}",
        format!("replay of the same stream, median of {REPLAY_ROUNDS}"),
        "events/s",
        "ratio"
    );
    println!(
        "{:<44} {:>12.0} {:>10}",
        "raw XRANGE, 1000 per call (baseline)", raw_rate, "1.00"
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "REST replay, 1000 CloudEvents per page",
        rest_rate,
        rest_rate / raw_rate
    );
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!("{:<44} {:>23}", "  each round's ratio", rounds.join(" "));
    Ok(())
}

/// The middle value of `values` (the upper middle for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The raw baseline: `XRANGE` the whole stream, 1000 entries a call;
/// returns the entries read and the seconds taken (once connected).
async fn raw_xrange(store_cfg: &StoreConfig) -> anyhow::Result<(usize, f64)> {
    let key = Keys::new(&store_cfg.key_prefix, &Table::new("bench", "patients")).events;
    let client = redis::Client::open(store_cfg.redis_url.as_deref().unwrap_or_default())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    let (mut after, mut raw_n) = ("0-0".to_string(), 0usize);
    loop {
        let page: StreamRangeReply = conn
            .xrange_count(&key, format!("({after}"), "+", 1000)
            .await?;
        let Some(last) = page.ids.last() else { break };
        after = last.id.clone();
        raw_n += page.ids.len();
    }
    Ok((raw_n, started.elapsed().as_secs_f64()))
}

/// REST replay of the same stream, 1000 CloudEvents a page; returns the
/// events read.
async fn rest_replay(http: &reqwest::Client, base: &str) -> anyhow::Result<usize> {
    /// What a consumer reads of a page to go on: the events stay unparsed.
    #[derive(serde::Deserialize)]
    struct Page {
        events: Vec<serde::de::IgnoredAny>,
        next_after: String,
        has_more: bool,
    }
    let (mut after, mut rest_n) = ("0".to_string(), 0usize);
    loop {
        let page: Page = http
            .get(format!(
                "{base}/v1/resources/bench/patients/events?after={after}&limit=1000"
            ))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        rest_n += page.events.len();
        after = page.next_after;
        if !page.has_more {
            return Ok(rest_n);
        }
    }
}
