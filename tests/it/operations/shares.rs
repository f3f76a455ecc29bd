//! Leases at scale: instances on one store split the tables about evenly,
//! a SIGKILLed instance's tables move to the others within the lease TTL
//! plus a few seconds, and an instance restarted under the same
//! `instance_id` takes its own leases back at once.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use stamp_relay::{
    config::{Paging, SourceConfig},
    events::now_ms,
    store::Table,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::{
    Backend, ConfigBuilder, Proc, Sim, TestStore, all_events, eventually, free_port, serve, source,
    wait_synced,
};

const TABLES: [&str; 5] = ["sites", "users", "patients", "assessments", "comments"];

/// Two sources of five tables each on one simulator.
fn sources(sim: &Sim) -> Vec<SourceConfig> {
    ["a", "b"]
        .map(|name| {
            let mut s = source(&sim.base_url, &TABLES, Paging::Pages, 100);
            s.name = name.into();
            s.poll_interval = Duration::from_millis(200);
            s
        })
        .to_vec()
}

fn targets() -> Vec<Table> {
    ["a", "b"]
        .iter()
        .flat_map(|s| TABLES.iter().map(move |r| Table::new(*s, *r)))
        .collect()
}

fn write_config(ts: &TestStore, sim: &Sim, id: &str, ttl: Duration) -> PathBuf {
    write_config_of(ts, sources(sim), id, ttl)
}

fn write_config_of(ts: &TestStore, sources: Vec<SourceConfig>, id: &str, ttl: Duration) -> PathBuf {
    ConfigBuilder::on(&ts.config)
        .listen(free_port())
        .store(|s| {
            s.lease_ttl = ttl;
            s.instance_id = id.into();
        })
        .delivery(|d| d.request_timeout = ttl / 2)
        .sources(sources)
        .write(&ts.dir.path().join(format!("{id}.toml")))
}

/// Who polled each table last, and when (unix ms).
async fn holders(ts: &TestStore) -> BTreeMap<Table, (String, u64)> {
    let mut out = BTreeMap::new();
    for t in targets() {
        if let Some(s) = ts.store.poll_status(&t).await.unwrap() {
            out.insert(t, (s.holder, s.finished_ms));
        }
    }
    out
}

/// How many tables each instance polled since `since`.
async fn split(ts: &TestStore, since: u64) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (holder, at) in holders(ts).await.into_values() {
        if at > since {
            *counts.entry(holder).or_default() += 1;
        }
    }
    counts
}

/// `n` sources `s00`, `s01`, … of five tables each, polled `every`.
fn numbered(sim: &Sim, n: usize, every: Duration) -> Vec<SourceConfig> {
    (0..n)
        .map(|i| {
            let mut s = source(&sim.base_url, &TABLES, Paging::Pages, 100);
            s.name = format!("s{i:02}");
            s.poll_interval = every;
            s
        })
        .collect()
}

fn targets_of(sources: &[SourceConfig]) -> Vec<Table> {
    (sources.iter())
        .flat_map(|s| s.resources.iter().map(|r| Table::new(&s.name, r.as_str())))
        .collect()
}

