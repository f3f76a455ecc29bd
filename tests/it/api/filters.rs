//! `filter=` and `fields=` on replay and the live stream (docs/filters.md): exactly the matching events, projected or thin, and 422
//! naming the fault of a filter that does not parse.

use std::time::Duration;

use serde_json::Value;

use crate::harness::filters::{synced_patients, three_clauses};
use crate::harness::openapi::check_response;
use crate::harness::sse::read_sse;
use crate::harness::{App, TestStore};
use crate::on_both_stores;

on_both_stores!(replay_and_live_stream_filter_and_project);

const PATH: &str = "/v1/resources/sim/patients/events";
/// The route as openapi.yaml names it.
const ROUTE: &str = "/v1/resources/{source}/{resource}/events";

/// Every page of a replay from the start with these extra parameters.
async fn replay(app: &App, params: &[(&str, &str)]) -> Vec<Value> {
    let (mut after, mut got) = ("0".to_string(), Vec::new());
    loop {
        let r = app
            .get(PATH)
            .query(&[("after", after.as_str()), ("limit", "40")]);
        let r = r.query(params).send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        check_response("GET", ROUTE, status, &ct, &body);
        got.extend(body["events"].as_array().unwrap().iter().cloned());
        after = body["next_after"].as_str().unwrap().to_string();
        if !body["has_more"].as_bool().unwrap() {
            return got;
        }
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["streamid"].as_str().unwrap().to_string())
        .collect()
}

async fn replay_and_live_stream_filter_and_project(ts: TestStore) {
    let (_sim, app, stream) = synced_patients(&ts, 300, 150).await;
    let (filter, rule) = three_clauses();
    let want: Vec<String> = stream
        .iter()
        .filter(|e| rule(e))
        .map(|e| e.id.to_string())
        .collect();
    assert!(
        want.len() > 20 && want.len() < stream.len() / 2,
        "{} of {}",
        want.len(),
        stream.len()
    );
    let got = replay(&app, &[("filter", filter.as_str())]).await;
    assert_eq!(ids(&got), want, "exactly the matching events");
    projected_and_thin(&app, &filter, &want, stream.len()).await;
    bad_filter_refused(&app).await;
    live_stream_filtered(&app, &filter, &want).await;
    app.stop().await;
}

async fn projected_and_thin(app: &App, filter: &str, want: &[String], all: usize) {
    let projected = replay(app, &[("filter", filter), ("fields", "gender,room")]).await;
    assert_eq!(ids(&projected), want);
    for e in &projected {
        let data = e["data"].as_object().unwrap();
        assert_eq!(data.len(), 4, "{e}");
        for k in ["uuid", "update_stamp", "gender", "room"] {
            assert!(data.contains_key(k), "{k} in {e}");
        }
    }
    let thin = replay(app, &[("fields", "")]).await;
    assert_eq!(thin.len(), all, "thin events: every event");
    assert!(
        thin.iter()
            .all(|e| e.get("data").is_none() && e.get("datacontenttype").is_none())
    );
}

async fn bad_filter_refused(app: &App) {
    let r = app
        .get(PATH)
        .query(&[("filter", r#"[{"regex": {"type": "x"}}]"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "filter");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(r#"filter[0]: unknown dialect "regex""#),
        "{p}"
    );
}

async fn live_stream_filtered(app: &App, filter: &str, want: &[String]) {
    let mut live = app
        .get(PATH)
        .query(&[("after", "0"), ("filter", filter), ("fields", "gender")])
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let within = Duration::from_secs(30);
    let frames = read_sse(&mut live, &mut String::new(), want.len(), within).await;
    let got: Vec<String> = frames.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, want, "the live stream filters too");
    let data_keys = |e: &Value| e["data"].as_object().unwrap().len();
    assert!(frames.iter().all(|(_, e)| data_keys(e) == 3));
}
