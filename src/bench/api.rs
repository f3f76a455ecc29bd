//! The API part of the benchmark: REST replay against a raw `XRANGE` of the
//! same stream, and SSE fan-out to many clients with the delivery lag.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{AsyncCommands, streams::StreamRangeReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    app::Relay,
    config::{RawConfig, Scope, Secret, StoreConfig, TokenConfig},
    events::now_ms,
    store::{self, Table, redis::Keys},
};

const TOKEN: &str = "bench-token";

/// Open files this process may hold, from /proc/self/limits.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// User and system CPU time this process has used (`/proc/self/stat`,
/// in the kernel's 100 ticks a second); zero where there is no `/proc`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
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
        fan_out(&base, sim_url, clients).await?;
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

/// One live-stream client: sends (client, when, lags of a chunk's events)
/// for every chunk until `stop`. A bare HTTP/1.1 reader on its own
/// socket, one task and no HTTP client library: the clients share the
/// process and its 2 cores with the relay, so what each spends is taken
/// from the fan-out it measures.
async fn live_client(
    i: usize,
    addr: std::net::SocketAddr,
    connected: Arc<AtomicUsize>,
    stop: CancellationToken,
    tx: mpsc::UnboundedSender<(usize, u64, Vec<u64>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut sock) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let _ = sock.set_nodelay(true);
    let request = format!(
        "GET /v1/resources/bench/patients/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\naccept: text/event-stream\r\n\r\n"
    );
    if sock.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let (mut raw, mut body) = (Vec::with_capacity(16 * 1024), Vec::new());
    let mut counted = false;
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => break,
            r = sock.read_buf(&mut raw) => r,
        };
        if !matches!(read, Ok(n) if n > 0) {
            break;
        }
        if !counted {
            let Some(end) = memchr::memmem::find(&raw, b"\r\n\r\n") else {
                continue;
            };
            if !raw.starts_with(b"HTTP/1.1 200") {
                return;
            }
            raw.drain(..end + 4);
            connected.fetch_add(1, Ordering::Relaxed);
            counted = true;
        }
        if dechunk(&mut raw, &mut body) {
            break;
        }
        let now = now_ms();
        let (lags, used) = frame_lags(&body, now);
        body.drain(..used);
        if !lags.is_empty() {
            let _ = tx.send((i, now, lags));
        }
    }
}

/// Moves the whole chunks of a chunked HTTP/1.1 body at the start of
/// `raw` into `body`; true at the last (empty) chunk.
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) -> bool {
    let mut at = 0;
    let ended = loop {
        let Some(line) = memchr::memchr(b'\n', &raw[at..]).map(|n| n.saturating_sub(1)) else {
            break false;
        };
        let size = std::str::from_utf8(&raw[at..at + line])
            .ok()
            .and_then(|h| usize::from_str_radix(h.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else {
            break true;
        };
        let data = at + line + 2;
        if raw.len() < data + size + 2 {
            break false;
        }
        body.extend_from_slice(&raw[data..data + size]);
        at = data + size + 2;
        if size == 0 {
            break true;
        }
    };
    raw.drain(..at);
    ended
}

/// The lag of every whole SSE frame at the start of `buf`, and the bytes
/// they take. A client reads only each event's `time`, found by a search
/// rather than a parse: the bench's clients share the process and its 2
/// cores with the relay, so what they spend is taken from the relay's
/// fan-out; the events of one poll share their `time`, parsed once. The envelope's `time` comes before `data`, and a JSON string
/// cannot hold `"time":"` unescaped, so the first match is the event's.
fn frame_lags(buf: &[u8], now: u64) -> (Vec<u64>, usize) {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Made once: `memmem::find` builds its searcher at every call.
    static END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
    static TIME: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"time\":\""));
    let (mut lags, mut start) = (Vec::new(), 0);
    let mut last: Option<(Vec<u8>, Option<u64>)> = None;
    while let Some(end) = END.find(&buf[start..]) {
        let frame = &buf[start..start + end];
        start += end + 2;
        let Some(at) = TIME.find(frame) else {
            continue;
        };
        let time = &frame[at + 8..];
        let Some(close) = memchr::memchr(b'"', time) else {
            continue;
        };
        // The events of one poll share their `time`: parsed once.
        let time = &time[..close];
        if last.as_ref().is_none_or(|(t, _)| t.as_slice() != time) {
            let lag = std::str::from_utf8(time)
                .ok()
                .and_then(|t| super::lag_from(t, now));
            last = Some((time.to_vec(), lag));
        }
        lags.extend(last.as_ref().and_then(|(_, lag)| *lag));
    }
    (lags, start)
}

