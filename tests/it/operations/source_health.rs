//! Health per table and source (src/health.rs): injected errors degrade a
//! table and then fail it, a 401 gives `auth_failed`, a good poll brings it
//! back, and every transition is counted and appended to `_relay/health`,
//! where replay and a webhook subscription read it like any other table.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::{Faults, SimConfig};

use crate::harness::delivery::subscribe_to;
use crate::harness::metrics::scrape;
use crate::harness::receiver::TestReceiver;
use crate::harness::{App, Sim, TestStore, eventually, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(errors_and_refused_credentials_move_health_and_every_move_is_an_event);

/// The table's health state in `GET /v1/resources`.
async fn state(app: &App) -> String {
    let r = app.get_json("/v1/resources").await;
    r["resources"][0]["health"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_state(app: &App, want: &str) {
    eventually(
        &format!("health {want}"),
        Duration::from_secs(20),
        async || state(app).await == want,
    )
    .await;
}

/// The types of the events of `_relay/health`, by replay.
async fn replayed(app: &App) -> Vec<Value> {
    let page = app
        .get_json("/v1/resources/_relay/health/events?limit=1000")
        .await;
    page["events"].as_array().cloned().unwrap_or_default()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn errors_and_refused_credentials_move_health_and_every_move_is_an_event(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 5)],
        ..SimConfig::default()
    })
    .await;
    let src = stamp_relay::config::SourceConfig {
        poll_interval: Duration::from_millis(200),
        failing_after_intervals: 3,
        ..source(&sim.base_url, &["patients"], Paging::Pages, 100)
    };
    let app = App::spawn(&ts, vec![src]).await;
    let rx = TestReceiver::start(7).await;
    let body = json!({"resources": ["_relay/health"], "start": "beginning"});
    subscribe_to(&app, &rx, body).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    wait_state(&app, "healthy").await;

    // 418 is not retried: each poll fails at once, first within the
    // failing window (degraded), then past it (failing).
    let fail = |status| Faults {
        fail_next: 1_000_000,
        fail_status: status,
        ..Faults::default()
    };
    sim.sim.set_faults(fail(418));
    wait_state(&app, "failing").await;
    sim.sim.set_faults(fail(401));
    wait_state(&app, "auth_failed").await;
    // Readiness is about the relay, never an upstream's health.
    let ready = app.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 200);
    sim.sim.set_faults(Faults::default());
    wait_state(&app, "healthy").await;
    let r = app.get_json("/v1/resources").await;
    let health = &r["resources"][0]["health"];
    assert!(health["since"].as_u64().unwrap() > 0, "{health}");
    assert!(health["next_attempt"].as_u64().unwrap() > 0, "{health}");
    // A paused source's tables say so; resumed, the next poll ends it.
    app.topology.set_paused("sim", true).unwrap();
    wait_state(&app, "paused").await;
    app.topology.set_paused("sim", false).unwrap();
    wait_state(&app, "healthy").await;

    let expected = [
        "degraded",
        "failing",
        "auth_failed",
        "healthy",
        "paused",
        "healthy",
    ];
    let want: Vec<String> = expected
        .iter()
        .flat_map(|s| {
            [
                format!("io.stamp-relay.table.{s}"),
                format!("io.stamp-relay.source.{s}"),
            ]
        })
        .collect();
    let mut events = Vec::new();
    eventually(
        "every transition replayed",
        Duration::from_secs(20),
        async || {
            events = replayed(&app).await;
            events.len() >= want.len()
        },
    )
    .await;
    assert_eq!(types(&events), want);
    let first = &events[0];
    assert_eq!(first["subject"], "sim/patients");
    assert_eq!(first["data"]["from"], "healthy");
    assert_eq!(first["data"]["state"], "degraded");
    assert!(
        first["data"]["reason"].as_str().unwrap().contains("418"),
        "{first}"
    );
    assert_eq!(events[1]["subject"], "sim");
    assert_eq!(events[1]["data"]["tables"], json!({"degraded": 1}));
    let stamps: Vec<u64> = events
        .iter()
        .map(|e| e["updatestamp"].as_u64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");

    eventually(
        "every transition delivered",
        Duration::from_secs(20),
        async || rx.events().len() >= want.len(),
    )
    .await;
    // Delivery keeps the order of each record (here: the table, the source).
    let delivered = rx.events();
    for subject in ["sim/patients", "sim"] {
        let of = |events: &[Value]| -> Vec<String> {
            let mine: Vec<Value> = events
                .iter()
                .filter(|e| e["subject"] == subject)
                .cloned()
                .collect();
            types(&mine)
        };
        assert_eq!(of(&delivered), of(&events), "{subject}");
    }

    let m = scrape(&app).await;
    for s in expected {
        let key = format!(r#"stamp_relay_health_transitions_total{{source="sim",to="{s}"}}"#);
        let times = expected.iter().filter(|e| **e == s).count() as f64;
        assert_eq!(m.get(&key).copied(), Some(times), "{key}");
    }
    assert_eq!(m[r#"stamp_relay_health_tables{state="healthy"}"#], 1.0);
    assert_eq!(m[r#"stamp_relay_health_tables{state="failing"}"#], 0.0);
    assert_eq!(m[r#"stamp_relay_health_tables{state="paused"}"#], 0.0);
    app.stop().await;
}
