//! The live tail's contract with its clients: a round with nobody listening
//! moves past only what a later client's own catch-up from the store covers,
//! and the next round broadcasts everything after it.

use stamp_relay::{config::Paging, events::StreamId, store::Table, tail};
use stamp_relay_simulator::SimConfig;
use tokio::sync::broadcast;

use crate::harness::{Sim, TestStore, poll_until_quiet, relay, source};
use crate::on_both_stores;

on_both_stores!(a_client_joining_between_rounds_misses_nothing);

async fn a_client_joining_between_rounds_misses_nothing(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 10)],
        ..SimConfig::default()
    })
    .await;
    let mut relay = relay(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
    );
    poll_until_quiet(&mut relay, 20).await;
    let t = Table::new("sim", "patients");
    let src = relay.event_sources()[&t].clone();
    let store = ts.store.as_ref();
    let (sender, first) = broadcast::channel(64);
    drop(first);

    // Nobody listens: the round only notes the top.
    let after = tail::round(store, &src, &sender, StreamId::ZERO).await;
    let top = store.last_id(&t).await.unwrap();
    assert_eq!(after, top);

    // A client joins and catches up from the store by itself...
    let mut rx = sender.subscribe();
    let caught_up = store.read(&t, StreamId::ZERO, 1000).await.unwrap();
    assert_eq!(caught_up.last().map(|e| e.id), Some(top));

    // ...and every later append reaches it through the tail.
    sim.sim.random_writes(Some("patients"), 5);
    poll_until_quiet(&mut relay, 20).await;
    let new = store.read(&t, top, 1000).await.unwrap();
    assert!(!new.is_empty());
    let after = tail::round(store, &src, &sender, after).await;
    assert_eq!(after, new.last().unwrap().id);
    let mut got = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        got.extend(batch.events.iter().map(|l| l.event.id));
    }
    let want: Vec<StreamId> = new.iter().map(|e| e.id).collect();
    assert_eq!(got, want, "every event once, in order");
}
