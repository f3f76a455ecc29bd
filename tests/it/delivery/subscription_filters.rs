//! `filters` and `fields` on subscriptions: a filtered, projected
//! subscription receives exactly the matching events with only the chosen
//! fields, a thin one every event without `data`, every body signed as
//! received; the events passed over are counted; malformed filters are
//! refused naming the fault.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};

use crate::harness::delivery::subscribe_to;
use crate::harness::filters::{synced_patients, three_clauses};
use crate::harness::openapi::check_response;
use crate::harness::receiver::TestReceiver;
use crate::harness::{App, Sim, TestStore, all_events, eventually, wait_synced};
use crate::on_both_stores;
use stamp_relay::{events::Event, store::Table};

on_both_stores!(subscriptions_filter_and_project);

/// The distinct stream IDs received, and how many events arrived in all
/// (a retried `webhook-id` once, as its receiver processes it: a request
/// timed out on a loaded machine is retried).
fn received(rx: &TestReceiver) -> (BTreeSet<String>, usize) {
    let events = rx.events_once();
    let ids = events
        .iter()
        .map(|e| e["streamid"].as_str().unwrap().to_string())
        .collect();
    (ids, events.len())
}

async fn filtered_count(app: &App, id: &str) -> Option<f64> {
    let key = format!(
        "stamp_relay_delivery_filtered_total{{subscription=\"{id}\",source=\"sim\",resource=\"patients\"}}"
    );
    crate::harness::metrics::scrape(app)
        .await
        .get(&key)
        .copied()
}

async fn subscriptions_filter_and_project(ts: TestStore) {
    let (sim, app, stream) = synced_patients(&ts, 200, 100).await;
    let (filter, rule) = three_clauses();
    let want: BTreeSet<String> = stream
        .iter()
        .filter(|e| rule(e))
        .map(|e| e.id.to_string())
        .collect();
    assert!(want.len() > 10 && want.len() < stream.len() / 2);
    let filters: Value = serde_json::from_str(&filter).unwrap();

    let (picky, thin) = (TestReceiver::start(31).await, TestReceiver::start(32).await);
    let body = json!({"resources": ["sim/patients"], "start": "beginning",
        "filters": filters, "fields": ["gender", "room"], "batch_size": 3});
    let picky_id = subscribe_to(&app, &picky, body).await;
    let body = json!({"resources": ["sim/patients"], "start": "beginning", "fields": []});
    subscribe_to(&app, &thin, body).await;
    let r = app
        .get(&format!("/v1/subscriptions/{picky_id}"))
        .send()
        .await
        .unwrap();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let shown: Value = r.json().await.unwrap();
    check_response("GET", "/v1/subscriptions/{id}", 200, &ct, &shown);
    assert_eq!(shown["filters"], filters);
    assert_eq!(shown["fields"], json!(["gender", "room"]));

    let passed_over = (stream.len() - want.len()) as f64;
    eventually(
        "every event sent or passed over",
        Duration::from_secs(60),
        async || {
            received(&thin).0.len() == stream.len()
                && received(&picky).0.len() >= want.len()
                && filtered_count(&app, &picky_id).await == Some(passed_over)
        },
    )
    .await;
    let (got, n) = received(&picky);
    assert_eq!(got, want, "exactly the matching events");
    assert_eq!(n, want.len(), "none twice");
    for e in picky.events_once() {
        let data = e["data"].as_object().unwrap();
        let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["gender", "room", "update_stamp", "uuid"].into(),
            "{e}"
        );
    }
    assert!(thin.events().iter().all(|e| e.get("data").is_none()));
    assert_eq!(picky.bad_signatures() + thin.bad_signatures(), 0);
    refusals(&app, &picky_id).await;
    let at = Moment {
        seen: picky.events_once().len(),
        events: stream.len(),
        filtered: passed_over,
    };
    patched_filters_apply(&ts, &sim, &app, (&picky, &picky_id), at).await;
    app.stop().await;
}

/// How far the stream, the receiver and the filtered count were.
struct Moment {
    seen: usize,
    events: usize,
    filtered: f64,
}

