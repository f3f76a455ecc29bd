//! The webhook part of the benchmark: events per second to a local
//! receiver, unbatched and in batches of 100, against a plain HTTP client
//! loop posting the same bodies to the same receiver; to slow receivers
//! (50 and 200 ms a request) against the most `max_in_flight` requests
//! allow; and the latency from append to receipt while the upstream changes.
//! The unbatched run is repeated through a three-clause filter that every
//! event passes, as a ratio: the cost of filtering on delivery throughput.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use serde_json::{Value, json};

use crate::{
    events::{StreamId, now_ms},
    store::{Store, Table},
};

/// The phase measuring latency from append to receipt.
const LIVE: usize = 5;
/// The unbatched phase again, through [`FILTER`].
const FILTERED: usize = 6;

/// Three clauses every bench event passes, one of them reading the record:
/// a filter's whole cost, none of its savings.
const FILTER: &str = r#"[
  {"prefix": {"type": "io.stamp-relay.patients."}},
  {"prefix": {"data.external_id": "MRN-"}},
  {"not": {"suffix": {"type": ".deleted"}}}
]"#;

/// Events received, per phase of the benchmark: each phase's subscription
/// posts to a path of its own, so stragglers of a deleted one (still in
/// flight when it was deleted) never count for the next.
#[derive(Default)]
struct Counts {
    events: [AtomicUsize; 8],
    /// When each phase's first event arrived.
    first: [std::sync::OnceLock<Instant>; 8],
    lags: Mutex<Vec<u64>>,
}

impl Counts {
    /// Events per second of a phase, from its first event on: the supervisor
    /// starts a new subscription's workers within `SUPERVISE_EVERY`, a delay
    /// that is not delivery.
    fn rate(&self, phase: usize, events: usize) -> f64 {
        let since = self.first[phase]
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        events as f64 / since.elapsed().as_secs_f64()
    }
}

/// Counts events of `phase`; records the lag of each from its `time`
/// (relay append).
async fn receive(
    State(c): State<Arc<Counts>>,
    Path((phase, ms)): Path<(usize, u64)>,
    body: Bytes,
) -> StatusCode {
    if ms > 0 {
        // Even a zero sleep waits for the timer's next millisecond tick.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let events = match v {
        Value::Array(a) => a,
        one => vec![one],
    };
    let now = now_ms();
    let mut lags = c.lags.lock().unwrap_or_else(|p| p.into_inner());
    if phase == LIVE {
        lags.extend(events.iter().filter_map(|e| super::lag_ms(e, now)));
    }
    c.first[phase % 8].get_or_init(Instant::now);
    c.events[phase % 8].fetch_add(events.len(), Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// How many events after `after` `keep` keeps.
async fn count_after(
    store: &dyn Store,
    t: &Table,
    mut after: StreamId,
    keep: impl Fn(&crate::events::Event) -> bool,
) -> anyhow::Result<usize> {
    let mut n = 0;
    loop {
        let page = store.read(t, after, 1000).await?;
        let Some(last) = page.last() else {
            return Ok(n);
        };
        after = last.id;
        n += page.iter().filter(|e| keep(e)).count();
    }
}

async fn wait_count(c: &Counts, phase: usize, n: usize, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let got = || c.events[phase].load(Ordering::Relaxed);
    while got() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: only {} of {n} events arrived",
            got()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// CPU time this process (relay, receiver and client loop) has used, in
/// µs, from `/proc/self/stat` (clock ticks of 10 ms: phases last seconds).
fn cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10_000
}

/// The bench's view of the relay under test.
struct Bench<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
    store: &'a dyn Store,
    table: &'a Table,
    counts: Arc<Counts>,
    receiver: String,
    top: u64,
}

impl Bench<'_> {
    fn hook(&self, phase: usize, ms: u64) -> String {
        format!("{}/{phase}/{ms}", self.receiver)
    }

    async fn subscribe(
        &self,
        phase: usize,
        ms: u64,
        batch: u32,
        from: u64,
    ) -> anyhow::Result<String> {
        let mut body = json!({"url": self.hook(phase, ms), "resources": ["bench/patients"],
            "start": {"bench/patients": from}, "batch_size": batch});
        if phase == FILTERED {
            body["filters"] = serde_json::from_str(FILTER)?;
        }
        let created: Value = self
            .http
            .post(format!("{}/v1/subscriptions", self.base))
            .bearer_auth(self.token)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(created["id"].as_str().unwrap_or_default().to_string())
    }

    async fn unsubscribe(&self, id: &str) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}/v1/subscriptions/{id}", self.base))
            .bearer_auth(self.token)
            .send()
            .await?;
        Ok(())
    }

    /// Delivers the last `events` stamps' events to a receiver answering
    /// after `ms`; returns events/s and the process's CPU µs per event.
    async fn phase(
        &self,
        phase: usize,
        ms: u64,
        batch: u32,
        events: u64,
    ) -> anyhow::Result<(f64, f64)> {
        // Stamps count upstream writes, events only the versions the relay
        // saw: count the events after the start point instead of assuming.
        let from = self.top.saturating_sub(events);
        let after = StreamId::new(from, 0);
        let events = match phase {
            FILTERED => self.passing(after).await?,
            _ => count_after(self.store, self.table, after, |_| true).await?,
        };
        let cpu = cpu_us();
        let id = self.subscribe(phase, ms, batch, from).await?;
        wait_count(&self.counts, phase, events, "webhook delivery").await?;
        let cpu = (cpu_us() - cpu) as f64 / events as f64;
        let rate = self.counts.rate(phase, events);
        self.unsubscribe(&id).await?;
        Ok((rate, cpu))
    }

    /// How many events after `after` pass [`FILTER`] (all, unless the
    /// simulator's records change shape).
    async fn passing(&self, after: StreamId) -> anyhow::Result<usize> {
        let filters: Value = serde_json::from_str(FILTER)?;
        let names = crate::config::FieldNames::default();
        let sel = crate::filter::Selection::from_json(Some(&filters), None, &names)?;
        let src = crate::cloudevents::EventSource {
            table: self.table.clone(),
            source_url: String::new(),
            type_prefix: "io.stamp-relay".into(),
            fields: names,
        };
        let keep = |e: &crate::events::Event| sel.matches(&crate::filter::EventView::new(&src, e));
        count_after(self.store, self.table, after, keep).await
    }

    /// The baseline: the same kind of body, posted one by one by a plain
    /// client; returns events/s and CPU µs per event.
    async fn plain_loop(&self, n: usize) -> anyhow::Result<(f64, f64)> {
        let page: Value = self
            .http
            .get(format!(
                "{}/v1/resources/bench/patients/events?after=0&limit=1000",
                self.base
            ))
            .bearer_auth(self.token)
            .send()
            .await?
            .json()
            .await?;
        let bodies: Vec<Vec<u8>> = page["events"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|e| e.to_string().into_bytes())
            .collect();
        anyhow::ensure!(!bodies.is_empty(), "no events to post");
        let (started, cpu) = (Instant::now(), cpu_us());
        for i in 0..n {
            self.http
                .post(self.hook(0, 0))
                .header("content-type", "application/cloudevents+json")
                .body(bodies[i % bodies.len()].clone())
                .send()
                .await?
                .error_for_status()?;
        }
        let cpu = (cpu_us() - cpu) as f64 / n as f64;
        Ok((n as f64 / started.elapsed().as_secs_f64(), cpu))
    }
}

