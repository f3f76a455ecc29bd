//! Fencing at the store, readiness when a part is down, and a failing
//! poll's error on every surface that reports it.

use crate::harness::record;
use std::time::Duration;

use serde_json::Value;
use stamp_relay::{
    config::Paging,
    store::{AppendBatch, Refusal, Table},
};
use stamp_relay_simulator::{Faults, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    App, Backend, ConfigBuilder, Sim, TestStore, bin, eventually, relay, source, upstream,
    wait_synced,
};
use crate::on_both_stores;

on_both_stores!(a_paused_instance_cannot_append_after_its_lease_was_taken);

/// Instance A takes the lease and pauses past its TTL; B takes the lease;
/// A's append (with A's name) is refused by the store itself, and B's lands.
async fn a_paused_instance_cannot_append_after_its_lease_was_taken(ts: TestStore) {
    let store = ts.store.as_ref();
    let t = Table::new("sim", "patients");
    let epoch = store.init_epoch(&t, "epoch-1").await.unwrap();
    let ttl = Duration::from_millis(200);
    assert!(store.lease(&t, "instance-a", ttl).await.unwrap());
    let batch = |holder, records| AppendBatch {
        holder,
        epoch: &epoch,
        snapshot: true,
        observed: 1,
        records,
        rebase: false,
    };
    let first = [record("r1", 1)];
    assert_eq!(
        store
            .append(&t, batch("instance-a", &first))
            .await
            .unwrap()
            .created,
        1
    );
    // A pauses; B gets the lease only once A's has expired.
    assert!(!store.lease(&t, "instance-b", ttl).await.unwrap());
    eventually(
        "B to take the expired lease",
        Duration::from_secs(10),
        async || store.lease(&t, "instance-b", ttl).await.unwrap(),
    )
    .await;
    let late = [record("r2", 2)];
    let err = store
        .append(&t, batch("instance-a", &late))
        .await
        .unwrap_err();
    assert_eq!(err.refusal(), Some(Refusal::LeaseLost), "{err}");
    assert_eq!(store.stream_len(&t).await.unwrap(), 1);
    assert_eq!(store.index_entry(&t, "r2").await.unwrap(), None);
    let outcome = store.append(&t, batch("instance-b", &late)).await.unwrap();
    assert_eq!(outcome.created, 1);
    assert_eq!(store.stream_len(&t).await.unwrap(), 2);
}

async fn readyz(app: &App) -> (u16, Value) {
    let r = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `/readyz` answers 503 naming the store while Redis is down, and 200 again
/// once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_store_is_down() {
    let Some(mut ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig::default()).await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    )
    .await;
    assert_eq!(readyz(&app).await.0, 200);
    ts.redis.as_mut().unwrap().kill();
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("store"), "{body}");
    ts.redis.as_mut().unwrap().restart();
    eventually("ready again", Duration::from_secs(20), async || {
        readyz(&app).await.0 == 200
    })
    .await;
    app.stop().await;
}

/// A poll loop that stopped makes `/readyz` answer 503 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_a_poll_loop_stopped() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig::default()).await;
    let mut relay = relay(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    );
    let cancel = CancellationToken::new();
    let state = relay.api_state(&cancel);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stamp_relay::api::serve(listener, state, cancel.clone()));
    let stop_polling = CancellationToken::new();
    let poll_loop = tokio::spawn(relay.pollers.remove(0).run(stop_polling.clone()));
    let ready = async || {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    eventually("ready", Duration::from_secs(20), async || {
        ready().await.0 == 200
    })
    .await;
    stop_polling.cancel();
    poll_loop.await.unwrap();
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("poller:sim/patients"), "{body}");
    cancel.cancel();
}

/// A failing poll's error shows on `GET /v1/resources`, on the status page
/// and in `stamp-relay status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_error_shows_on_the_api_the_status_page_and_the_cli() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 5)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    )
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    // A status no client retries: every poll from now on fails with it.
    sim.sim.set_faults(Faults {
        fail_next: 1_000_000,
        fail_status: 418,
        ..Faults::default()
    });
    let mut error = String::new();
    eventually("the poll to fail", Duration::from_secs(20), async || {
        let r = app.get_json("/v1/resources").await;
        error = r["resources"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !error.is_empty()
    })
    .await;
    assert!(error.contains("418"), "{error}");
    let page = app.get("/").send().await.unwrap().text().await.unwrap();
    let row = &page[page.find("data-target=\"sim/patients\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("class=bad") && row.contains("418"), "{row}");
    app.stop().await;

    let cfg = ConfigBuilder::on(&ts.config)
        .source(upstream("sim", &sim.base_url, &["patients"]))
        .write(&ts.dir.path().join("status.toml"));
    let out = std::process::Command::new(bin())
        .args(["status", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("sim/patients"))
        .unwrap_or_else(|| panic!("no sim/patients row in\n{stdout}"));
    assert!(line.contains("failing:") && line.contains("418"), "{line}");
}