/// A PATCH of `filters` applies to every event appended after its answer,
/// without waiting for the supervisor's next look; whole records again once
/// `fields` was removed.
async fn patched_filters_apply(
    ts: &TestStore,
    sim: &Sim,
    app: &App,
    (rx, id): (&TestReceiver, &str),
    at: Moment,
) {
    let male = json!([{"exact": {"data.gender": "male"}}]);
    let r = app
        .http
        .patch(format!("{}/v1/subscriptions/{id}", app.base))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&json!({ "filters": male }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Right away: a worker reads the subscription's version around every
    // claim, so no event appended after the 200 goes out under the old
    // selection (here: none, whole records), however soon it comes.
    let t = Table::new("sim", "patients");
    sim.sim.random_writes(Some("patients"), 60);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let new = all_events(ts.store.as_ref(), &t).await.split_off(at.events);
    let is_male = |e: &&Event| serde_json::from_str::<Value>(&e.data).unwrap()["gender"] == "male";
    let want: BTreeSet<String> = new
        .iter()
        .filter(is_male)
        .map(|e| e.id.to_string())
        .collect();
    let filtered = at.filtered + (new.len() - want.len()) as f64;
    eventually("the patched filters", Duration::from_secs(60), async || {
        rx.events_once().len() >= at.seen + want.len()
            && filtered_count(app, id).await == Some(filtered)
    })
    .await;
    let later = rx.events_once().split_off(at.seen);
    let got: BTreeSet<String> = later
        .iter()
        .map(|e| e["streamid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((got, later.len()), (want.clone(), want.len()));
    assert!(
        later
            .iter()
            .all(|e| e["data"].as_object().unwrap().len() > 4)
    );
}

/// POSTs or PATCHes `body` and expects a 422 naming `field` whose detail
/// starts with `detail`.
async fn refused(app: &App, patch: Option<&str>, body: Value, field: &str, detail: &str) {
    let r = match patch {
        Some(id) => app
            .http
            .patch(format!("{}/v1/subscriptions/{id}", app.base))
            .bearer_auth(crate::harness::ADMIN_TOKEN)
            .json(&body),
        None => app.post("/v1/subscriptions", &body),
    };
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], field, "{p}");
    assert!(p["detail"].as_str().unwrap().starts_with(detail), "{p}");
}

async fn refusals(app: &App, id: &str) {
    let base = json!({"url": "https://example.com/hook", "resources": ["*"]});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let single = json!({"exact": {"type": "x"}});
    refused(
        app,
        None,
        with("filters", single),
        "filters",
        "filters: must be an array",
    )
    .await;
    let unknown = json!([{"regex": {"type": "x"}}]);
    refused(
        app,
        None,
        with("filters", unknown.clone()),
        "filters",
        r#"filters[0]: unknown dialect "regex""#,
    )
    .await;
    let nested =
        json!([{"exact": {"type": "a"}}, {"any": [{"exact": {"subject": "b"}}, {"nope": {}}]}]);
    refused(
        app,
        None,
        with("filters", nested),
        "filters",
        "filters[1].any[1]: ",
    )
    .await;
    refused(
        app,
        None,
        with("fields", json!(["gender", 3])),
        "fields",
        "fields[1]: ",
    )
    .await;
    let mut both = with("fields", json!(["gender"]));
    both["previous"] = true.into();
    refused(app, None, both, "fields", "fields cannot be combined").await;
    refused(
        app,
        Some(id),
        json!({"filters": unknown}),
        "filters",
        "filters[0]: ",
    )
    .await;
    refused(
        app,
        Some(id),
        json!({"previous": true}),
        "fields",
        "fields cannot be combined",
    )
    .await;
    // null removes either; absent keeps them.
    let r = app
        .http
        .patch(format!("{}/v1/subscriptions/{id}", app.base))
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .json(&json!({"filters": null, "fields": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["filters"].is_null() && v["fields"].is_null(), "{v}");
}

on_both_stores!(a_stored_filter_that_no_longer_parses_disables_rather_than_sends);

/// Fail closed: a filter may be what keeps health data from a receiver, so a
/// stored one that no longer parses (a corrupt document) disables the
/// subscription with the reason; nothing is sent whole, nothing skipped.
async fn a_stored_filter_that_no_longer_parses_disables_rather_than_sends(ts: TestStore) {
    let (_sim, app, stream) = synced_patients(&ts, 50, 0).await;
    assert!(!stream.is_empty());
    let rx = TestReceiver::start(33).await;
    let body = json!({"resources": ["sim/patients"], "start": "beginning", "enabled": false,
        "filters": [{"exact": {"data.gender": "female"}}]});
    let id = subscribe_to(&app, &rx, body).await;
    stamp_relay::store::update_subscription(ts.store.as_ref(), &id, |s| {
        s.filters = Some(json!([{"regex": {"type": ".*"}}]));
        Ok::<_, stamp_relay::store::StoreError>(())
    })
    .await
    .unwrap();
    assert_eq!(app.set_enabled(&id, true).await.status(), 200);
    eventually(
        "the worker disables the subscription",
        Duration::from_secs(30),
        async || {
            let shown: Value = app.get_json(&format!("/v1/subscriptions/{id}")).await;
            shown["enabled"] == json!(false)
                && shown["disabled_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("do not parse"))
        },
    )
    .await;
    assert_eq!(rx.events().len(), 0, "nothing sent whole");
    app.stop().await;
}
