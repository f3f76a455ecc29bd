//! Delivery follows the consumers' allow-lists (docs/consumers.md): a
//! table a consumer's allow-list no longer allows gets no more deliveries
//! on its existing subscriptions, the subscription names it as
//! `not_allowed`, and delivery goes on from where it stopped once the
//! table is allowed again.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::store::Table;

use crate::harness::delivery::{subscribe_to, wait_delivered};
use crate::harness::receiver::TestReceiver;
use crate::harness::{eventually, patients_relay, wait_synced};
use crate::on_both_stores;

on_both_stores!(narrowing_a_consumer_pauses_its_tables);

fn ids(rx: &TestReceiver) -> HashSet<String> {
    rx.event_ids().into_iter().collect()
}

async fn narrowing_a_consumer_pauses_its_tables(ts: crate::harness::TestStore) {
    let (sim, app) = patients_relay(&ts, 3).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let care = json!({"name": "care", "resources": ["sim/patients"]});
    assert_eq!(
        app.post("/v1/consumers", &care)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let rx = TestReceiver::start(1).await;
    let body = json!({"resources": ["sim/patients"], "start": "beginning", "consumer": "care"});
    let sub = subscribe_to(&app, &rx, body).await;
    let within = Duration::from_secs(20);
    wait_delivered(ts.store.as_ref(), &rx, std::slice::from_ref(&t), within).await;
    let before = ids(&rx);

    let narrower = json!({"resources": ["sim/visits"]});
    let r = app
        .patch("/v1/consumers/care", &narrower)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let shown = app.get_json(&format!("/v1/subscriptions/{sub}")).await;
    assert_eq!(shown["not_allowed"], json!(["sim/patients"]), "{shown}");
    // A subscription made after the change: once its worker delivers, the
    // supervisor has read the narrowed consumer in the same look (it reads
    // the consumers after the subscriptions) and stopped care's worker.
    let control = TestReceiver::start(2).await;
    let body = json!({"resources": ["sim/patients"], "start": "beginning"});
    subscribe_to(&app, &control, body).await;
    wait_delivered(
        ts.store.as_ref(),
        &control,
        std::slice::from_ref(&t),
        within,
    )
    .await;
    sim.sim.random_writes(Some("patients"), 1);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    wait_delivered(
        ts.store.as_ref(),
        &control,
        std::slice::from_ref(&t),
        within,
    )
    .await;
    let new: Vec<String> = ids(&control).difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(ids(&rx), before, "care received a table it may no longer");
    let path = format!("/v1/subscriptions/{sub}/messages?state=scheduled");
    let waiting = app.get_json(&path).await;
    let waiting: Vec<&Value> = waiting["messages"].as_array().unwrap().iter().collect();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["event_id"], new[0].as_str());

    // Allowed again: delivery goes on from its position.
    let wider = json!({"resources": ["sim/patients"]});
    let r = app
        .patch("/v1/consumers/care", &wider)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("care's delivery to resume", within, async || {
        ids(&rx).contains(&new[0])
    })
    .await;
    let shown = app.get_json(&format!("/v1/subscriptions/{sub}")).await;
    assert!(shown.get("not_allowed").is_none(), "{shown}");
    app.stop().await;
}
