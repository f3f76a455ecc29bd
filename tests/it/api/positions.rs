//! Honest positions (docs/replay.md, src/api/positions.rs): a position past
//! a table's last event is a 409 naming the top, and "from the beginning"
//! on a table whose retention removed events is a 410 unless the reader
//! accepts the oldest event kept; on replay, the live stream, a
//! subscription's start and a subscription's replay.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{
    config::{Paging, RetentionConfig, Secret, SubscriptionDecl},
    events::StreamId,
    store::Table,
};
use stamp_relay_simulator::{Order, SimConfig};

use crate::harness::{App, Sim, TestStore, all_events, eventually, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(
    positions_past_the_top_are_refused,
    the_beginning_of_a_trimmed_table_needs_consent,
    a_declared_beginning_on_a_trimmed_table_needs_consent
);

const EVENTS: &str = "/v1/resources/sim/patients/events";

/// A relay over `count` patients, synced, with `retention`.
async fn synced(ts: &TestStore, count: usize, retention: RetentionConfig) -> (Sim, App, Table) {
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), count)],
        ..SimConfig::default()
    })
    .await;
    let sources = vec![source(&sim.base_url, &["patients"], Paging::Keyset, 50)];
    let app = App::spawn_with(ts, sources, |c| c.store.retention = retention).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    (sim, app, t)
}

/// The status and problem (or body) of an answer.
async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let is_sse = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let body = if is_sse {
        Value::Null
    } else {
        r.json().await.unwrap()
    };
    (status, body)
}

fn sub(start: Value) -> Value {
    json!({"url": "https://hooks.example.com/x", "resources": ["*"], "start": start, "enabled": false})
}

async fn positions_past_the_top_are_refused(ts: TestStore) {
    let (_sim, app, t) = synced(&ts, 5, RetentionConfig::default()).await;
    let top = ts.store.last_id(&t).await.unwrap();
    let past = top.stamp + 40;
    let ahead = |(status, body): (u16, Value), field: &str| {
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "position_ahead", "{body}");
        assert_eq!(body["field"], field, "{body}");
        assert_eq!(body["top"], top.to_string(), "{body}");
    };
    ahead(
        answer(app.get(&format!("{EVENTS}?after={past}"))).await,
        "after",
    );
    let sse = app.get(&format!("{EVENTS}?after={past}"));
    ahead(
        answer(sse.header("accept", "text/event-stream")).await,
        "after",
    );
    let sse = app.get(EVENTS).header("accept", "text/event-stream");
    let resumed = sse.header("last-event-id", format!("{past}-0"));
    ahead(answer(resumed).await, "Last-Event-ID");
    let create = app.post("/v1/subscriptions", &sub(json!({"sim/patients": past})));
    ahead(answer(create).await, "start.sim/patients");
    // At the top is honest: nothing yet, and `next_after` stays there.
    let page = app.get_json(&format!("{EVENTS}?after={top}")).await;
    assert_eq!(page["next_after"], top.to_string(), "{page}");
    let made = app
        .post_json(
            "/v1/subscriptions",
            &sub(json!({"sim/patients": top.stamp})),
        )
        .await;
    let id = made["id"].as_str().expect("created");
    let replay = app.post(
        &format!("/v1/subscriptions/{id}/replay"),
        &json!({"from": {"sim/patients": past}}),
    );
    ahead(answer(replay).await, "from.sim/patients");
    app.stop().await;
}

async fn the_beginning_of_a_trimmed_table_needs_consent(ts: TestStore) {
    let retention = RetentionConfig {
        max_events: Some(10),
        interval: Duration::from_millis(50),
        ..RetentionConfig::default()
    };
    let (_sim, app, t) = synced(&ts, 40, retention).await;
    eventually(
        "the stream to be trimmed",
        Duration::from_secs(10),
        async || ts.store.stream_len(&t).await.unwrap() == 10,
    )
    .await;
    let oldest = all_events(ts.store.as_ref(), &t).await[0].id;
    let trimmed = |(status, body): (u16, Value), field: &str| {
        assert_eq!(status, 410, "{body}");
        assert_eq!(body["code"], "events_trimmed", "{body}");
        assert_eq!(body["field"], field, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("from_oldest_kept"), "{detail}");
    };
    trimmed(answer(app.get(&format!("{EVENTS}?after=0"))).await, "after");
    trimmed(answer(app.get(EVENTS)).await, "after");
    let sse = app.get(&format!("{EVENTS}?after=0"));
    trimmed(
        answer(sse.header("accept", "text/event-stream")).await,
        "after",
    );
    let create = app.post("/v1/subscriptions", &sub(json!("beginning")));
    trimmed(answer(create).await, "start.sim/patients");

    // Said out loud, the oldest event kept is where they start.
    let page = app
        .get_json(&format!("{EVENTS}?after=0&from_oldest_kept=true"))
        .await;
    assert_eq!(page["events"][0]["streamid"], oldest.to_string(), "{page}");
    let sse = app.get(&format!("{EVENTS}?after=0&from_oldest_kept=true"));
    let (status, _) = answer(sse.header("accept", "text/event-stream")).await;
    assert_eq!(status, 200);
    let mut body = sub(json!("beginning"));
    body["from_oldest_kept"] = json!(true);
    let made = app.post_json("/v1/subscriptions", &body).await;
    assert_eq!(
        made["start"]["sim/patients"],
        StreamId::ZERO.to_string(),
        "{made}"
    );
    let warning = made["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.starts_with("sim/patients: store.retention removed"),
        "{warning}"
    );
    let id = made["id"].as_str().unwrap();
    let replay = app.post(
        &format!("/v1/subscriptions/{id}/replay"),
        &json!({"from": "beginning"}),
    );
    trimmed(answer(replay).await, "from.sim/patients");
    let replay = app
        .post_json(
            &format!("/v1/subscriptions/{id}/replay"),
            &json!({"from": "beginning", "from_oldest_kept": true}),
        )
        .await;
    assert!(replay["warnings"][0].is_string(), "{replay}");
    app.stop().await;
}

