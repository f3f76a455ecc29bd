//! `stamp-relay bench --sources N`: many upstreams on one relay (issue 21,
//! "Measure"). N sources of `--tables-per-source` tables each, every source
//! a name of its own over one simulator process (48 records per table) with
//! a host budget of its own (`poll.budget_per = "source"`, as if each were
//! another customer's host), a
//! fresh Redis, and the relay as `stamp-relay serve` processes of their own
//! (one, or two sharing the tables), so the CPU, memory and Redis figures
//! are theirs alone. Printed: the time until every table's initial load
//! landed; over an idle window, the relays' CPU as a share of one core,
//! Redis commands per table per second (`INFO commandstats`, commands run
//! inside scripts included) and RSS; the delay from one upstream write to
//! each source's stream, p50 and max; with two instances the split of the
//! tables, and after a SIGKILL of one, the time until the other has polled
//! every table.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{StreamExt, stream};

use super::{BenchArgs, Guard, free_port, redis, wait_for_port};
use crate::{
    config::StoreConfig,
    events::now_ms,
    store::{self, Store, Table},
};

/// The simulator's tables, in the order sources take them.
const TABLES: [&str; 5] = ["patients", "assessments", "users", "sites", "comments"];

/// Records per table.
const RECORDS: u64 = 48;

/// One relay instance: its process and the name its leases carry.
struct Instance {
    process: Guard,
    name: String,
}

pub(super) async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    for &n in &args.sources {
        one_run(args, n, dir).await?;
    }
    Ok(())
}

async fn one_run(args: &BenchArgs, sources: usize, dir: &Path) -> anyhow::Result<()> {
    let per = args.tables_per_source.clamp(1, TABLES.len());
    let tables: Vec<Table> = (0..sources)
        .flat_map(|s| {
            TABLES[..per]
                .iter()
                .map(move |r| Table::new(format!("s{s:05}"), *r))
        })
        .collect();
    println!(
        "\n{sources} sources x {per} tables ({} tables), interval {}, {} instance(s), {RECORDS} records a table",
        tables.len(),
        humantime::format_duration(args.interval),
        args.instances
    );
    let (_sim, base_url) = simulator().await?;
    let (_redis, redis_url) = redis(&args.redis_url, dir).await?;
    let prefix = format!("bench-sources-{}-{sources}", std::process::id());
    let store_cfg = StoreConfig {
        redis_url: Some(redis_url.clone()),
        key_prefix: prefix.clone(),
        ..StoreConfig::default()
    };
    let store = store::open(&store_cfg).await?;
    let cfg = write_config(args, &base_url, &redis_url, &prefix, sources, per, dir)?;
    let started = Instant::now();
    let mut instances = Vec::new();
    for i in 0..args.instances.max(1) {
        instances.push(spawn(&cfg, i, dir)?);
    }
    wait_loaded(store.as_ref(), &tables, Duration::from_secs(1800)).await?;
    println!(
        "  initial load landed in every table: {:.1} s after the relay started",
        started.elapsed().as_secs_f64()
    );
    idle(args, &redis_url, &instances, tables.len()).await?;
    write_delay(store.as_ref(), &base_url, sources, args.interval).await?;
    if instances.len() > 1 {
        takeover(store.as_ref(), &tables, &mut instances, &store_cfg).await?;
    }
    Ok(())
}

/// The simulator as a process of its own, every table stamp-ordered.
async fn simulator() -> anyhow::Result<(Guard, String)> {
    let port = free_port()?;
    let n = RECORDS.to_string();
    let child = Command::new(std::env::current_exe()?)
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--order",
            "stamp",
        ])
        .args(["--patients", &n, "--assessments", &n, "--users", &n])
        .args(["--sites", &n, "--comments", &n])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the simulator")?;
    let guard = Guard(child);
    wait_for_port(port, "the simulator").await?;
    Ok((guard, format!("http://127.0.0.1:{port}/api")))
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    args: &BenchArgs,
    base_url: &str,
    redis_url: &str,
    prefix: &str,
    sources: usize,
    per: usize,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    use std::fmt::Write;
    let resources: Vec<String> = TABLES[..per].iter().map(|r| format!("{r:?}")).collect();
    // Each source stands for another customer's upstream, on a host of its
    // own in production: one budget each, not one for the simulator's host.
    let mut toml = format!(
        "[store]\nredis_url = {redis_url:?}\nkey_prefix = {prefix:?}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[poll]\nbudget_per = \"source\"\n"
    );
    for s in 0..sources {
        write!(
            toml,
            "\n[[sources]]\nname = \"s{s:05}\"\nbase_url = {base_url:?}\nresources = [{}]\npoll_interval = \"{}\"\n",
            resources.join(", "),
            humantime::format_duration(args.interval)
        )?;
    }
    let path = dir.join(format!("sources-{sources}.toml"));
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// `stamp-relay serve` with the configuration; its leases carry `bench-<i>`.
fn spawn(cfg: &Path, i: usize, dir: &Path) -> anyhow::Result<Instance> {
    let name = format!("bench-{i}");
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config", cfg.to_str().unwrap_or_default()])
        .env("HOSTNAME", &name)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start the relay")?;
    Ok(Instance {
        process: Guard(child),
        name,
    })
}

