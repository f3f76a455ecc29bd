//! The latest-record store (src/store/records.rs) through the API: record
//! lookup, `keep_records = false`, filling from an older stream, previous
//! values on webhooks, replay and the live stream, and the resync recipe of
//! docs/resync.md with retention trimming under it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{
    config::{Paging, RetentionConfig},
    store::Table,
};
use stamp_relay_simulator::{self as simulator, Change, Order, SimConfig};

use crate::harness::compat::{stamp_of, walk};
use crate::harness::receiver::TestReceiver;
use crate::harness::{App, Sim, TestStore, eventually, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(
    records_are_looked_up,
    without_keep_records_the_features_say_why,
    an_older_stream_fills_the_records,
    previous_values_carry_what_changed,
    a_reader_past_retention_resyncs_without_a_gap
);

fn change(op: simulator::Op, id: &str) -> Change {
    Change::new("patients", op).with_id(id)
}

async fn started(ts: &TestStore, keep: bool) -> (Sim, App, Table) {
    let sim = Sim::start(SimConfig::default()).await;
    let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 50);
    src.keep_records = keep;
    let app = App::spawn(ts, vec![src]).await;
    (sim, app, Table::new("sim", "patients"))
}

async fn records_are_looked_up(ts: TestStore) {
    let (sim, app, t) = started(&ts, true).await;
    sim.sim.apply(change(simulator::Op::Create, "A")).unwrap();
    sim.sim.apply(change(simulator::Op::Create, "B")).unwrap();
    sim.sim.apply(change(simulator::Op::Delete, "B")).unwrap();
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;

    let upstream = sim.sim.state("patients");
    for (id, stamp, deleted) in [("A", 1, false), ("B", 3, true)] {
        let r = app
            .get(&format!("/v1/resources/sim/patients/records/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (
                v["id"].as_str(),
                v["stamp"].as_u64(),
                v["deleted"].as_bool()
            ),
            (Some(id), Some(stamp), Some(deleted))
        );
        let want = upstream.iter().find(|r| r["uuid"] == id).unwrap();
        assert_eq!(&v["record"], want, "{id}: the latest version");
        let raw = ts.store.record(&t, id).await.unwrap().unwrap().data;
        assert!(text.contains(&raw), "{id}: the bytes as received");
    }
    let r = app
        .get("/v1/resources/sim/patients/records/nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = app
        .get("/v1/resources/sim/nurses/records/A")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

async fn without_keep_records_the_features_say_why(ts: TestStore) {
    let (sim, app, t) = started(&ts, false).await;
    sim.sim.apply(change(simulator::Op::Create, "A")).unwrap();
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_eq!(
        ts.store.record(&t, "A").await.unwrap(),
        None,
        "nothing kept"
    );
    for path in [
        "/v1/resources/sim/patients/records/A",
        "/compat/sim/api/patients/?sync=0",
    ] {
        let r = app.get(path).send().await.unwrap();
        assert_eq!(r.status(), 409, "{path}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["code"], "records_not_kept");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("keep_records = false"),
            "{p}"
        );
    }
    let body =
        json!({"url": "https://example.com/h", "resources": ["sim/patients"], "previous": true});
    let r = app.post("/v1/subscriptions", &body).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body = json!({"url": "https://example.com/h", "resources": ["sim/patients"]});
    let id = app.post_json("/v1/subscriptions", &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .http
        .patch(format!("{}/v1/subscriptions/{id}", app.base))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&json!({"previous": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a PATCH asks the same");
    app.stop().await;
}

/// A table appended without the record store (as before it existed) fills
/// it from its stream when a relay that keeps records opens the table.
async fn an_older_stream_fills_the_records(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 30)],
        ..SimConfig::default()
    })
    .await;
    let t = Table::new("sim", "patients");
    let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 50);
    src.keep_records = false;
    let app = App::spawn(&ts, vec![src.clone()]).await;
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    app.stop().await;
    let one = sim.sim.state("patients")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ts.store.record(&t, &one).await.unwrap(), None);

    src.keep_records = true;
    let app = App::spawn(&ts, vec![src]).await;
    // The relay opens the table before it serves: that fills the records.
    eventually("records filled", Duration::from_secs(30), async || {
        ts.store.record(&t, &one).await.unwrap().is_some()
    })
    .await;
    let http = reqwest::Client::new();
    let (results, _) = walk(
        &http,
        &format!("{}/compat/sim/api/patients/?sync=0", app.base),
    )
    .await;
    assert_eq!(results.len(), 30);
    app.stop().await;
}

