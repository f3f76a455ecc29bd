//! The scheduler's promises: the request budget of an upstream host holds
//! over every table polling it, a 429 holds back its host only, and a
//! noisy source (many writes, slow pages) does not hold quiet sources back
//! past their interval.

use std::time::Duration;

use stamp_relay::{
    config::{Paging, SourceConfig},
    store::Table,
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

/// Two sources on two hosts (ports); one answers every request 429 with
/// `Retry-After: 1`: its host is held back, the other keeps polling at its
/// interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_host_holds_back_only_itself() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let limited = Sim::start(SimConfig {
        initial: initial(5),
        ..SimConfig::default()
    })
    .await;
    let healthy = Sim::start(SimConfig {
        initial: initial(5),
        ..SimConfig::default()
    })
    .await;
    limited.sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        ..Faults::default()
    });
    let sources = vec![
        named("limited", &limited, 100),
        named("healthy", &healthy, 100),
    ];
    let app = App::spawn(&ts, sources).await;
    eventually("both hosts polled", Duration::from_secs(30), async || {
        limited.sim.traffic().total > 0 && healthy.sim.traffic().total > 0
    })
    .await;
    let (l0, h0) = (limited.sim.traffic().total, healthy.sim.traffic().total);
    // Held back a second after each 429: a few seconds for ten requests.
    eventually(
        "more requests to the rate-limited host",
        Duration::from_secs(60),
        async || limited.sim.traffic().total >= l0 + 10,
    )
    .await;
    let (l1, h1) = (limited.sim.traffic().total, healthy.sim.traffic().total);
    // Five tables every 100 ms: some forty requests a second, against
    // about five while the other host is held back.
    assert!(
        h1 - h0 >= 3 * (l1 - l0),
        "the healthy host got {} requests while the rate-limited one got {}",
        h1 - h0,
        l1 - l0
    );
    let t = Table::new("healthy", "patients");
    let written = healthy.sim.random_writes(Some("patients"), 3);
    let top = written.iter().map(|w| w.stamp).max().unwrap();
    eventually(
        "the healthy source's write lands",
        Duration::from_secs(10),
        async || {
            all_events(ts.store.as_ref(), &t)
                .await
                .last()
                .is_some_and(|e| e.stamp >= top)
        },
    )
    .await;
    app.stop().await;
}

/// A noisy source (ten times the writes, every page slow, small pages)
/// beside quiet sources on other hosts: each round, every quiet source's
/// write lands before the noisy source's walk of its own writes ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_source_does_not_hold_quiet_ones_back() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let noisy = Sim::start(SimConfig {
        initial: initial(20),
        ..SimConfig::default()
    })
    .await;
    let quiet: Vec<Sim> = futures_util::future::join_all((0..3).map(|_| {
        Sim::start(SimConfig {
            initial: initial(5),
            ..SimConfig::default()
        })
    }))
    .await;
    // Pages of ten: each round's 100 writes are a walk of several slow
    // pages per table.
    let mut sources = vec![SourceConfig {
        page_size: 10,
        ..named("noisy", &noisy, 100)
    }];
    sources.extend(
        quiet
            .iter()
            .enumerate()
            .map(|(i, s)| named(&format!("quiet{i}"), s, 100)),
    );
    // As many polls at once as the noisy source has tables, plus one: its
    // slow polls fill the pool but for one slot the quiet sources share.
    let app = App::spawn_with(&ts, sources, |c| c.poll.max_concurrent = 6).await;
    let loaded = Table::new("noisy", "patients");
    eventually(
        "the noisy source loaded",
        Duration::from_secs(60),
        async || all_events(ts.store.as_ref(), &loaded).await.len() >= 20,
    )
    .await;
    noisy.sim.set_faults(Faults {
        slow_rate: 1.0,
        slow_ms: 700,
        ..Faults::default()
    });
    for round in 0..3 {
        let noisy_tops = tops(&noisy.sim.random_writes(None, 100));
        let quiet_tops: Vec<(Table, u64)> = quiet
            .iter()
            .enumerate()
            .map(|(i, sim)| {
                let written = sim.sim.random_writes(Some("patients"), 10);
                let top = written.iter().map(|w| w.stamp).max().unwrap();
                (Table::new(format!("quiet{i}"), "patients"), top)
            })
            .collect();
        let what = format!("round {round}: the quiet writes land");
        eventually(&what, Duration::from_secs(30), async || {
            reached(&ts, &quiet_tops).await
        })
        .await;
        let noisy_tops: Vec<(Table, u64)> = noisy_tops
            .into_iter()
            .map(|(r, top)| (Table::new("noisy", r), top))
            .collect();
        assert!(
            !reached(&ts, &noisy_tops).await,
            "round {round}: the noisy walk ended before the quiet writes landed"
        );
        eventually("the noisy walk ends", Duration::from_secs(60), async || {
            reached(&ts, &noisy_tops).await
        })
        .await;
    }
    app.stop().await;
}

/// The highest stamp written to each table.
fn tops(written: &[stamp_relay_simulator::Applied]) -> Vec<(String, u64)> {
    let mut tops = std::collections::BTreeMap::new();
    for w in written {
        let top = tops.entry(w.table.clone()).or_insert(0);
        *top = w.stamp.max(*top);
    }
    tops.into_iter().collect()
}

/// Whether every stream holds its write.
async fn reached(ts: &TestStore, tops: &[(Table, u64)]) -> bool {
    for (t, top) in tops {
        let last = all_events(ts.store.as_ref(), t)
            .await
            .last()
            .map(|e| e.stamp);
        if last.is_none_or(|s| s < *top) {
            return false;
        }
    }
    true
}
