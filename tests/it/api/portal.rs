//! The portal's API (message log, retry of one event, secret reveal,
//! filter preview, replay from a time) and the portal itself, driven in
//! headless Chromium through WebDriver (`portal_browser.rs`).

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::store::Table;

use crate::harness::delivery::messages;
use crate::harness::delivery::{subscribe_to, wait_delivered};
use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{App, TestStore, eventually, patients_relay, wait_synced};
use crate::on_both_stores;

/// `POST …/messages/{event}/retry`, answered as it comes.
async fn retry_one(app: &App, sub: &str, event: &str) -> reqwest::Response {
    let path = format!("/v1/subscriptions/{sub}/messages/{event}/retry");
    app.post(&path, &json!({})).send().await.unwrap()
}

on_both_stores!(message_log_shows_states_attempts_and_retries_one_event);

async fn message_log_shows_states_attempts_and_retries_one_event(ts: TestStore) {
    let (sim, app) = patients_relay(&ts, 5).await;
    let t = Table::new("sim", "patients");
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
        crate::harness::openapi::check_response(
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
    pages_go_back_to_the_start(&app, &sub, &all).await;
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
    let t = Table::new("sim", "patients");
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

on_both_stores!(a_refusal_shows_its_reason_and_a_retry_keeps_the_failures);

/// A receiver on a private address with the SSRF guard on: each attempt
/// in the log names the refusal, and retrying a waiting retry keeps its
/// count of failures (docs/portal.md).
async fn a_refusal_shows_its_reason_and_a_retry_keeps_the_failures(ts: TestStore) {
    let sim = crate::harness::Sim::start(stamp_relay_simulator::SimConfig {
        initial: vec![("patients".into(), 2)],
        ..Default::default()
    })
    .await;
    let sources = vec![crate::harness::source(
        &sim.base_url,
        &["patients"],
        stamp_relay::config::Paging::Pages,
        100,
    )];
    let app = App::spawn_with(&ts, sources, |c| {
        c.delivery.allow_private_targets = false;
        // One quick retry, then an hour: the events wait with 2 failures.
        c.delivery.retry_schedule = [0, 3600, 3600].map(Duration::from_secs).to_vec();
        c.delivery.retry_schedule[0] = Duration::from_millis(10);
    })
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let body = json!({"url": "https://hooks.example.com/x", "resources": ["sim/patients"],
        "start": "beginning", "enabled": false});
    let created = app.post_json("/v1/subscriptions", &body).await;
    let id = created["id"].as_str().unwrap();
    // The door refuses a private address; one stored before the guard was
    // tightened (or whose name resolves elsewhere later) meets it at the send.
    let mut stored = ts.store.subscription(id).await.unwrap().unwrap();
    stored.url = stamp_relay::subscription::WebhookUrl::parse("http://127.0.0.1:9/hook").unwrap();
    ts.store.put_subscription(&stored).await.unwrap();
    let r = app
        .patch(
            &format!("/v1/subscriptions/{id}"),
            &json!({"enabled": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let failed_twice = |m: &Value| m["state"] == "retrying" && m["failures"] == 2;
    eventually(
        "both events refused twice",
        Duration::from_secs(20),
        async || {
            let all = messages(&app, id, "").await;
            all.len() == 2 && all.iter().all(failed_twice)
        },
    )
    .await;
    let all = messages(&app, id, "state=retrying").await;
    for m in &all {
        let tries = m["attempts"].as_array().unwrap();
        assert_eq!(tries.len(), 2, "{m}");
        for a in tries {
            assert_eq!(a["outcome"], "refused", "{m}");
            let reason = a["reason"].as_str().unwrap();
            assert!(reason.starts_with("refused: "), "{m}");
            assert!(reason.contains("allowed_cidrs"), "{m}");
        }
    }
    let one = all[0]["event_id"].as_str().unwrap();
    let retried: Value = retry_one(&app, id, one).await.json().await.unwrap();
    assert_eq!(retried["was"], "retrying", "{retried}");
    let record = all[0]["record"].as_str().unwrap();
    let query = format!("record={record}");
    // At once (before or after the worker sends it again) it still counts
    // its failures: 2, then 3 once the new attempt is refused too.
    let now = messages(&app, id, &query).await.remove(0);
    assert!(now["failures"].as_u64().unwrap() >= 2, "{now}");
    eventually(
        "the retry refused too",
        Duration::from_secs(20),
        async || {
            let m = messages(&app, id, &query).await.remove(0);
            m["failures"] == 3 && m["attempts"].as_array().unwrap().len() == 3
        },
    )
    .await;
    app.stop().await;
}

/// Pages of 2 from the newest: the whole log (`all`, newest first), each
/// message once, `next` absent on the last page only.
async fn pages_go_back_to_the_start(app: &App, sub: &str, all: &[Value]) {
    let stream_ids: Vec<&Value> = all.iter().map(|m| &m["stream_id"]).collect();
    let mut sorted = stream_ids.clone();
    sorted.sort_by_key(|id| {
        let (stamp, seq) = id.as_str().unwrap().split_once('-').unwrap();
        std::cmp::Reverse((stamp.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap()))
    });
    assert_eq!(stream_ids, sorted, "newest first");
    let (mut paged, mut before) = (Vec::new(), None::<String>);
    loop {
        let mut path = format!("/v1/subscriptions/{sub}/messages?limit=2");
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let body = app.get_json(&path).await;
        let page = body["messages"].as_array().unwrap();
        paged.extend(page.iter().map(|m| m["stream_id"].clone()));
        match body["next"].as_str() {
            Some(next) => {
                assert_eq!(page.len(), 2, "{body}");
                before = Some(next.to_string());
            }
            None => break,
        }
        assert!(paged.len() <= all.len(), "{paged:?}");
    }
    assert_eq!(paged.iter().collect::<Vec<_>>(), stream_ids);
    let bad = app
        .get(&format!("/v1/subscriptions/{sub}/messages?before=1-0,2-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422, "one table, two cursors");
}
