//! When a table is first due after a start: a table never loaded at once,
//! a table polled before at its last poll's end plus its interval, so a
//! restart neither polls every table at once nor delays them by an
//! interval.

use std::{collections::BTreeMap, time::Duration};

use stamp_relay::{
    config::{Paging, SourceConfig},
    events::now_ms,
    store::Table,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::{App, Sim, TestStore, eventually, source};
use crate::on_both_stores;

const TABLES: [&str; 5] = ["sites", "users", "patients", "assessments", "comments"];

/// Long enough that a first poll spread over it (or an interval added at
/// the restart) tells apart from one due at once.
const INTERVAL: Duration = Duration::from_secs(20);

fn named(name: &str, sim: &Sim) -> SourceConfig {
    let mut s = source(&sim.base_url, &TABLES, Paging::Pages, 100);
    s.name = name.into();
    s.poll_interval = INTERVAL;
    s
}

/// The end (unix ms) of each of `source`'s tables' last successful poll.
async fn polled(ts: &TestStore, source: &str) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for r in TABLES {
        let status = ts.store.poll_status(&Table::new(source, r)).await.unwrap();
        if let Some(s) = status.filter(|s| s.ok_ms.is_some()) {
            out.insert(r, s.finished_ms);
        }
    }
    out
}

on_both_stores!(a_restart_polls_again_at_the_last_poll_plus_the_interval);

async fn a_restart_polls_again_at_the_last_poll_plus_the_interval(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: TABLES.iter().map(|t| (t.to_string(), 5)).collect(),
        ..SimConfig::default()
    })
    .await;
    let started = now_ms();
    // One instance, restarted under its own name.
    let same = |c: &mut stamp_relay::config::Config| c.store.instance_id = "steady".into();
    let app = App::spawn_with(&ts, vec![named("a", &sim)], same).await;
    eventually("every table loaded", INTERVAL, async || {
        polled(&ts, "a").await.len() == TABLES.len()
    })
    .await;
    let first = polled(&ts, "a").await;
    for (r, at) in &first {
        // Spread over the interval, all five would land this early with
        // odds of 1 in 1,000.
        assert!(
            *at < started + 5_000,
            "{r}: first polled {} ms after the start",
            at - started
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.stop().await;
    assert_eq!(polled(&ts, "a").await, first, "no poll after the first");
    // The same store again, with a source never loaded beside.
    let other = Sim::start(SimConfig {
        initial: TABLES.iter().map(|t| (t.to_string(), 5)).collect(),
        ..SimConfig::default()
    })
    .await;
    let restarted = now_ms();
    let app = App::spawn_with(&ts, vec![named("a", &sim), named("b", &other)], same).await;
    eventually("the new source loaded", INTERVAL, async || {
        polled(&ts, "b").await.len() == TABLES.len()
    })
    .await;
    for (r, at) in polled(&ts, "b").await {
        assert!(
            at < restarted + 5_000,
            "b/{r}: first polled {} ms after the restart",
            at - restarted
        );
    }
    eventually(
        "the tables polled before poll again",
        INTERVAL * 2,
        async || {
            let now = polled(&ts, "a").await;
            first
                .iter()
                .all(|(r, at)| now.get(r).is_some_and(|n| n > at))
        },
    )
    .await;
    let again = polled(&ts, "a").await;
    let due = INTERVAL.as_millis() as u64;
    for (r, at) in &first {
        let next = again[r];
        assert!(
            next + 50 >= at + due,
            "{r}: polled again {} ms after its last poll, before its interval",
            next - at
        );
        assert!(
            next < restarted + due,
            "{r}: polled again {} ms after the restart, an interval later",
            next - restarted
        );
    }
    app.stop().await;
}
