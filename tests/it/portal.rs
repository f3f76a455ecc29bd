//! The portal's API (message log, retry of one event, secret reveal,
//! filter preview, replay from a time) and the portal itself, driven in
//! headless Chromium through WebDriver (`portal_browser.rs`).

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::store::Target;

use crate::delivery::{subscribe_to, wait_delivered};
use crate::harness::{App, TestStore, eventually, patients_relay, wait_synced};
use crate::on_both_stores;
use crate::receiver::{Mode, TestReceiver};

/// The messages of `sub` the query picks.
pub async fn messages(app: &App, sub: &str, query: &str) -> Vec<Value> {
    let body = app
        .get_json(&format!("/v1/subscriptions/{sub}/messages?{query}"))
        .await;
    body["messages"].as_array().expect("messages").clone()
}

/// `POST …/messages/{event}/retry`, answered as it comes.
async fn retry_one(app: &App, sub: &str, event: &str) -> reqwest::Response {
    let path = format!("/v1/subscriptions/{sub}/messages/{event}/retry");
    app.post(&path, &json!({})).send().await.unwrap()
}

on_both_stores!(message_log_shows_states_attempts_and_retries_one_event);

async fn message_log_shows_states_attempts_and_retries_one_event(ts: TestStore) {
    let (sim, app) = patients_relay(&ts, 5).await;
    let t = Target::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(3).await;
    let sub = subscribe_to(
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
    eventually(
        "every message delivered",
        Duration::from_secs(10),
        async || {
            let all = messages(&app, &sub, "").await;
            all.len() == 5 && all.iter().all(|m| m["state"] == "delivered")
        },
    )
    .await;
    let all = messages(&app, &sub, "").await;
    for m in &all {
        crate::openapi::check_response(
            "GET",
            "/v1/subscriptions/{id}/messages",
            200,
            "application/json",
            &json!({"messages": [m]}),
        );
        let tries = m["attempts"].as_array().unwrap();
        assert!(
            tries
                .iter()
                .any(|a| a["outcome"] == "delivered" && a["reason"].is_null()),
            "{m}"
        );
    }
    let one = all[0]["record"].as_str().unwrap();
    let picked = messages(&app, &sub, &format!("record={one}")).await;
    assert!(
        !picked.is_empty() && picked.iter().all(|m| m["record"] == one),
        "{picked:?}"
    );
    assert!(messages(&app, &sub, "state=dead").await.is_empty());
    assert!(messages(&app, &sub, "type=nope").await.is_empty());
    let bad = app
        .get(&format!("/v1/subscriptions/{sub}/messages?state=lost"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);

    // A failing receiver: the event runs out of (millisecond) retries,
    // and the log names the answer and the reason.
    rx.set_mode(Mode::Flaky(1.0));
    let changed = sim.sim.random_writes(Some("patients"), 1).pop().unwrap();
    let query = format!("record={}&state=dead", changed.id);
    eventually(
        "the failing event to be dead",
        Duration::from_secs(20),
        async || messages(&app, &sub, &query).await.len() == 1,
    )
    .await;
    let dead = messages(&app, &sub, &query).await.remove(0);
    let failed = &dead["attempts"][0];
    assert_eq!(failed["reason"], "HTTP 500", "{dead}");
    assert_eq!(failed["response_excerpt"], "flaky", "{dead}");
    let event_id = dead["event_id"].as_str().unwrap().to_string();

    rx.set_mode(Mode::Ok);
    let retried: Value = app
        .post_json(
            &format!("/v1/subscriptions/{sub}/messages/{event_id}/retry"),
            &json!({}),
        )
        .await;
    assert_eq!(retried["was"], "dead", "{retried}");
    eventually(
        "the retried event to arrive",
        Duration::from_secs(20),
        async || rx.event_ids().contains(&event_id),
    )
    .await;
    eventually(
        "the retried event to be delivered",
        Duration::from_secs(10),
        async || {
            let m = messages(&app, &sub, &format!("record={}", changed.id)).await;
            m.first().is_some_and(|m| m["state"] == "delivered")
        },
    )
    .await;
    let dl = app
        .get_json(&format!("/v1/subscriptions/{sub}/dead-letters"))
        .await;
    assert_eq!(dl["dead_letters"], json!([]));
    let missing = retry_one(&app, &sub, "sim:patients:nobody:1").await;
    assert_eq!(missing.status(), 404);
    app.stop().await;
}

on_both_stores!(secret_reveal_filter_preview_and_replay_from_a_time);

async fn secret_reveal_filter_preview_and_replay_from_a_time(ts: TestStore) {
    let (sim, app) = patients_relay(&ts, 8).await;
    let t = Target::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let created: Value = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": "https://hooks.example.com/x", "resources": ["*"], "enabled": false}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let shown = app
        .get_json(&format!("/v1/subscriptions/{id}/secret"))
        .await;
    assert_eq!(shown["secret"], created["secret"]);
    assert!(shown.get("previous_secret").is_none());
    let rotated: Value = app
        .post_json(&format!("/v1/subscriptions/{id}/rotate-secret"), &json!({}))
        .await;
    let shown = app
        .get_json(&format!("/v1/subscriptions/{id}/secret"))
        .await;
    assert_eq!(shown["secret"], rotated["secret"]);
    assert_eq!(shown["previous_secret"], created["secret"]);

    let events = crate::harness::all_events(ts.store.as_ref(), &t).await;
    let record = &events[0].record;
    let preview: Value = app
        .post_json(
            "/v1/filters/preview",
            &json!({"resources": ["sim/patients"], "filters": [{"exact": {"subject": record}}]}),
        )
        .await;
    assert_eq!(preview["examined"], events.len(), "{preview}");
    let matching: Vec<&Value> = preview["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["matches"] == true)
        .collect();
    assert!(!matching.is_empty(), "{preview}");
    assert!(
        matching.iter().all(|e| e["record"] == record.as_str()),
        "{preview}"
    );
    assert_eq!(preview["matching"], matching.len());
    let bad = app
        .post(
            "/v1/filters/preview",
            &json!({"resources": ["sim/patients"], "filters": [{"nope": {}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);

    // From a time after every event: after the last; before all: from 0.
    let replay = |body: Value| {
        let app = &app;
        async move {
            app.post(&format!("/v1/subscriptions/{id}/replay"), &body)
                .send()
                .await
                .unwrap()
        }
    };
    let late: Value = replay(json!({"from_time": "2999-01-01T00:00:00Z"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        late["replaying_after"]["sim/patients"],
        events.last().unwrap().id.to_string(),
        "{late}"
    );
    let early: Value = replay(json!({"from_time": "2000-01-01T00:00:00Z"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(early["replaying_after"]["sim/patients"], "0-0", "{early}");
    // Disabled and back at 0: every event waits its turn, and cannot be retried.
    let waiting = messages(&app, id, "").await;
    assert_eq!(waiting.len(), events.len());
    assert!(
        waiting.iter().all(|m| m["state"] == "scheduled"),
        "{waiting:?}"
    );
    let first = waiting[0]["event_id"].as_str().unwrap();
    let r = retry_one(&app, id, first).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_retryable_now", "{body}");
    let both = replay(json!({"from": "beginning", "from_time": "2000-01-01T00:00:00Z"})).await;
    assert_eq!(both.status(), 422);
    let garbled = replay(json!({"from_time": "yesterday"})).await;
    assert_eq!(garbled.status(), 422);
    app.stop().await;
}
