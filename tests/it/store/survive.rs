//! Subscriptions made through the API survive a store that loses its data:
//! the relay writes back the ones it knew, with their secrets, and their
//! delivery restarts at the reload's snapshot.

use std::time::Duration;

use serde_json::json;
use stamp_relay::store::Table;

use crate::harness::delivery::{subscribe_to, wait_delivered};
use crate::harness::receiver::TestReceiver;
use crate::harness::wipe::wipe;
use crate::harness::{TestStore, eventually, patients_relay, wait_synced};
use crate::on_both_stores;

on_both_stores!(api_subscriptions_survive_a_store_reset);

async fn api_subscriptions_survive_a_store_reset(ts: TestStore) {
    let (sim, app) = patients_relay(&ts, 5).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(7).await;
    let id = subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning"}),
    )
    .await;
    wait_delivered(
        ts.store.as_ref(),
        &rx,
        std::slice::from_ref(&t),
        Duration::from_secs(20),
    )
    .await;
    let before = rx.events().len();

    wipe(&ts).await;
    eventually(
        "the subscription back",
        Duration::from_secs(20),
        async || {
            let all = app.get_json("/v1/subscriptions").await;
            all["subscriptions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == id.as_str())
        },
    )
    .await;
    // The reload's snapshot reaches the receiver, signed with the old secret.
    eventually(
        "the reload delivered",
        Duration::from_secs(30),
        async || rx.events().len() >= before + 5,
    )
    .await;
    let reloaded = &rx.events()[before..];
    assert!(
        reloaded.iter().all(|e| e["snapshot"] == true),
        "{reloaded:?}"
    );
    assert_eq!(rx.bad_signatures(), 0);
    app.stop().await;
}
