//! A seeded property test of the sync. From each seed it draws the
//! upstream's result order (stamp, name or random), the paging strategy, the
//! page size, every simulator fault (errors, 429s, slow and truncated
//! answers, writes and in-place edits while a walk pages, late commits,
//! stamp gaps), rows sharing stamps (bulk writes), writes between and
//! during polls, and relay kills (a poll
//! dropped at a random await point, as a crash would leave it) and restarts.
//! Whatever the draw, the stream must hold every version the upstream showed
//! when it was quiet, once, in stamp order per record, and end at the
//! upstream's final state.
//!
//! `STAMP_RELAY_SEEDS=n` runs seeds `0..n` on each store (4 by default);
//! `STAMP_RELAY_SEED=k` reruns seed `k` alone, the one a failure printed.

use std::{collections::HashMap, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use stamp_relay::{
    app::Relay,
    config::{Paging, SourceConfig},
    store::Table,
};
use stamp_relay_simulator::{Faults, Order, SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    Backend, SeedGuard, Sim, TestStore, all_events, assert_rebuilds, config, seed_list, source,
};

const TABLES: [&str; 2] = ["patients", "assessments"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_holds_under_drawn_faults_redis() {
    on_every_seed(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_holds_under_drawn_faults_sqlite() {
    on_every_seed(Backend::Sqlite).await;
}

async fn on_every_seed(backend: Backend) {
    let mut seen = Tally::default();
    for seed in seed_list() {
        let Some(ts) = TestStore::open(backend).await else {
            return;
        };
        let _guard = SeedGuard {
            what: format!("property on {backend:?}"),
            seed,
        };
        seen.add(run_seed(&ts, seed).await);
    }
    eprintln!("property on {backend:?}: {seen:?}");
    // Each seed draws its faults from its own range, so over the default
    // four seeds every kind fires; fewer seeds prove less and say so.
    if seed_list().len() >= 4 {
        assert!(seen.faults > 0, "no fault fired: {seen:?}");
        assert!(seen.kills > 0, "no kill landed mid-poll: {seen:?}");
        assert!(seen.checked_versions > 0, "{seen:?}");
    }
}

/// What one or more seeds exercised, so the test can show it proved something.
#[derive(Debug, Default)]
struct Tally {
    faults: usize,
    kills: usize,
    restarts: usize,
    failed_polls: usize,
    checked_versions: usize,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.faults += o.faults;
        self.kills += o.kills;
        self.restarts += o.restarts;
        self.failed_polls += o.failed_polls;
        self.checked_versions += o.checked_versions;
    }
}

/// What a seed draws for the upstream and the relay.
#[derive(Debug)]
struct Draw {
    order: Order,
    paging: Paging,
    page_size: u32,
    initial: Vec<(String, usize)>,
    faults: Faults,
    stamp_gap_rate: f64,
    /// Rows per stamp, as bulk writes give them (1: unique stamps).
    stamp_group: usize,
    rounds: usize,
}

fn draw(rng: &mut StdRng) -> Draw {
    let order = [Order::Stamp, Order::Name, Order::Random][rng.random_range(0..3)];
    // Keyset paging needs a stamp-sorted upstream; pages work on any order.
    let paging = if order == Order::Stamp && rng.random_bool(0.5) {
        Paging::Keyset
    } else {
        Paging::Pages
    };
    let faults = Faults {
        error_rate: rng.random_range(0.0..0.15),
        // Every 429 carries `Retry-After: 1`, which the relay honours.
        rate_limit_rate: rng.random_range(0.0..0.02),
        slow_rate: rng.random_range(0.0..0.3),
        slow_ms: rng.random_range(5..40),
        truncate_rate: rng.random_range(0.0..0.1),
        // More than one write per page on small pages grows the set faster
        // than a walk covers it; real upstreams change far more slowly.
        writes_per_page: rng.random_range(0..=1),
        edits_per_page: rng.random_range(0..=1),
        late_rate: rng.random_range(0.0..0.3),
        late_after: rng.random_range(1..=4),
        ..Faults::default()
    };
    Draw {
        order,
        paging,
        page_size: rng.random_range(5..=40),
        initial: TABLES
            .iter()
            .map(|t| (t.to_string(), rng.random_range(0..80)))
            .collect(),
        faults,
        stamp_gap_rate: rng.random_range(0.0..0.3),
        rounds: rng.random_range(6..=12),
        stamp_group: if rng.random_bool(0.5) {
            rng.random_range(2..=6)
        } else {
            1
        },
    }
}

/// A relay as a restarted process builds it: a new instance on the same store.
fn start(ts: &TestStore, src: &SourceConfig) -> Relay {
    Relay::with_store(config(&ts.config, vec![src.clone()]), ts.store.clone()).unwrap()
}

async fn run_seed(ts: &TestStore, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let d = draw(&mut rng);
    eprintln!("seed {seed}: {d:?}");
    let sim = Sim::start(SimConfig {
        seed,
        order: d.order,
        initial: d.initial.clone(),
        faults: d.faults.clone(),
        stamp_gap_rate: d.stamp_gap_rate,
        stamp_group: d.stamp_group,
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &TABLES, d.paging, d.page_size);
    let mut relay = start(ts, &src);
    let mut tally = Tally::default();
    let mut snapshots = Vec::new();
    for round in 0..d.rounds {
        for table in TABLES {
            sim.sim.random_writes(Some(table), rng.random_range(0..6));
        }
        match rng.random_range(0..6) {
            0 | 1 => {
                let after = Duration::from_millis(rng.random_range(1..20));
                if tokio::time::timeout(after, poll_all(&mut relay, &mut tally))
                    .await
                    .is_err()
                {
                    tally.kills += 1;
                }
                relay = start(ts, &src);
            }
            2 => {
                tally.restarts += 1;
                relay = start(ts, &src);
                poll_all(&mut relay, &mut tally).await;
            }
            3 => {
                let writer = write_during(&sim.sim, StdRng::seed_from_u64(rng.random()));
                tokio::join!(poll_all(&mut relay, &mut tally), writer);
            }
            _ => {
                poll_all(&mut relay, &mut tally).await;
            }
        }
        if round == d.rounds / 2 {
            snapshots.push(quiesce(&mut relay, &sim.sim, &mut tally).await);
            check_versions(ts, &snapshots, &mut tally).await;
        }
    }
    snapshots.push(quiesce(&mut relay, &sim.sim, &mut tally).await);
    for table in TABLES {
        assert_rebuilds(ts.store.as_ref(), &Table::new("sim", table), &sim.sim).await;
    }
    tally.checked_versions = 0;
    check_versions(ts, &snapshots, &mut tally).await;
    tally
}

/// How many list requests in the simulator's recent log (the last 1000) got a fault.
fn faults_fired(sim: &Simulator) -> usize {
    sim.requests().iter().filter(|r| r.fault.is_some()).count()
}

/// One poll of every table at once, as the relay runs them; a failed poll
/// (faults can exhaust the retries) is counted, and the next round retries.
async fn poll_all(relay: &mut Relay, tally: &mut Tally) -> bool {
    let cancel = CancellationToken::new();
    let polls = relay.pollers.iter_mut().map(|p| p.poll_once(&cancel));
    let mut quiet = true;
    for r in futures_util::future::join_all(polls).await {
        match r {
            Ok(r) => quiet &= r.leased && r.outcome.appended() == 0,
            Err(_) => {
                tally.failed_polls += 1;
                quiet = false;
            }
        }
    }
    quiet
}

/// Writes a few times while a poll walks the tables.
async fn write_during(sim: &Simulator, mut rng: StdRng) {
    for _ in 0..rng.random_range(1..=4) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        let table = TABLES[rng.random_range(0..TABLES.len())];
        sim.random_writes(Some(table), rng.random_range(1..4));
    }
}

/// The upstream's versions, record id -> (stamp, JSON), per table.
type Snapshot = HashMap<&'static str, HashMap<String, (u64, Value)>>;

/// Stops the faults and writes, lets every late write show, polls until a
/// round appends nothing, and returns what the upstream showed then: every
/// version a poller could see. The faults resume afterwards.
async fn quiesce(relay: &mut Relay, sim: &Simulator, tally: &mut Tally) -> Snapshot {
    tally.faults += faults_fired(sim);
    let faults = sim.faults();
    sim.set_faults(Faults::default());
    sim.flush_late();
    let mut quiet = false;
    for _ in 0..100 {
        if poll_all(relay, tally).await {
            quiet = true;
            break;
        }
        // A killed instance's lease runs out before this one polls.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(quiet, "the relay never caught up with a quiet upstream");
    sim.set_faults(faults);
    TABLES
        .iter()
        .map(|&table| {
            let versions = sim
                .state(table)
                .into_iter()
                .filter_map(|r| {
                    let id = r["uuid"].as_str()?.to_string();
                    let stamp = r["update_stamp"].as_u64()?;
                    Some((id, (stamp, r)))
                })
                .collect();
            (table, versions)
        })
        .collect()
}

/// Every version of every snapshot is in the stream, as the upstream served
/// it, and every event carries its own record's id and stamp.
async fn check_versions(ts: &TestStore, snapshots: &[Snapshot], tally: &mut Tally) {
    for table in TABLES {
        let t = Table::new("sim", table);
        let events = all_events(ts.store.as_ref(), &t).await;
        let mut by_version = HashMap::new();
        for e in &events {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(data["uuid"].as_str(), Some(e.record.as_str()), "{t}: {e:?}");
            assert_eq!(data["update_stamp"].as_u64(), Some(e.stamp), "{t}: {e:?}");
            by_version.insert((e.record.clone(), e.stamp), data);
        }
        for snapshot in snapshots {
            for (id, (stamp, json)) in &snapshot[table] {
                let got = by_version.get(&(id.clone(), *stamp));
                assert_eq!(
                    got,
                    Some(json),
                    "{t}: version {id} @ {stamp}, which the upstream showed, is not in the stream as served"
                );
                tally.checked_versions += 1;
            }
        }
    }
}
