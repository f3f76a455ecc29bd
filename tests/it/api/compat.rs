//! The compatible read API (`/compat/{source}/api/{resource}/?sync=N`,
//! src/api/compat.rs) answers like the upstream: the seed's example, and a
//! page-by-page walk after a chaotic run compared record by record with
//! the simulator's own answer; a walk is a snapshot while appends land.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, value::RawValue};
use stamp_relay::{
    config::{Paging, SourceConfig},
    store::Table,
};
use stamp_relay_simulator::{self as simulator, Change, Faults, Order, SimConfig};

use crate::harness::compat::{field, page, stamp_of, walk};
use crate::harness::{App, Sim, TestStore, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(
    the_seed_example_through_the_relay,
    a_walk_after_chaos_matches_the_simulator,
    a_walk_is_a_snapshot_while_appends_land
);

/// The records as the simulator itself answers `?sync=N` (uuid -> raw bytes).
async fn simulator_answer(sim: &Sim, table: &str, sync: u64) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut next = Some(format!(
        "{}/{table}/?sync={sync}&page_size=1000",
        sim.base_url
    ));
    while let Some(url) = next {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let v: BTreeMap<String, Box<RawValue>> = serde_json::from_str(&text).unwrap();
        let results: Vec<&RawValue> = serde_json::from_str(v["results"].get()).unwrap();
        for r in results {
            let id = field(r.get(), "uuid").as_str().unwrap().to_string();
            assert!(out.insert(id, r.get().to_string()).is_none());
        }
        next = serde_json::from_str(v["next"].get()).unwrap();
    }
    out
}

fn compat(app: &App, rest: &str) -> String {
    format!("{}/compat/sim/api/patients/{rest}", app.base)
}

fn by_id(results: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in results {
        let id = field(r, "uuid").as_str().unwrap().to_string();
        assert!(out.insert(id, r.clone()).is_none(), "a record twice");
    }
    out
}

fn assert_ascending(results: &[String]) {
    let stamps: Vec<u64> = results.iter().map(|r| stamp_of(r)).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

async fn the_seed_example_through_the_relay(ts: TestStore) {
    let sim = Sim::start(SimConfig::default()).await;
    let create = |id: &str| {
        sim.sim
            .apply(Change::new("patients", simulator::Op::Create).with_id(id))
            .unwrap()
    };
    for id in ["A", "B", "C"] {
        create(id);
    }
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    )
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let b = sim
        .sim
        .apply(Change::new("patients", simulator::Op::Update).with_id("B"))
        .unwrap();
    assert_eq!((b.stamp, create("D").stamp), (4, 5));
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;

    let http = reqwest::Client::new();
    let p = page(&http, &compat(&app, "?sync=3")).await;
    let ids: Vec<(Value, u64)> = p
        .results
        .iter()
        .map(|r| (field(r, "uuid"), stamp_of(r)))
        .collect();
    assert_eq!(ids, [("B".into(), 4), ("D".into(), 5)]);
    assert_eq!((p.count, p.next, p.previous), (2, None, None));
    let upstream = simulator_answer(&sim, "patients", 3).await;
    assert_eq!(by_id(&p.results), upstream, "the upstream's bytes");

    // Page by page from 0: stamp order (A 1, C 3, B 4, D 5), links back to
    // the relay with the snapshot pinned.
    let p1 = page(&http, &compat(&app, "?sync=0&page_size=2")).await;
    assert_eq!(p1.count, 4);
    let order: Vec<Value> = p1.results.iter().map(|r| field(r, "uuid")).collect();
    assert_eq!(order, ["A", "C"]);
    let host = app.base.trim_start_matches("http://");
    assert_eq!(
        p1.next.as_deref(),
        Some(
            format!(
                "http://{host}/compat/sim/api/patients/?sync=0&page=2&page_size=2&until=5&count=4&after=3"
            )
            .as_str()
        )
    );
    let p2 = page(&http, p1.next.as_deref().unwrap()).await;
    let order: Vec<Value> = p2.results.iter().map(|r| field(r, "uuid")).collect();
    assert_eq!(order, ["B", "D"]);
    assert_eq!(p2.next, None);
    let back = page(&http, p2.previous.as_deref().unwrap()).await;
    assert_eq!(back.results, p1.results);

    // A bearer token works too; a page past the end is the upstream's 404.
    let r = app
        .get("/compat/sim/api/patients/?sync=0&page=9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(compat(&app, "?sync=0")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token, no records");
    app.stop().await;
}

/// The relay's configuration for a chaotic upstream.
fn chaotic_source(sim: &Sim) -> SourceConfig {
    let mut s = source(&sim.base_url, &["patients"], Paging::Pages, 25);
    s.max_page_size = 40;
    s
}

async fn a_walk_after_chaos_matches_the_simulator(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: crate::harness::seeds() + 13,
        order: Order::Random,
        initial: vec![("patients".into(), 150)],
        stamp_gap_rate: 0.3,
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(&ts, vec![chaotic_source(&sim)]).await;
    let t = Table::new("sim", "patients");
    sim.sim.set_faults(Faults {
        error_rate: 0.1,
        truncate_rate: 0.05,
        writes_per_page: 1,
        edits_per_page: 1,
        ..Faults::default()
    });
    for _ in 0..10 {
        sim.sim.random_writes(Some("patients"), 20);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    sim.sim.set_faults(Faults::default());
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;

    let http = reqwest::Client::new();
    let top = sim
        .sim
        .state("patients")
        .iter()
        .filter_map(|r| r["update_stamp"].as_u64())
        .max()
        .unwrap();
    for sync in [0, top / 2] {
        // page_size above the cap: pages of 40, like the upstream's.
        let (results, _) = walk(&http, &compat(&app, &format!("?sync={sync}&page_size=500"))).await;
        assert_ascending(&results);
        let upstream = simulator_answer(&sim, "patients", sync).await;
        assert!(!upstream.is_empty());
        assert_eq!(by_id(&results), upstream, "sync={sync}: record by record");
        let first = page(&http, &compat(&app, &format!("?sync={sync}&page_size=500"))).await;
        assert_eq!(first.results.len(), 40.min(upstream.len()));
        assert_eq!(first.count as usize, upstream.len());
    }
    app.stop().await;
}

async fn a_walk_is_a_snapshot_while_appends_land(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: crate::harness::seeds() + 14,
        initial: vec![("patients".into(), 60)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(&ts, vec![chaotic_source(&sim)]).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let before = simulator_answer(&sim, "patients", 0).await;

    let http = reqwest::Client::new();
    let first = page(&http, &compat(&app, "?sync=0&page_size=10")).await;
    let mut results = first.results.clone();
    let mut next = first.next.clone();
    // Writes land under the walk: updates of records on every page, new ones.
    let changed: HashSet<String> = sim
        .sim
        .random_writes(Some("patients"), 30)
        .iter()
        .map(|w| w.id.clone())
        .collect();
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    while let Some(url) = next {
        let p = page(&http, &url).await;
        results.extend(p.results);
        next = p.next;
    }
    assert_ascending(&results);
    let got = by_id(&results);
    // Nothing unchanged is skipped and nothing is repeated; a record written
    // meanwhile is in it at its old version (read before) or left it.
    for (id, raw) in &before {
        if !changed.contains(id) {
            assert_eq!(got.get(id), Some(raw), "{id} was skipped by the walk");
        } else if let Some(g) = got.get(id) {
            assert_eq!(g, raw, "{id}: only the snapshot's version");
        }
    }
    assert!(
        got.keys().all(|id| before.contains_key(id)),
        "only the snapshot's records"
    );
    app.stop().await;
}