/// Applies `look` to every table, 64 at a time.
async fn each<T, F>(tables: &[Table], look: impl Fn(Table) -> F) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    stream::iter(tables.iter().cloned().map(look))
        .buffered(64)
        .collect()
        .await
}

/// Waits until every table holds its records.
async fn wait_loaded(store: &dyn Store, tables: &[Table], within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let lens = each(tables, |t| async move {
            store.stream_len(&t).await.unwrap_or(0)
        })
        .await;
        let done = lens.iter().filter(|&&n| n >= RECORDS).count();
        if done == tables.len() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "only {done} of {} tables loaded after {within:?}",
            tables.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Calls per command since Redis started (`INFO commandstats`, which
/// counts the commands scripts run too). Also what `tests/it/operations/idle.rs`
/// counts an idle poll with.
pub async fn commandstats(redis_url: &str) -> anyhow::Result<HashMap<String, u64>> {
    let mut c = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect())
}

/// Clock ticks per second of `/proc/<pid>/stat` (100 on Linux unless
/// `getconf` says otherwise).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A process's CPU time in seconds (user + system) and its RSS in MB.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    let hz = clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    (ticks / hz, rss_kb / 1024.0)
}

/// CPU, Redis commands and RSS over an idle window: nothing changes
/// upstream and nobody listens.
async fn idle(
    args: &BenchArgs,
    redis_url: &str,
    instances: &[Instance],
    tables: usize,
) -> anyhow::Result<()> {
    let window = args.idle_window.unwrap_or(args.interval);
    // The polls that follow the initial load come one interval after it,
    // with the sweep that follows every `pages` load: one interval later
    // the relay runs as it does from then on.
    tokio::time::sleep(args.interval + Duration::from_secs(2)).await;
    let pids: Vec<u32> = instances.iter().map(|i| i.process.0.id()).collect();
    let cpu0: Vec<f64> = pids.iter().map(|&p| usage(p).0).collect();
    let redis0 = commandstats(redis_url).await?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let secs = started.elapsed().as_secs_f64();
    let redis1 = commandstats(redis_url).await?;
    let mut total_cpu = 0.0;
    let mut total_rss = 0.0;
    for (i, &pid) in pids.iter().enumerate() {
        let (cpu, rss) = usage(pid);
        total_cpu += cpu - cpu0[i];
        total_rss += rss;
        println!(
            "  {}: idle CPU {:.1} % of one core, RSS {rss:.0} MB",
            instances[i].name,
            (cpu - cpu0[i]) / secs * 100.0
        );
    }
    let mut delta: Vec<(String, u64)> = redis1
        .iter()
        .filter(|(name, _)| *name != "info")
        .map(|(name, &n)| (name.clone(), n - redis0.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    delta.sort_by_key(|d| std::cmp::Reverse(d.1));
    let commands: u64 = delta.iter().map(|(_, n)| n).sum();
    let per_table = commands as f64 / secs / tables as f64;
    println!(
        "  idle over {secs:.0} s: relay CPU {:.1} % of one core (target <= 10 %), RSS {total_rss:.0} MB (target <= 300 MB)",
        total_cpu / secs * 100.0
    );
    println!(
        "  Redis: {:.0} commands/s, {per_table:.3} per table per second (target <= 0.1 at a 60 s interval)",
        commands as f64 / secs,
    );
    // Per table per minute, so an idle poll's share shows (at most 6 a poll).
    let per_min = |n: u64| n as f64 * 60.0 / secs / tables as f64;
    println!(
        "  Redis commands per table per minute: {}",
        delta
            .iter()
            .map(|(name, n)| format!("{name} {:.3}", per_min(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// One upstream write to the table every source's `patients` reads: the
/// delay until it is in each source's stream.
async fn write_delay(
    store: &dyn Store,
    base_url: &str,
    sources: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    let tables: Vec<Table> = (0..sources)
        .map(|s| Table::new(format!("s{s:05}"), "patients"))
        .collect();
    let lens = async || {
        each(&tables, |t| async move {
            store.stream_len(&t).await.unwrap_or(0)
        })
        .await
    };
    let before = lens().await;
    let url = format!("{}/_sim/random-writes", base_url.trim_end_matches("/api"));
    reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({"table": "patients", "count": 1}))
        .send()
        .await?
        .error_for_status()?;
    let wrote = Instant::now();
    let mut delays: Vec<Option<f64>> = vec![None; sources];
    while delays.iter().any(Option::is_none)
        && wrote.elapsed() < 2 * interval + Duration::from_secs(60)
    {
        let now = lens().await;
        let at = wrote.elapsed().as_secs_f64();
        for (i, d) in delays.iter_mut().enumerate() {
            if d.is_none() && now[i] > before[i] {
                *d = Some(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen: Vec<f64> = delays.iter().flatten().copied().collect();
    seen.sort_by(f64::total_cmp);
    let missing = sources - seen.len();
    let p50 = seen.get(seen.len() / 2).copied().unwrap_or(f64::NAN);
    let max = seen.last().copied().unwrap_or(f64::NAN);
    println!(
        "  one upstream write in every source's stream: p50 {p50:.1} s, max {max:.1} s{} (target <= interval + 2 s = {:.0} s)",
        if missing > 0 {
            format!(", {missing} never")
        } else {
            String::new()
        },
        interval.as_secs_f64() + 2.0
    );
    Ok(())
}

/// How the tables are split between the instances (by the holder of each
/// table's last poll), then the time until the survivor of a SIGKILL has
/// polled every table.
async fn takeover(
    store: &dyn Store,
    tables: &[Table],
    instances: &mut [Instance],
    cfg: &StoreConfig,
) -> anyhow::Result<()> {
    let holders = async || {
        each(tables, |t| async move {
            store
                .poll_status(&t)
                .await
                .ok()
                .flatten()
                .map(|s| (s.holder, s.finished_ms))
        })
        .await
    };
    let mut split: HashMap<String, usize> = HashMap::new();
    let last = holders().await;
    let victim = instances[0].name.clone();
    // The killed instance's tables: the survivor's own come at their interval.
    let orphans: Vec<usize> = (last.iter().enumerate())
        .filter(|(_, h)| h.as_ref().is_some_and(|(h, _)| is_instance(h, &victim)))
        .map(|(i, _)| i)
        .collect();
    for (holder, _) in last.into_iter().flatten() {
        let name = instances
            .iter()
            .find(|i| is_instance(&holder, &i.name))
            .map_or(holder.clone(), |i| i.name.clone());
        *split.entry(name).or_default() += 1;
    }
    let mut split: Vec<_> = split.into_iter().collect();
    split.sort();
    println!("  split of the tables (holder of each table's last poll): {split:?}");
    let survivor = instances[1].name.clone();
    instances[0].process.0.kill()?;
    let (killed, killed_ms) = (Instant::now(), now_ms());
    loop {
        let now = holders().await;
        let done = (orphans.iter())
            .filter_map(|&i| now[i].as_ref())
            .filter(|(h, at)| is_instance(h, &survivor) && *at >= killed_ms)
            .count();
        if done == orphans.len() {
            break;
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(900),
            "after a SIGKILL the other instance polled only {done} of the {} tables it lost in 900 s",
            orphans.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "  after a SIGKILL of {victim}: {survivor} polled all {} of its tables within {:.1} s (target <= lease TTL + 5 s = {:.0} s)",
        orphans.len(),
        killed.elapsed().as_secs_f64(),
        cfg.lease_ttl.as_secs_f64() + 5.0
    );
    Ok(())
}

/// Whether a lease holder is the instance `name`: its name, or its name
/// with a suffix (`<name>-<pid>`).
fn is_instance(holder: &str, name: &str) -> bool {
    holder == name || holder.starts_with(&format!("{name}-"))
}
