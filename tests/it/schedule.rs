//! The scheduler's promises: the request budget of an upstream host holds
//! over every table polling it, and a noisy source (many writes, slow
//! pages) does not hold quiet sources back past their interval.

use std::time::Duration;

use stamp_relay::{
    config::{Paging, SourceConfig},
    store::Target,
};
use stamp_relay_simulator::{Faults, SimConfig};

use crate::harness::{App, Backend, Sim, TestStore, all_events, eventually, source};

const TABLES: [&str; 5] = ["sites", "users", "patients", "assessments", "comments"];

fn named(name: &str, sim: &Sim, interval_ms: u64) -> SourceConfig {
    let mut s = source(&sim.base_url, &TABLES, Paging::Pages, 100);
    s.name = name.into();
    s.poll_interval = Duration::from_millis(interval_ms);
    s
}

fn initial(n: usize) -> Vec<(String, usize)> {
    TABLES.iter().map(|t| (t.to_string(), n)).collect()
}

/// Two sources on one host with ten tables between them, pages slowed so
/// requests overlap: never more in flight than the host's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_budget_holds_over_every_table_on_it() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig {
        initial: initial(20),
        ..SimConfig::default()
    })
    .await;
    sim.sim.set_faults(Faults {
        slow_rate: 1.0,
        slow_ms: 30,
        ..Faults::default()
    });
    let sources = vec![named("a", &sim, 20), named("b", &sim, 20)];
    let app = App::spawn_with(&ts, sources, |c| {
        c.poll.host_max_concurrent = 2;
        c.poll.host_max_per_second = 1000;
    })
    .await;
    eventually(
        "requests overlap up to the budget",
        Duration::from_secs(30),
        async || sim.sim.traffic().max_in_flight >= 2,
    )
    .await;
    let seen = sim.sim.traffic().total;
    eventually("many more requests", Duration::from_secs(60), async || {
        sim.sim.traffic().total >= seen + 100
    })
    .await;
    assert_eq!(
        sim.sim.traffic().max_in_flight,
        2,
        "{:?}",
        sim.sim.traffic()
    );
    app.stop().await;
}

/// A noisy source (ten times the writes, every page slow) beside quiet
/// sources on other hosts: the quiet sources' writes keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_source_does_not_hold_quiet_ones_back() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let noisy = Sim::start(SimConfig {
        initial: initial(300),
        ..SimConfig::default()
    })
    .await;
    noisy.sim.set_faults(Faults {
        slow_rate: 1.0,
        slow_ms: 400,
        ..Faults::default()
    });
    let quiet: Vec<Sim> = futures_util::future::join_all((0..3).map(|_| {
        Sim::start(SimConfig {
            initial: initial(5),
            ..SimConfig::default()
        })
    }))
    .await;
    let mut sources = vec![named("noisy", &noisy, 100)];
    sources.extend(
        quiet
            .iter()
            .enumerate()
            .map(|(i, s)| named(&format!("quiet{i}"), s, 100)),
    );
    // As many polls at once as the noisy source has tables, plus one: its
    // slow polls fill the pool but for one slot the quiet sources share.
    let app = App::spawn_with(&ts, sources, |c| c.poll.max_concurrent = 6).await;
    for round in 0..3 {
        noisy.sim.random_writes(None, 100);
        for (i, sim) in quiet.iter().enumerate() {
            let written = sim.sim.random_writes(Some("patients"), 10);
            let top = written.iter().map(|w| w.stamp).max().unwrap();
            let t = Target::new(format!("quiet{i}"), "patients");
            let what = format!("round {round}: {t} reaches stamp {top}");
            eventually(&what, Duration::from_secs(5), async || {
                all_events(ts.store.as_ref(), &t)
                    .await
                    .last()
                    .is_some_and(|e| e.stamp >= top)
            })
            .await;
        }
    }
    app.stop().await;
}