pub async fn run(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    sim_url: &str,
    store: &dyn Store,
    table: &Table,
) -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let app = Router::new()
        .route("/hook/{phase}/{ms}", post(receive))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let b = Bench {
        http,
        base,
        token,
        store,
        table,
        counts,
        receiver,
        top: store.last_id(table).await?.stamp,
    };
    local(&b).await?;
    slow(&b).await?;
    live(&b, sim_url).await
}

/// To a local receiver, unbatched and in batches of 100, against the plain
/// client loop; with the CPU each used per event (relay, receiver and
/// client share this process; Redis is not counted).
async fn local(b: &Bench<'_>) -> anyhow::Result<()> {
    let n = 10_000usize;
    let (raw_rate, raw_cpu) = b.plain_loop(n).await?;
    let mut rates = Vec::new();
    for (phase, batch, events) in [(1, 1u32, n), (FILTERED, 1, n), (2, 100, 50_000usize)] {
        rates.push((phase, batch, b.phase(phase, 0, batch, events as u64).await?));
    }
    println!();
    println!(
        "{:<44} {:>12} {:>10} {:>12}",
        "webhooks to a local receiver", "events/s", "ratio", "CPU µs/event"
    );
    println!(
        "{:<44} {:>12.0} {:>10} {:>12.1}",
        "plain HTTP client loop, 1 per POST (baseline)", raw_rate, "1.00", raw_cpu
    );
    for (phase, batch, (rate, cpu)) in &rates {
        let filtered = if *phase == FILTERED {
            ", 3-clause filter"
        } else {
            ""
        };
        println!(
            "{:<44} {:>12.0} {:>10.2} {:>12.1}",
            format!("relay, signed, batch_size {batch}{filtered}"),
            rate,
            rate / raw_rate,
            cpu
        );
    }
    let (plain, filtered) = (rates[0].2.0, rates[1].2.0);
    println!(
        "filter cost: batch_size 1 through a 3-clause filter every event passes runs at {:.2} \
         of the unfiltered rate (goal: at least 0.90)",
        filtered / plain
    );
    Ok(())
}

/// Slow receivers: one unbatched subscription against what its window
/// allows at most, max_in_flight requests per latency.
async fn slow(b: &Bench<'_>) -> anyhow::Result<()> {
    println!();
    println!(
        "{:<44} {:>12} {:>10}",
        "webhooks to a slow receiver, batch_size 1", "events/s", "of limit"
    );
    let window = crate::subscription::DEFAULT_IN_FLIGHT as f64;
    for (phase, ms) in [(3, 50u64), (4, 200)] {
        let limit = window * 1000.0 / ms as f64;
        // About eight seconds' worth at the limit.
        let (rate, _) = b.phase(phase, ms, 1, (limit * 8.0) as u64).await?;
        println!(
            "{:<44} {:>12.0} {:>10.2}",
            format!("{ms} ms a request (limit {limit:.0}/s = {window:.0} / {ms} ms)"),
            rate,
            rate / limit
        );
    }
    Ok(())
}

/// Latency from append to receipt while the upstream changes.
async fn live(b: &Bench<'_>, sim_url: &str) -> anyhow::Result<()> {
    let id = b.subscribe(LIVE, 0, 1, b.top).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lags = || b.counts.lags.lock().unwrap_or_else(|p| p.into_inner());
    lags().clear();
    let before = b.counts.events[LIVE].load(Ordering::Relaxed);
    super::upstream_writes(sim_url).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got_lags = lags().clone();
    got_lags.sort_unstable();
    let got = b.counts.events[LIVE].load(Ordering::Relaxed) - before;
    println!(
        "latency from append to receipt, {got} live events: p50 {} ms  p99 {} ms",
        super::api::percentile(&got_lags, 0.5),
        super::api::percentile(&got_lags, 0.99)
    );
    b.unsubscribe(&id).await
}
