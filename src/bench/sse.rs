//! The SSE part of the API benchmark: 1,000 (or `--sse-clients`) live-stream
//! clients on one table while the upstream changes, with each event's lag
//! from its append, the fan-out's spread per poll and the CPU it took.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{TOKEN, percentile};
use crate::events::now_ms;

/// This process's figures in `/proc`.
const PROCESS: &str = "/proc/self/stat";
/// The calling thread's: in `fan_out`, the clients' thread.
const CLIENTS: &str = "/proc/thread-self/stat";

/// User and system CPU time this process ([`PROCESS`]) or the calling
/// thread ([`CLIENTS`]) has used, in the kernel's 100 ticks a second; zero
/// where there is no `/proc`.
fn cpu_time(stat: &str) -> Duration {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
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
///
/// The clients run on a thread and runtime of their own, as the relay's
/// clients would in processes of their own: they still share the 2 cores
/// (their CPU is in the figure below), but not the relay's task queues,
/// where a client's read would wait behind the relay's writes to the
/// other clients and the relay's writes behind the clients' reads.
pub(super) async fn fan_out(base: &str, sim_url: &str, clients: usize) -> anyhow::Result<()> {
    let (base, sim_url) = (base.to_owned(), sim_url.to_owned());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-sse-clients".into())
        .spawn(move || {
            let measured = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(measure(&base, &sim_url, clients)));
            let _ = tx.send(measured);
        })?;
    rx.await?
}

/// What [`fan_out`] runs on the clients' own runtime.
async fn measure(base: &str, sim_url: &str, clients: usize) -> anyhow::Result<()> {
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
    // The clients' thread is this one: the rest of the process is the relay.
    let (cpu_before, clients_before) = (cpu_time(PROCESS), cpu_time(CLIENTS));
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
    let cpu = cpu_time(PROCESS).saturating_sub(cpu_before);
    let clients_cpu = cpu_time(CLIENTS).saturating_sub(clients_before);
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
    print_cpu(cpu, clients_cpu, chunks, lags.len());
    if min != max || min == 0 {
        println!(
            "  clients received different event counts ({min}..{max}): some events were missed"
        );
    }
    Ok(())
}

/// The CPU the fan-out took per chunk a client received and per event
/// delivered: the process's, and of it the relay's (the rest of the
/// process) and the clients' (their thread).
fn print_cpu(cpu: Duration, clients: Duration, chunks: usize, events: usize) {
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let relay = cpu.saturating_sub(clients);
    println!(
        "  CPU per chunk a client received {:.1} us (relay {:.1}, clients {:.1}), per event {:.2} us (relay {:.2})",
        per(cpu, chunks),
        per(relay, chunks),
        per(clients, chunks),
        per(cpu, events),
        per(relay, events)
    );
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