async fn previous_values_carry_what_changed(ts: TestStore) {
    let (sim, app, t) = started(&ts, true).await;
    let rx = TestReceiver::start(7).await;
    let plain = TestReceiver::start(8).await;
    for (r, previous) in [(&rx, true), (&plain, false)] {
        let body = json!({"url": r.url, "resources": ["sim/patients"], "start": "beginning", "previous": previous});
        let v = app.post_json("/v1/subscriptions", &body).await;
        assert_eq!(v["previous"], previous, "{v}");
        r.set_secrets(&[v["secret"].as_str().unwrap()]);
    }
    let fields = |score: u64| json!({"pain_score": score, "note": "same"});
    let create = change(simulator::Op::Create, "A").with_fields(fields(3));
    sim.sim.apply(create).unwrap();
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim
        .apply(change(simulator::Op::Update, "A").with_fields(fields(8)))
        .unwrap();
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim.apply(change(simulator::Op::Delete, "A")).unwrap();
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;

    eventually("three webhooks each", Duration::from_secs(30), async || {
        rx.events().len() >= 3 && plain.events().len() >= 3
    })
    .await;
    let got = rx.events();
    let ops: Vec<&str> = got
        .iter()
        .map(|e| e["type"].as_str().unwrap().rsplit('.').next().unwrap())
        .collect();
    assert_eq!(ops, ["created", "updated", "deleted"]);
    for e in &got {
        assert_eq!(
            e["dataschema"],
            "urn:stamp-relay:schema:record-with-previous:1"
        );
        assert_eq!(e["data"]["record"]["uuid"], "A");
    }
    assert_eq!(
        got[0]["data"]["previous"],
        Value::Null,
        "a created record had no values"
    );
    let previous = got[1]["data"]["previous"].as_object().unwrap();
    assert_eq!(previous["pain_score"], 3, "{previous:?}");
    assert!(
        !previous.contains_key("note"),
        "unchanged fields stay out: {previous:?}"
    );
    assert!(!previous.contains_key("uuid"));
    let previous = got[2]["data"]["previous"].as_object().unwrap();
    assert_eq!(previous["deleted_at"], Value::Null, "{previous:?}");
    // The other subscription's events are unchanged: the record itself.
    for e in plain.events() {
        assert!(e.get("dataschema").is_none());
        assert_eq!(e["data"]["uuid"], "A");
    }

    // Replay and the live stream ask with previous=true.
    let page = app
        .get_json("/v1/resources/sim/patients/events?previous=true")
        .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["data"], got[1]["data"]);
    assert_eq!(events[1]["dataschema"], got[1]["dataschema"]);
    let page = app.get_json("/v1/resources/sim/patients/events").await;
    assert_eq!(page["events"][1]["data"]["pain_score"], 8);
    let live = app
        .get("/v1/resources/sim/patients/events?previous=true&after=1")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut live = live;
    let mut text = String::new();
    while !text.contains("\"previous\":{\"deleted_at\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), live.chunk()).await;
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap().unwrap()));
    }
    // The update's previous values, whatever else changed with it (its
    // modified_at too when the second turned between the writes).
    let update: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap())
        .find(|e| e["updatestamp"] == 2)
        .unwrap_or_else(|| panic!("no update in {text}"));
    assert_eq!(update["data"]["previous"]["pain_score"], 3, "{text}");
    app.stop().await;
}

/// docs/resync.md: a reader whose cursor retention passed gets 410 naming a
/// snapshot; it rebuilds from it, resumes the events after the snapshot's
/// position, and ends with exactly the upstream's records, although writes
/// and trimming went on meanwhile.
async fn a_reader_past_retention_resyncs_without_a_gap(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: crate::harness::seeds() + 21,
        order: Order::Stamp,
        initial: vec![("patients".into(), 40)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Keyset, 20);
    let app = App::spawn_with(&ts, vec![src], |c| {
        c.store.retention = RetentionConfig {
            max_events: Some(40),
            interval: Duration::from_millis(50),
            ..RetentionConfig::default()
        };
    })
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim.random_writes(Some("patients"), 40);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    eventually("trimmed", Duration::from_secs(30), async || {
        ts.store.trimmed_through(&t).await.unwrap().stamp > 5
    })
    .await;

    // The reader last saw stamp 5: gone.
    let r = app
        .get("/v1/resources/sim/patients/events?after=5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "events_trimmed");
    let snapshot = p["snapshot"].as_str().unwrap().to_string();
    assert_eq!(snapshot, "/compat/sim/api/patients/?sync=0");

    // Rebuild from the snapshot (page size 7) while writes go on.
    let http = reqwest::Client::new();
    let url = format!("{}{snapshot}&page_size=7", app.base);
    let first = crate::harness::compat::page(&http, &url).await;
    sim.sim.random_writes(Some("patients"), 30);
    let mut state: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    let mut apply = |raw: &str| {
        let v: Value = serde_json::from_str(raw).unwrap();
        let (id, stamp) = (v["uuid"].as_str().unwrap().to_string(), stamp_of(raw));
        // A version at or below the held one is a repeat: keep the newest.
        if state.get(&id).is_none_or(|(s, _)| *s < stamp) {
            state.insert(id, (stamp, v));
        }
    };
    first.results.iter().for_each(|r| apply(r));
    let mut next = first.next.clone();
    while let Some(url) = next {
        let p = crate::harness::compat::page(&http, &url).await;
        p.results.iter().for_each(|r| apply(r));
        next = p.next;
    }
    // Then the events after the snapshot's position, to the end.
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let mut after = first.resume_after.clone().unwrap();
    loop {
        let page = app
            .get_json(&format!(
                "/v1/resources/sim/patients/events?after={after}&limit=5"
            ))
            .await;
        assert!(
            page.get("code").is_none(),
            "the resume position was kept: {page}"
        );
        for e in page["events"].as_array().unwrap() {
            apply(&e["data"].to_string());
        }
        after = page["next_after"].as_str().unwrap().to_string();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let upstream: BTreeMap<String, Value> = sim
        .sim
        .state("patients")
        .into_iter()
        .map(|r| (r["uuid"].as_str().unwrap().to_string(), r))
        .collect();
    let rebuilt: BTreeMap<String, Value> = state.into_iter().map(|(k, (_, v))| (k, v)).collect();
    assert_eq!(
        rebuilt, upstream,
        "the reader holds exactly the upstream's records"
    );
    app.stop().await;
}