/// A `[[subscriptions]]` entry starting at the beginning of a trimmed table
/// is created disabled, saying why, unless it says `from_oldest_kept`.
async fn a_declared_beginning_on_a_trimmed_table_needs_consent(ts: TestStore) {
    let retention = RetentionConfig {
        max_events: Some(10),
        interval: Duration::from_millis(50),
        ..RetentionConfig::default()
    };
    let (sim, app, t) = synced(&ts, 40, retention.clone()).await;
    eventually(
        "the stream to be trimmed",
        Duration::from_secs(10),
        async || ts.store.stream_len(&t).await.unwrap() == 10,
    )
    .await;
    app.stop().await;
    let declare = |id: &str, oldest_kept: bool| SubscriptionDecl {
        settings: serde_json::from_value(json!({
            "id": id, "url": "https://hooks.example.com/x", "resources": ["*"],
            "secret_env": "UNUSED", "start": "beginning", "from_oldest_kept": oldest_kept,
        }))
        .unwrap(),
        secret: Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
    };
    let sources = vec![source(&sim.base_url, &["patients"], Paging::Keyset, 50)];
    let app = App::spawn_with(&ts, sources, |c| {
        c.store.retention = retention;
        c.subscriptions = vec![declare("silent", false), declare("said", true)];
    })
    .await;
    let look = async |id: &str| {
        for _ in 0..500 {
            let r = app
                .get(&format!("/v1/subscriptions/{id}"))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                return r.json::<Value>().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{id} was never created");
    };
    let silent = look("silent").await;
    assert_eq!(silent["enabled"], false, "{silent}");
    let reason = silent["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("from_oldest_kept"), "{reason}");
    let said = look("said").await;
    assert_eq!(
        (said["enabled"].as_bool(), said["disabled_reason"].is_null()),
        (Some(true), true),
        "{said}"
    );
    app.stop().await;
}

/// After a failover lost a tail, the stream's IDs up to the highest it
/// issued stay valid positions: readers holding one (a live stream
/// reconnecting with `Last-Event-ID`) wait for the lost versions, which
/// come back above it, instead of a 409. Made here with `XDEL` of the last
/// entry, which leaves the stream's last generated ID where it was, as
/// `XSETID` does after a lost tail (docs/sync.md, "Store failovers").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_a_lost_tail_issued_stay_valid() {
    let Some(ts) = TestStore::open(crate::harness::Backend::Redis).await else {
        return;
    };
    let (_sim, app, t) = synced(&ts, 5, RetentionConfig::default()).await;
    let events = all_events(ts.store.as_ref(), &t).await;
    let last = events.last().unwrap().id;
    let client = redis::Client::open(ts.redis.as_ref().unwrap().url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let key = stamp_relay::store::redis::Keys::new(&ts.config.key_prefix, &t).events;
    let _: u64 = redis::cmd("XDEL")
        .arg(&key)
        .arg(last.to_string())
        .query_async(&mut c)
        .await
        .unwrap();
    let (status, body) = answer(app.get(&format!("{EVENTS}?after={last}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next_after"], last.to_string(), "{body}");
    let live = app
        .get(EVENTS)
        .header("accept", "text/event-stream")
        .header("last-event-id", last.to_string());
    assert_eq!(answer(live).await.0, 200);
    let past = StreamId::new(last.stamp + 1, 0);
    let (status, body) = answer(app.get(&format!("{EVENTS}?after={past}"))).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("position_ahead"))
    );
    app.stop().await;
}
