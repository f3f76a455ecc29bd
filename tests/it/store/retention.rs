//! Retention (docs/redis-layout.md): streams are trimmed by length or age, never past
//! what an enabled subscription has yet to deliver unless the hard cap says
//! so, and never their last event (the cursor); a reader whose cursor is
//! older than what was kept gets 410 instead of a silent gap.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{
    config::{Paging, RetentionConfig},
    events::StreamId,
    store::Table,
};
use stamp_relay_simulator::{Change, Op, Order, SimConfig};

use crate::harness::delivery::{subscribe_to, wait_delivered};
use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{App, Sim, TestStore, all_events, eventually, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(
    retention_waits_for_subscriptions,
    dead_letters_hold_retention,
    hard_cap_and_age_trim_but_keep_the_cursor
);

/// An empty upstream table, the relay with `retention`, and a subscriber
/// that fails every request (it holds retention back) subscribed from the
/// beginning; then 40 records created and synced.
struct Setup {
    sim: Sim,
    app: App,
    t: Table,
    rx: TestReceiver,
    sub: String,
}

/// With `retry_forever`, failed events are retried every 50 ms instead of
/// going to the dead letters after the test schedule's eight quick retries.
async fn setup(
    ts: &TestStore,
    retention: RetentionConfig,
    seed: u64,
    retry_forever: bool,
) -> Setup {
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), 0)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn_with(
        ts,
        vec![source(&sim.base_url, &["patients"], Paging::Keyset, 50)],
        |c| {
            c.store.retention = retention;
            if retry_forever {
                c.delivery.retry_schedule = vec![Duration::from_millis(50); 1000];
            }
        },
    )
    .await;
    let rx = TestReceiver::start(seed).await;
    rx.set_mode(Mode::Flaky(1.0));
    let sub = subscribe_to(&app, &rx, json!({"resources": ["*"], "start": "beginning"})).await;
    create(&sim, 40);
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    Setup {
        sim,
        app,
        t,
        rx,
        sub,
    }
}

/// Creates `n` records upstream.
fn create(sim: &Sim, n: usize) {
    for _ in 0..n {
        sim.sim.apply(Change::new("patients", Op::Create)).unwrap();
    }
}

async fn len(ts: &TestStore, t: &Table) -> u64 {
    ts.store.stream_len(t).await.unwrap()
}

/// Events appended after `after` are changes the index knew the record of:
/// an update or delete carries the stamp it follows (a lost index would make
/// them `created` again, with no `prev`).
async fn assert_index_kept(ts: &TestStore, t: &Table, after: StreamId) {
    for e in all_events(ts.store.as_ref(), t).await {
        if e.id > after && e.op != stamp_relay::events::Op::Created {
            assert!(e.prev.is_some(), "{t}: {} {} lost its prev", e.op, e.id);
        }
    }
}

async fn retention_waits_for_subscriptions(ts: TestStore) {
    let retention = RetentionConfig {
        max_events: Some(10),
        interval: Duration::from_millis(50),
        ..RetentionConfig::default()
    };
    let Setup {
        sim, app, t, rx, ..
    } = setup(&ts, retention, 61, true).await;
    // Disabled, from stamp 5: it holds nothing back.
    let idle = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": "https://hooks.example.com/x", "resources": ["*"],
                    "start": {"sim/patients": 5}, "enabled": false}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        len(&ts, &t).await,
        40,
        "trimmed past what a subscription had yet to deliver"
    );

    // Once it has everything, the stream shrinks to max_events.
    rx.set_mode(Mode::Ok);
    wait_delivered(
        ts.store.as_ref(),
        &rx,
        std::slice::from_ref(&t),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(rx.event_ids().len(), 40);
    eventually(
        "the stream to be trimmed",
        Duration::from_secs(10),
        async || len(&ts, &t).await == 10,
    )
    .await;
    let through = ts.store.trimmed_through(&t).await.unwrap();
    let kept = all_events(ts.store.as_ref(), &t).await;
    assert!(
        through > StreamId::ZERO && through < kept[0].id,
        "trimmed through {through}, first kept {}",
        kept[0].id
    );

    // A cursor older than what is kept is refused, not silently skipped.
    let old = app
        .get("/v1/resources/sim/patients/events?after=1")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 410);
    let body: Value = old.json().await.unwrap();
    assert_eq!(body["code"], "events_trimmed", "{body}");
    assert_eq!(body["field"], "after", "{body}");
    let sse = app
        .get("/v1/resources/sim/patients/events")
        .header("accept", "text/event-stream")
        .header("last-event-id", "1-0")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 410);
    // A reconnect follows its Last-Event-ID, not a stale `after` in its URL.
    let reconnect = app
        .get("/v1/resources/sim/patients/events?after=1")
        .header("accept", "text/event-stream")
        .header("last-event-id", kept[0].id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reconnect.status(), 200);
    drop(reconnect);
    // 0 means "every event": a 410 too, unless the reader accepts the
    // oldest event kept (tests/it/api/positions.rs).
    let zero = app.get("/v1/resources/sim/patients/events?after=0");
    assert_eq!(zero.send().await.unwrap().status(), 410);
    let from_zero = app
        .get_json("/v1/resources/sim/patients/events?after=0&from_oldest_kept=true")
        .await;
    assert_eq!(from_zero["events"][0]["streamid"], kept[0].id.to_string());
    // From the last removed ID, replay has exactly what is kept.
    let page = app
        .get_json(&format!(
            "/v1/resources/sim/patients/events?after={through}"
        ))
        .await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["streamid"].as_str().unwrap())
        .collect();
    let want: Vec<String> = kept.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, want);

    // Changes after the trim follow the kept cursor and index.
    sim.sim.random_writes(Some("patients"), 15);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_index_kept(&ts, &t, kept[0].id).await;
    // Enabling it resumes past what retention removed: the answer says so.
    let r = app.set_enabled(idle["id"].as_str().unwrap(), true).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let warnings = body["warnings"].as_array().expect("a warning");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("sim/patients: store.retention removed"),
        "{body}"
    );
    app.stop().await;
}