async fn simulator() -> Sim {
    Sim::start(SimConfig {
        initial: TABLES.iter().map(|t| (t.to_string(), 5)).collect(),
        ..SimConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_tables_and_one_takes_over_after_a_sigkill() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = simulator().await;
    let ttl = Duration::from_secs(2);
    let mut one = Proc(serve(&write_config(&ts, &sim, "one", ttl)).spawn().unwrap());
    let _two = Proc(serve(&write_config(&ts, &sim, "two", ttl)).spawn().unwrap());
    eventually(
        "each instance polls about half the tables",
        Duration::from_secs(60),
        async || {
            // Each table counts for the instance that polled it last; a
            // window of a few polls (every 200 ms) keeps a loaded machine's
            // late polls in, and a table not polled for 3 s out.
            let now = split(&ts, now_ms() - 3_000).await;
            now.get("one").is_some_and(|n| (4..=6).contains(n))
                && now.get("two").is_some_and(|n| (4..=6).contains(n))
                && now.values().sum::<usize>() == 10
        },
    )
    .await;
    one.kill().unwrap();
    one.wait().unwrap();
    let killed = now_ms();
    // Within the lease TTL plus a few seconds, and a margin for a loaded machine.
    eventually(
        "the other instance polls every table",
        ttl + Duration::from_secs(15),
        async || split(&ts, killed + ttl.as_millis() as u64).await.get("two") == Some(&10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_the_same_instance_id_reclaims_its_leases_at_once() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = simulator().await;
    // A lease far longer than the wait below: only a reclaim passes.
    let ttl = Duration::from_secs(60);
    let cfg = write_config(&ts, &sim, "steady", ttl);
    let mut first = Proc(serve(&cfg).spawn().unwrap());
    let t = Table::new("a", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let written = sim.sim.random_writes(Some("patients"), 3);
    let top = written.iter().map(|w| w.stamp).max().unwrap();
    let _second = Proc(serve(&cfg).spawn().unwrap());
    eventually(
        "the restart polls its own tables",
        Duration::from_secs(20),
        async || {
            all_events(ts.store.as_ref(), &t)
                .await
                .last()
                .is_some_and(|e| e.stamp >= top)
        },
    )
    .await;
}

/// With a poll interval longer than the lease TTL, every lease lapses
/// between polls; each table is still polled about once per interval, not
/// once per instance: an instance holding its fair part takes none of the
/// others' tables (a hundred tables, so the share's tenth of slack is five).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_leases_between_polls_are_not_taken_by_the_other_instance() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = simulator().await;
    let (ttl, every) = (Duration::from_secs(1), Duration::from_secs(3));
    let many = numbered(&sim, 20, every);
    let tables = targets_of(&many);
    let config = |id| write_config_of(&ts, many.clone(), id, ttl);
    let _one = Proc(serve(&config("one")).spawn().unwrap());
    let _two = Proc(serve(&config("two")).spawn().unwrap());
    eventually("every table polled", Duration::from_secs(60), async || {
        let mut polled = 0;
        for t in &tables {
            polled += ts.store.poll_status(t).await.unwrap().is_some() as usize;
        }
        polled == tables.len()
    })
    .await;
    tokio::time::sleep(every * 2).await;
    let before = sim.sim.requests().len();
    let intervals = 4;
    tokio::time::sleep(every * intervals).await;
    let polls = sim.sim.requests().len() - before;
    // A hundred tables of one page each, each polled at its last poll's
    // end plus the interval: about 400 requests in four intervals, a round
    // more at most at the window's edges; both instances polling every
    // table would make it 800. (Taking the others' lapsed tables up to the
    // share's cap, as before, made it about 420.)
    let most = 100 * (intervals as usize + 1);
    assert!(
        polls <= most,
        "{polls} list requests in {intervals} intervals of 100 tables (at most {most})"
    );
}

/// Two live instances and nothing changing: once the tables are split,
/// no table changes holder, though every lease lapses between polls (the
/// interval is longer than the lease TTL). The holder of each table's last
/// poll is sampled three times an interval, so every poll is seen, and
/// the changes are counted; 51 tables, so the parts are 26 and 25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_instances_keep_their_tables_over_several_intervals() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = simulator().await;
    // A heartbeat of 3 s written every second: a loaded machine's stall
    // of a moment is not a death.
    let (ttl, every) = (Duration::from_secs(6), Duration::from_secs(9));
    let mut many = numbered(&sim, 11, every);
    many[10].resources.truncate(1);
    let tables = targets_of(&many);
    assert_eq!(tables.len(), 51);
    let config = |id| write_config_of(&ts, many.clone(), id, ttl);
    let _one = Proc(serve(&config("one")).spawn().unwrap());
    let _two = Proc(serve(&config("two")).spawn().unwrap());
    let holder_of = async |t: &Table| ts.store.poll_status(t).await.unwrap().map(|s| s.holder);
    eventually("every table polled", Duration::from_secs(60), async || {
        let mut polled = 0;
        for t in &tables {
            polled += holder_of(t).await.is_some() as usize;
        }
        polled == tables.len()
    })
    .await;
    // The rounds after the load even out the split.
    tokio::time::sleep(every * 2).await;
    let mut last = BTreeMap::new();
    let mut changes = Vec::new();
    for _ in 0..3 * 4 {
        for t in &tables {
            let now = holder_of(t).await;
            if let Some(before) = last.insert(t.clone(), now.clone())
                && before != now
            {
                changes.push((t.clone(), before, now));
            }
        }
        tokio::time::sleep(every / 3).await;
    }
    let mut split: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for holder in last.values() {
        *split.entry(holder.clone()).or_default() += 1;
    }
    assert_eq!(
        changes,
        vec![],
        "holder changes over four intervals (split {split:?})"
    );
    assert_eq!(split.len(), 2, "both instances poll: {split:?}");
}
