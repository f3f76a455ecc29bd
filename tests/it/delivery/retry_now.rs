//! Waiting retries made due now: by `POST /v1/subscriptions/{id}/retry`,
//! and by the receiver itself once it answers 2xx again after an outage,
//! so a receiver back from a minute's outage does not wait out an hour of
//! retry schedule.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::{self as simulator, Change, SimConfig};

use crate::harness::delivery::{assert_record_order, subscribe_to, wait_delivered};
use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{App, ConfigBuilder, Sim, TestStore, source, upstream, wait_for, wait_synced};
use crate::on_both_stores;

on_both_stores!(
    the_retry_route_makes_waiting_retries_due_now,
    a_receiver_back_from_an_outage_pulls_its_retries_forward
);

const HOUR: Duration = Duration::from_secs(3600);

fn patients() -> Table {
    Table::new("sim", "patients")
}

/// A relay whose retries wait an hour, a receiver answering 500, and a
/// subscription whose three patients (two versions of one) all wait for
/// a retry: what each test starts from.
async fn outage(ts: &TestStore) -> (Sim, App, TestReceiver, String) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 3)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 100);
    let app = App::spawn_with(ts, vec![src], |c| c.delivery.retry_schedule = vec![HOUR; 3]).await;
    wait_synced(ts.store.as_ref(), &patients(), &sim.sim).await;
    let rx = TestReceiver::start(1).await;
    rx.set_mode(Mode::Flaky(1.0));
    let body = json!({"resources": ["sim/patients"], "start": "beginning"});
    let id = subscribe_to(&app, &rx, body).await;
    let waiting = async || ts.store.waiting_retries(&id, &patients()).await.unwrap();
    wait_for(
        "three retries waiting",
        Duration::from_secs(20),
        waiting,
        |n| *n == 3,
    )
    .await;
    let first = sim.sim.state("patients")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    sim.sim
        .apply(Change::new("patients", simulator::Op::Update).with_id(&first))
        .unwrap();
    wait_synced(ts.store.as_ref(), &patients(), &sim.sim).await;
    rx.set_mode(Mode::Ok);
    (sim, app, rx, id)
}

/// An hour's wait ends at the route: every waiting event goes at once,
/// still in stamp order per record.
async fn the_retry_route_makes_waiting_retries_due_now(ts: TestStore) {
    let (sim, app, rx, id) = outage(&ts).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.events().is_empty(), "sent before its retry time");
    // Said on the status page and by `stamp-relay status`.
    let page = app.get("/").send().await.unwrap().text().await.unwrap();
    let note = page.split("data-failure>").nth(1).unwrap_or_default();
    assert!(note.starts_with("last failure "), "{page}");
    assert!(
        note.contains("on sim/patients: HTTP 500; next attempt in "),
        "{note}"
    );
    let cfg = ConfigBuilder::on(&ts.config)
        .source(upstream("sim", &sim.base_url, &["patients"]))
        .write(&ts.dir.path().join("relay.toml"));
    let out = std::process::Command::new(crate::harness::bin())
        .args(["status", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on sim/patients: HTTP 500; next attempt in "),
        "{text}"
    );
    let r = app
        .post(&format!("/v1/subscriptions/{id}/retry"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["due_now"], 3, "{v}");
    wait_delivered(
        ts.store.as_ref(),
        &rx,
        &[patients()],
        Duration::from_secs(10),
    )
    .await;
    assert_record_order(&rx.events());
    let missing = app
        .post("/v1/subscriptions/sub_none/retry", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    drop(sim);
    app.stop().await;
}

/// The first 2xx after failures of several records (a new patient's
/// event) makes the waiting ones due: nothing waits out the hour.
async fn a_receiver_back_from_an_outage_pulls_its_retries_forward(ts: TestStore) {
    let (sim, app, rx, id) = outage(&ts).await;
    // An outage: nothing succeeded for longer than a flapping receiver's gaps.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    sim.sim
        .apply(Change::new("patients", simulator::Op::Create).with_id("new-patient"))
        .unwrap();
    wait_synced(ts.store.as_ref(), &patients(), &sim.sim).await;
    wait_delivered(
        ts.store.as_ref(),
        &rx,
        &[patients()],
        Duration::from_secs(10),
    )
    .await;
    assert_record_order(&rx.events());
    let pending = ts.store.pending(&id, &patients()).await.unwrap();
    assert!(pending.is_empty(), "{pending:?}");
    app.stop().await;
}