async fn dead_letters_hold_retention(ts: TestStore) {
    let retention = RetentionConfig {
        max_events: Some(10),
        interval: Duration::from_millis(50),
        ..RetentionConfig::default()
    };
    // `_sim` keeps the upstream alive; `..` would drop it here.
    let Setup {
        sim: _sim,
        app,
        t,
        rx,
        sub: id,
        ..
    } = setup(&ts, retention, 63, false).await;
    eventually("40 dead letters", Duration::from_secs(10), async || {
        ts.store.dead_letters(&id).await.unwrap().len() == 40
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(len(&ts, &t).await, 40, "trimmed dead letters' events");
    // A disabled subscription holds nothing back.
    assert_eq!(app.set_enabled(&id, false).await.status(), 200);
    eventually(
        "the stream to be trimmed",
        Duration::from_secs(10),
        async || len(&ts, &t).await == 10,
    )
    .await;
    // Enabled again, a redrive sends what is kept and names what is gone.
    rx.set_mode(Mode::Ok);
    assert_eq!(app.set_enabled(&id, true).await.status(), 200);
    let r: Value = app
        .post_json(
            &format!("/v1/subscriptions/{id}/dead-letters/redrive"),
            &json!({}),
        )
        .await;
    assert_eq!(r["redriven"], 10, "{r}");
    assert_eq!(r["trimmed"].as_array().unwrap().len(), 30, "{r}");
    wait_delivered(
        ts.store.as_ref(),
        &rx,
        std::slice::from_ref(&t),
        Duration::from_secs(30),
    )
    .await;
    app.stop().await;
}

async fn hard_cap_and_age_trim_but_keep_the_cursor(ts: TestStore) {
    let retention = RetentionConfig {
        max_age: Some(Duration::from_millis(1)),
        hard_max_events: Some(15),
        interval: Duration::from_millis(50),
        ..RetentionConfig::default()
    };
    let Setup {
        sim,
        app,
        t,
        sub: id,
        ..
    } = setup(&ts, retention, 62, false).await;
    // The hard cap trims past the failing subscription.
    eventually("the hard cap", Duration::from_secs(10), async || {
        len(&ts, &t).await == 15
    })
    .await;
    // Without an enabled subscription, age alone keeps only the last
    // event: its stamp is the cursor, so it never goes.
    let r = app.set_enabled(&id, false).await;
    assert_eq!(r.status(), 200);
    eventually(
        "age to trim all but the last",
        Duration::from_secs(10),
        async || len(&ts, &t).await == 1,
    )
    .await;
    let last = ts.store.last_id(&t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ts.store.last_id(&t).await.unwrap(),
        last,
        "the cursor moved"
    );
    assert_eq!(len(&ts, &t).await, 1, "polls reloaded trimmed records");
    // A change still follows the index: an update, not a new record.
    sim.sim.random_writes(Some("patients"), 5);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_index_kept(&ts, &t, last).await;
    app.stop().await;
}
