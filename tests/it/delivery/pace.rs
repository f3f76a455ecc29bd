//! Delivery at the receiver's pace: many requests in flight but never two
//! of one record, records refused for good holding back nothing else,
//! fenced sends, and the clean-up after a subscription is deleted.

use std::time::{Duration, Instant};

use serde_json::json;
use stamp_relay::{
    config::{DeliveryConfig, Paging},
    delivery::{
        backlog,
        worker::{Now, Step},
    },
    store::Table,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::delivery::subscription;
use crate::harness::delivery::{assert_record_order, subscribe_to, wait_delivered};
use crate::harness::receiver::{Mode, TestReceiver, refused};
use crate::harness::{
    App, ConfigBuilder, Sim, TestStore, all_events, eventually, poll_until_quiet, relay, source,
    upstream, wait_synced,
};
use crate::on_both_stores;

on_both_stores!(
    slow_receiver_gets_many_requests_but_one_per_record,
    refused_records_hold_back_nothing_else,
    a_lost_lease_stops_sends_before_they_start,
    deleting_a_subscription_leaves_nothing_behind,
    the_waiting_retry_limit_pauses_claims_where_it_shows
);

async fn patients(n: usize) -> Sim {
    Sim::start(SimConfig {
        initial: vec![("patients".into(), n)],
        ..SimConfig::default()
    })
    .await
}

fn patients_source(sim: &Sim) -> Vec<stamp_relay::config::SourceConfig> {
    vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)]
}

async fn slow_receiver_gets_many_requests_but_one_per_record(ts: TestStore) {
    let sim = patients(30).await;
    let app = App::spawn(&ts, patients_source(&sim)).await;
    let t = Table::new("sim", "patients");
    // Records change again, so several records have more than one event.
    for _ in 0..2 {
        sim.sim.random_writes(Some("patients"), 15);
    }
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    for (max_in_flight, seed) in [(8u32, 31), (1, 32)] {
        let rx = TestReceiver::start(seed).await;
        rx.set_delay(Duration::from_millis(40));
        let body = json!({"resources": ["sim/patients"], "start": "beginning", "max_in_flight": max_in_flight});
        subscribe_to(&app, &rx, body).await;
        let within = Duration::from_secs(60);
        wait_delivered(ts.store.as_ref(), &rx, std::slice::from_ref(&t), within).await;
        assert_record_order(&rx.events());
        let g = rx.inner.lock().unwrap();
        assert_eq!(g.overlaps, 0, "two requests of one record were out at once");
        assert!(
            g.most_out <= max_in_flight as usize,
            "{} requests out with max_in_flight {max_in_flight}",
            g.most_out
        );
        if max_in_flight > 1 {
            assert!(g.most_out > 1, "never more than one request out");
        }
    }
    app.stop().await;
}

async fn refused_records_hold_back_nothing_else(ts: TestStore) {
    // More records refused than half the claim window (250): before, the
    // waiting ones filled the window and the healthy ones stalled.
    let sim = patients(1000).await;
    let app = App::spawn_with(&ts, patients_source(&sim), |c| {
        c.delivery.retry_schedule = vec![Duration::from_secs(3600)];
    })
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(41).await;
    rx.set_mode(Mode::Refuse(0.4));
    let id = subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning"}),
    )
    .await;
    let events = all_events(ts.store.as_ref(), &t).await;
    let healthy: Vec<String> = events
        .iter()
        .filter(|e| !refused(0.4, &e.record))
        .map(|e| format!("sim:patients:{}:{}", e.record, e.stamp))
        .collect();
    let refused_n = events.len() - healthy.len();
    assert!(refused_n > 300, "only {refused_n} records refused");
    eventually(
        "every event of the healthy records",
        Duration::from_secs(60),
        async || {
            let got: std::collections::HashSet<String> = rx.event_ids().into_iter().collect();
            healthy.iter().all(|h| got.contains(h))
        },
    )
    .await;
    eventually(
        "every refused record to wait for its retry",
        Duration::from_secs(30),
        async || ts.store.waiting_retries(&id, &t).await.unwrap() as usize == refused_n,
    )
    .await;
    assert!(
        rx.events()
            .iter()
            .all(|e| !refused(0.4, e["subject"].as_str().unwrap()))
    );
    app.stop().await;
}

