//! `/metrics` parses as Prometheus text and its counters match what happened.

use std::{collections::HashMap, time::Duration};

use serde_json::json;
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::{Faults, SimConfig};

use crate::harness::metrics::{parse, scrape};
use crate::harness::receiver::TestReceiver;
use crate::harness::scripted::Scripted;
use crate::harness::{
    App, Backend, READ_TOKEN, Sim, TestStore, eventually, patients_relay, source, wait_synced,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_happened() {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 25)],
        ..SimConfig::default()
    })
    .await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 10)],
    )
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(41).await;
    let created: serde_json::Value = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": rx.url, "resources": ["*"], "start": "beginning"}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    rx.set_secrets(&[created["secret"].as_str().unwrap()]);
    eventually("25 deliveries", Duration::from_secs(20), async || {
        rx.event_ids().len() >= 25
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let anon = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = parse(&r.text().await.unwrap());
    let last = ts.store.last_id(&t).await.unwrap();
    assert_eq!(
        m[r#"stamp_relay_cursor_stamp{source="sim",resource="patients"}"#],
        last.stamp as f64
    );
    // Records the load finds archived are `deleted` (src/events.rs).
    let appended = |op: &str| {
        let key = format!(
            r#"stamp_relay_events_appended_total{{source="sim",resource="patients",op="{op}"}}"#
        );
        m.get(&key).copied().unwrap_or(0.0)
    };
    assert!(appended("created") > 0.0);
    assert_eq!(appended("created") + appended("deleted"), 25.0);
    let requests = rx.inner.lock().unwrap().requests as f64;
    let delivered = format!(
        r#"stamp_relay_delivery_attempts_total{{subscription="{id}",outcome="delivered"}}"#
    );
    assert_eq!(m[&delivered], requests);
    assert_eq!(
        m[&format!(r#"stamp_relay_subscription_disabled{{subscription="{id}"}}"#)],
        0.0
    );
    assert_eq!(
        m[&format!(r#"stamp_relay_delivery_dead_letters{{subscription="{id}"}}"#)],
        0.0
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("stamp_relay_poll_duration_seconds_bucket"))
    );
    assert_eq!(m["stamp_relay_live_stream_clients"], 0.0);
    app.stop().await;
}

/// The sum of every series of `name` (all label sets).
fn total(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

async fn metric(app: &App, name: &str) -> f64 {
    total(&scrape(app).await, name)
}

/// What goes wrong is counted too: failed polls, page walks, rejects,
/// trimmed events, throttled and failed deliveries, the pending and
/// waiting-retry gauges while a receiver fails, and a live client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_failures_trims_and_gauges() {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 20)],
        faults: Faults {
            fail_next: 1,
            fail_status: 418,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    sim.sim
        .add_raw("patients", json!({"name": "no id", "update_stamp": 3}))
        .unwrap();
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let app = App::spawn_with(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 10)],
        |c| {
            c.store.retention.max_events = Some(10);
            c.store.retention.interval = Duration::from_millis(100);
            c.delivery.retry_schedule = vec![Duration::from_millis(200); 20];
        },
    )
    .await;
    let app = &app;
    eventually("a trim", Duration::from_secs(20), async || {
        metric(app, "stamp_relay_events_trimmed_total").await >= 10.0
    })
    .await;
    assert!(metric(app, "stamp_relay_upstream_errors_total").await >= 1.0);
    assert!(metric(app, "stamp_relay_page_walks_total").await >= 2.0);
    assert_eq!(metric(app, "stamp_relay_records_rejected_total").await, 1.0);

    deliveries_to_a_failing_receiver(app, &sim).await;
    live_client_gauge(app).await;
}

/// Throttled then failed answers: counted by outcome, with entries pending
/// and waiting for a retry until the receiver recovers.
async fn deliveries_to_a_failing_receiver(app: &App, sim: &Sim) {
    let rx = Scripted::start((503, None, String::new())).await;
    app.post_json(
        "/v1/subscriptions",
        &json!({"url": rx.url, "resources": ["*"]}),
    )
    .await;
    sim.sim.random_writes(Some("patients"), 5);
    eventually(
        "throttled with retries waiting",
        Duration::from_secs(20),
        async || {
            metric(app, "stamp_relay_delivery_attempts_total").await > 0.0
                && metric(app, "stamp_relay_delivery_waiting_retry").await > 0.0
                && metric(app, "stamp_relay_delivery_pending").await > 0.0
        },
    )
    .await;
    let throttled = scrape(app).await;
    assert!(
        throttled
            .iter()
            .any(|(k, v)| k.contains("outcome=\"throttled\"") && *v > 0.0)
    );
    *rx.reply.lock().unwrap() = (500, None, String::new());
    eventually("a failed attempt", Duration::from_secs(20), async || {
        scrape(app)
            .await
            .iter()
            .any(|(k, v)| k.contains("outcome=\"failed\"") && *v > 0.0)
    })
    .await;
    *rx.reply.lock().unwrap() = (204, None, String::new());
    eventually("nothing pending", Duration::from_secs(20), async || {
        metric(app, "stamp_relay_delivery_pending").await == 0.0
            && metric(app, "stamp_relay_delivery_waiting_retry").await == 0.0
    })
    .await;
}

/// The live-clients gauge counts a connected client, and drops with it.
async fn live_client_gauge(app: &App) {
    let live = app
        .get("/v1/resources/sim/patients/events")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    eventually("one live client", Duration::from_secs(10), async || {
        metric(app, "stamp_relay_live_stream_clients").await == 1.0
    })
    .await;
    drop(live);
    eventually("no live client", Duration::from_secs(10), async || {
        metric(app, "stamp_relay_live_stream_clients").await == 0.0
    })
    .await;
}

crate::on_both_stores!(a_deleted_subscription_leaves_no_series);

/// Deleting a subscription removes its series from `/metrics`: gauges and
/// counters of a subscription that no longer exists mislead dashboards
/// and alerts (a dead-letter alert that never clears).
async fn a_deleted_subscription_leaves_no_series(ts: TestStore) {
    let (_sim, app) = patients_relay(&ts, 5).await;
    let rx = Scripted::start((204, None, String::new())).await;
    let body = json!({"url": rx.url, "resources": ["*"], "start": "beginning"});
    let id = app.post_json("/v1/subscriptions", &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let label = format!("subscription=\"{id}\"");
    let scrape = async || {
        app.get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually(
        "its attempts counted",
        Duration::from_secs(20),
        async || {
            scrape().await.contains(&format!(
                "stamp_relay_delivery_attempts_total{{{label},outcome=\"delivered\"}}"
            ))
        },
    )
    .await;
    let r = app
        .delete(&format!("/v1/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually("its series gone", Duration::from_secs(10), async || {
        !scrape().await.contains(&label)
    })
    .await;
    app.stop().await;
}
