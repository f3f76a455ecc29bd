//! The filter fixture the replay and subscription suites share: a synced
//! relay over simulated patients, and a three-clause filter with the same
//! rule in plain Rust to compare against.

use serde_json::{Value, json};
use stamp_relay::{
    config::Paging,
    events::{Event, Op},
    store::Table,
};
use stamp_relay_simulator::{Order, SimConfig};

use super::{App, Sim, TestStore, all_events, source, wait_synced};

/// The three-clause filter of the test, and the same rule in plain Rust.
pub fn three_clauses() -> (String, impl Fn(&Event) -> bool) {
    let filter = json!([
        {"exact": {"data.gender": "female"}},
        {"any": [{"suffix": {"type": ".created"}}, {"suffix": {"type": ".updated"}}]},
        {"not": {"suffix": {"data.room": "A"}}}
    ]);
    let rule = move |e: &Event| {
        let d: Value = serde_json::from_str(&e.data).unwrap();
        d["gender"] == "female"
            && matches!(e.op, Op::Created | Op::Updated)
            && !d["room"].as_str().unwrap().ends_with('A')
    };
    (filter.to_string(), rule)
}

/// A relay over `initial` simulated patients and `writes` changes since,
/// and the stream it holds once synced.
pub async fn synced_patients(
    ts: &TestStore,
    initial: usize,
    writes: usize,
) -> (Sim, App, Vec<Event>) {
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), initial)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(
        ts,
        vec![source(&sim.base_url, &["patients"], Paging::Keyset, 100)],
    )
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim.random_writes(Some("patients"), writes);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let stream = all_events(ts.store.as_ref(), &t).await;
    (sim, app, stream)
}