/// `delivery.max_waiting_retries` at 20 and a receiver refusing 40 % of
/// records: once 20 events wait for retries the table claims nothing new,
/// so the claimed entries drain and the stream's tail stays unclaimed. The
/// pause shows in `/metrics`, on the status page and in `stamp-relay status`.
async fn the_waiting_retry_limit_pauses_claims_where_it_shows(ts: TestStore) {
    let sim = patients(1000).await;
    let app = App::spawn_with(&ts, patients_source(&sim), |c| {
        c.delivery.retry_schedule = vec![Duration::from_secs(3600)];
        c.delivery.max_waiting_retries = 20;
    })
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(61).await;
    rx.set_mode(Mode::Refuse(0.4));
    let body = json!({"resources": ["sim/patients"], "start": "beginning"});
    let id = subscribe_to(&app, &rx, body).await;
    let paused = format!(
        r#"stamp_relay_delivery_claims_paused{{subscription="{id}",source="sim",resource="patients"}} 1"#
    );
    // Settled: paused, and everything claimed is either delivered or waits.
    eventually("claiming to pause", Duration::from_secs(60), async || {
        let b = backlog(ts.store.as_ref(), &id, &t).await.unwrap();
        let metrics = app
            .get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics.lines().any(|l| l == paused) && b.waiting >= 20 && b.pending == b.waiting
    })
    .await;
    let top = ts.store.last_id(&t).await.unwrap();
    let position = ts.store.position(&id, &t).await.unwrap().unwrap();
    assert!(
        position < top,
        "claimed up to {position} of {top} despite the limit"
    );
    let html = app.get("/").send().await.unwrap().text().await.unwrap();
    let row = &html[html.find(&format!("data-subscription=\"{id}\"")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains("<span class=bad data-paused>claiming paused on sim/patients</span>"),
        "{row}"
    );
    assert!(html.contains("waiting retries (limit 20)"), "{html}");
    app.stop().await;

    // The CLI reads the same from the store.
    let b = backlog(ts.store.as_ref(), &id, &t).await.unwrap();
    let text = status_cli(&ts, &sim, |d| d.max_waiting_retries = 20);
    let line = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    // id, state, pending, waiting, lag, dead letters, url
    let counts = [b.pending.to_string(), b.waiting.to_string()];
    assert_eq!(cols[2..4], counts, "{line}");
    assert!(
        text.contains("claiming paused on sim/patients: 20 events wait for retries there"),
        "{text}"
    );
    // With the default limit the same backlog is no pause.
    let text = status_cli(&ts, &sim, |_| {});
    assert!(!text.contains("claiming paused"), "{text}");
}

/// `stamp-relay status` on the test's store, with delivery settings tweaked.
fn status_cli(ts: &TestStore, sim: &Sim, delivery: impl FnOnce(&mut DeliveryConfig)) -> String {
    let cfg = ConfigBuilder::on(&ts.config)
        .delivery(delivery)
        .source(upstream("sim", &sim.base_url, &["patients"]))
        .write(&ts.dir.path().join("status.toml"));
    let out = std::process::Command::new(crate::harness::bin())
        .args(["status", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn a_lost_lease_stops_sends_before_they_start(ts: TestStore) {
    let sim = patients(20).await;
    let mut relay = relay(&ts, patients_source(&sim));
    poll_until_quiet(&mut relay, 20).await;
    let t = Table::new("sim", "patients");
    let rx = TestReceiver::start(51).await;
    rx.set_secrets(&["whsec_dGVzdA=="]);
    let sub = subscription("sub_fenced", &rx.url);
    ts.store.put_subscription(&sub).await.unwrap();
    let supervisor = relay.supervisor();
    let (worker, _changes) = supervisor.worker(&sub, &t);
    let lease = t.delivery_lease(&sub.id);
    let ttl = ts.config.lease_ttl;

    // Another instance holds the lease: nothing is claimed or sent.
    assert!(ts.store.lease(&lease, "other", ttl).await.unwrap());
    let mut st = worker.state();
    assert_eq!(
        worker.step(&mut st, Now::current()).await.unwrap(),
        Step::LeaseLost
    );
    assert_eq!(ts.store.position(&sub.id, &t).await.unwrap(), None);

    // Ours: the first requests go out.
    ts.store.release(&lease, "other").await.unwrap();
    assert_eq!(
        worker.step(&mut st, Now::current()).await.unwrap(),
        Step::Busy
    );
    worker.drain(&mut st).await;
    let sent = rx.inner.lock().unwrap().requests;
    assert!(sent > 0);

    // Later, with the lease at its end, another instance has taken it: the
    // step checks before sending and sends nothing more.
    ts.store.release(&lease, &relay.holder).await.unwrap();
    assert!(ts.store.lease(&lease, "other", ttl).await.unwrap());
    let later = Now {
        wall_ms: stamp_relay::events::now_ms(),
        at: Instant::now() + ttl,
    };
    assert_eq!(worker.step(&mut st, later).await.unwrap(), Step::LeaseLost);
    assert_eq!(st.in_flight(), 0);
    assert_eq!(rx.inner.lock().unwrap().requests, sent);
    worker.close(st).await;
}

async fn deleting_a_subscription_leaves_nothing_behind(ts: TestStore) {
    let sim = patients(30).await;
    let app = App::spawn(&ts, patients_source(&sim)).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(61).await;
    // Half the records fail for good: pending entries, dead letters (after
    // the test schedule) and attempts all exist when it is deleted.
    rx.set_mode(Mode::Refuse(0.5));
    let id = subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning"}),
    )
    .await;
    let store = ts.store.as_ref();
    eventually("dead letters", Duration::from_secs(30), async || {
        !store.dead_letters(&id).await.unwrap().is_empty()
    })
    .await;
    let r = app
        .delete(&format!("/v1/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let top = store.last_id(&t).await.unwrap().stamp;
    let clean = async || {
        store.position(&id, &t).await.unwrap().is_none()
            && store.pending(&id, &t).await.unwrap().is_empty()
            && store.dead_letters(&id).await.unwrap().is_empty()
            && store.attempts(&id, 10).await.unwrap().is_empty()
    };
    // A worker still stopping cleans up after itself.
    sim.sim.random_writes(Some("patients"), 10);
    wait_synced(store, &t, &sim.sim).await;
    // Two supervisor rounds (500 ms each): a worker that missed the deletion
    // would have claimed and sent the new writes by then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eventually(
        "the subscription's state to go",
        Duration::from_secs(10),
        clean,
    )
    .await;
    app.stop().await;
    assert!(
        clean().await,
        "the stopped relay left delivery state behind"
    );
    // A worker that had not yet seen the deletion never made its consumer
    // group again, so nothing written after the deletion reached the receiver.
    assert!(
        store.last_id(&t).await.unwrap().stamp > top,
        "new writes were appended"
    );
    let late: Vec<u64> = rx
        .events()
        .iter()
        .filter_map(|e| e["updatestamp"].as_u64())
        .filter(|s| *s > top)
        .collect();
    assert!(
        late.is_empty(),
        "events written after the deletion were sent: {late:?}"
    );
    let lease = t.delivery_lease(&id);
    assert!(
        store
            .lease(&lease, "someone else", Duration::from_secs(5))
            .await
            .unwrap(),
        "the delivery lease is gone"
    );
}

/// A receiver slower than the delivery lease, with two instances: every
/// request is cut off by its timeout, within the lease it was fenced with,
/// and when the receiver speeds up everything arrives in record order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_the_lease() {
    let Some(ts) = TestStore::open(crate::harness::Backend::Redis).await else {
        return;
    };
    let sim = patients(40).await;
    let a = App::spawn(&ts, patients_source(&sim)).await;
    let b = App::spawn(&ts, patients_source(&sim)).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(71).await;
    rx.set_delay(ts.config.lease_ttl * 2);
    let id = subscribe_to(
        &a,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning", "max_in_flight": 4}),
    )
    .await;
    let store = ts.store.as_ref();
    eventually("requests cut off", Duration::from_secs(20), async || {
        store.attempts(&id, 10).await.unwrap().len() >= 4
    })
    .await;
    sim.sim.random_writes(Some("patients"), 20);
    rx.set_delay(Duration::ZERO);
    wait_synced(store, &t, &sim.sim).await;
    wait_delivered(
        store,
        &rx,
        std::slice::from_ref(&t),
        Duration::from_secs(60),
    )
    .await;
    assert_record_order(&rx.events());
    let lease_ms = ts.config.lease_ttl.as_millis() as u64;
    for attempt in store.attempts(&id, 1000).await.unwrap() {
        assert!(
            attempt.latency_ms < lease_ms,
            "a request outlived the lease: {attempt:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}