/// `clients` live streams on one table while the simulator writes; prints
/// how long each event took from append to each client.
async fn fan_out(base: &str, sim_url: &str, clients: usize) -> anyhow::Result<()> {
    let connected = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Vec<u64>)>();
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse()?;
    for i in 0..clients {
        // A token of its own: no lock shared by every client at each wait.
        let (connected, stop, tx) = (connected.clone(), stop.child_token(), tx.clone());
        tokio::spawn(live_client(i, addr, connected, stop, tx));
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = clients - connected.load(Ordering::Relaxed);
    let cpu_before = cpu_time();
    super::upstream_writes(sim_url).await?;
    let mut lags = Vec::new();
    let mut per_client = vec![0usize; clients];
    let mut chunks = 0usize;
    // Per poll (its `time`, the same for all its events): the lag of the
    // first client to receive it and of the last.
    let mut polls: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    // Until three quiet seconds pass.
    while let Ok(Some((i, now, got))) =
        tokio::time::timeout(Duration::from_secs(3), rx.recv()).await
    {
        per_client[i] += got.len();
        chunks += 1;
        for &lag in &got {
            let span = polls.entry(now - lag).or_insert((lag, lag));
            *span = (span.0.min(lag), span.1.max(lag));
        }
        lags.extend(got);
    }
    // Less the three quiet seconds' share, which costs next to nothing.
    let cpu = cpu_time().saturating_sub(cpu_before);
    stop.cancel();
    lags.sort_unstable();
    let (min, max) = (
        per_client.iter().min().copied().unwrap_or(0),
        per_client.iter().max().copied().unwrap_or(0),
    );
    println!();
    println!("SSE fan-out: {clients} clients on one stream, 200 upstream writes over 2 s");
    if refused > 0 {
        println!("  {refused} of {clients} clients were refused or did not connect within 60 s");
    }
    println!(
        "  deliveries {}  events per client {min}..{max}  lag from append p50 {} ms  p99 {} ms  max {} ms",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0)
    );
    print_polls(&polls);
    println!(
        "  CPU of this process (relay and clients) per chunk a client received {:.1} us, per event {:.2} us",
        cpu.as_secs_f64() * 1e6 / chunks.max(1) as f64,
        cpu.as_secs_f64() * 1e6 / lags.len().max(1) as f64
    );
    if min != max || min == 0 {
        println!(
            "  clients received different event counts ({min}..{max}): some events were missed"
        );
    }
    Ok(())
}

/// Per poll: the first client's lag (poll, append, tail read) and how
/// long the rest took after it (the fan-out), from `polls`' (first, last).
fn print_polls(polls: &std::collections::BTreeMap<u64, (u64, u64)>) {
    let mut first: Vec<u64> = polls.values().map(|p| p.0).collect();
    let mut spread: Vec<u64> = polls.values().map(|p| p.1 - p.0).collect();
    first.sort_unstable();
    spread.sort_unstable();
    println!(
        "  per poll ({}): first client's lag (poll, append, tail) p50 {} ms  max {} ms; first to last client (fan-out) p50 {} ms  max {} ms",
        polls.len(),
        percentile(&first, 0.5),
        first.last().copied().unwrap_or(0),
        percentile(&spread, 0.5),
        spread.last().copied().unwrap_or(0)
    );
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

#[cfg(test)]
mod tests {
    /// Each whole frame's `time` is read (a `time` key inside `data` is
    /// not), and a frame cut at the chunk's end waits for the rest.
    #[test]
    fn frame_lags_reads_each_whole_frame_time() {
        let at = "2023-11-14T22:13:20.123Z";
        let at_ms = 1_700_000_000_123;
        let frame = |id: u32, ms: &str| {
            format!(
                "id: {id}-0\ndata: {{\"id\":\"x\",\"time\":\"{ms}\",\"data\":{{\"time\":\"1970-01-01T00:00:00Z\"}}}}\n\n"
            )
        };
        let mut buf = format!(":\n\n{}{}", frame(1, at), frame(2, at)).into_bytes();
        let whole = buf.len();
        buf.extend_from_slice(b"id: 3-0\ndata: {\"time\":\"2023");
        let (lags, used) = super::frame_lags(&buf, at_ms + 40);
        assert_eq!(lags, vec![40, 40]);
        assert_eq!(used, whole, "the cut frame stays in the buffer");
    }

    /// Whole chunks move into the body (a cut one waits), and the empty
    /// chunk ends it.
    #[test]
    fn dechunk_takes_whole_chunks() {
        let (mut raw, mut body) = (b"5\r\nhello\r\n3\r\nab".to_vec(), Vec::new());
        assert!(!super::dechunk(&mut raw, &mut body));
        assert_eq!(body, b"hello");
        assert_eq!(raw, b"3\r\nab");
        raw.extend_from_slice(b"c\r\n0\r\n\r\n");
        assert!(super::dechunk(&mut raw, &mut body));
        assert_eq!(body, b"helloabc");
    }
}
