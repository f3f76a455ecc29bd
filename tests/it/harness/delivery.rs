//! Delivery as a test sees it: a subscription made for a `TestReceiver`
//! (or put straight into the store), waiting until every event arrived,
//! per-record order at the receiver, and a subscription's message log.

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use stamp_relay::{
    store::{Store, Table},
    subscription::Subscription,
};

use super::{App, all_events, receiver::TestReceiver, wait_for};

/// Creates a subscription through the API; answers its id and secret.
pub async fn subscribe(app: &App, body: Value) -> (String, String) {
    let r = app.post("/v1/subscriptions", &body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

/// Creates a subscription disabled, gives the receiver its secret, then
/// enables it, so no request arrives before the receiver can verify it.
pub async fn subscribe_to(app: &App, rx: &TestReceiver, mut body: Value) -> String {
    body["url"] = rx.url.clone().into();
    body["enabled"] = false.into();
    let (id, secret) = subscribe(app, body).await;
    rx.set_secrets(&[&secret]);
    let r = app.set_enabled(&id, true).await;
    assert_eq!(r.status(), 200);
    id
}

/// Waits until the receiver holds every event of the tables at least once.
pub async fn wait_delivered(
    store: &dyn Store,
    rx: &TestReceiver,
    targets: &[Table],
    within: Duration,
) {
    let look = async || {
        let got: std::collections::HashSet<String> = rx.event_ids().into_iter().collect();
        let mut missing = Vec::new();
        for t in targets {
            for e in all_events(store, t).await {
                let key = format!("{}:{}:{}:{}", t.source, t.resource, e.record, e.stamp);
                if !got.contains(&key) {
                    missing.push(key);
                }
            }
        }
        Undelivered::of(store, missing).await
    };
    let what = "every event to reach the receiver";
    wait_for(what, within, look, |u| u.missing == 0).await;
}

/// What has not reached a receiver yet, and whether it was dead-lettered:
/// a test whose retry schedule is too short for its failure rate shows
/// that in its failure, not as a mystery.
#[derive(Debug)]
#[expect(dead_code, reason = "the lists are read as the failure message")]
struct Undelivered {
    missing: usize,
    first: Vec<String>,
    dead_letters: Vec<String>,
}

impl Undelivered {
    async fn of(store: &dyn Store, mut missing: Vec<String>) -> Undelivered {
        let mut dead_letters = Vec::new();
        // Dead letters are only read while something is missing.
        for s in store.subscriptions().await.unwrap() {
            if missing.is_empty() {
                break;
            }
            for d in store.dead_letters(&s.id).await.unwrap() {
                dead_letters.push(format!(
                    "{} ({} attempts: {})",
                    d.event_id, d.attempts, d.last_error
                ));
            }
        }
        let n = missing.len();
        missing.truncate(5);
        Undelivered {
            missing: n,
            first: missing,
            dead_letters,
        }
    }
}

/// For every record, the stamps in order of first receipt only rise.
pub fn assert_record_order(events: &[Value]) {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in events {
        let id = e["id"].as_str().unwrap().to_string();
        if !seen.insert(id.clone()) {
            continue;
        }
        let record = format!("{}/{}", e["source"], e["subject"]);
        let stamp = e["updatestamp"].as_u64().unwrap();
        if let Some(prev) = last.insert(record.clone(), stamp) {
            assert!(
                stamp > prev,
                "record {record} received stamp {stamp} after {prev}"
            );
        }
    }
}

/// A subscription as a test puts it straight into the store.
pub fn subscription(id: &str, url: &str) -> Subscription {
    serde_json::from_value(json!({
        "id": id, "url": url, "resources": ["*"], "ops": [], "start": {}, "headers": {},
        "batch_size": 1, "max_in_flight": 4, "rate_limit": null, "enabled": true,
        "description": "", "secret": "whsec_dGVzdA==", "previous_secret": null,
        "created_ms": 0, "updated_ms": 0
    }))
    .unwrap()
}

/// The messages of `sub` the query picks.
pub async fn messages(app: &App, sub: &str, query: &str) -> Vec<Value> {
    let body = app
        .get_json(&format!("/v1/subscriptions/{sub}/messages?{query}"))
        .await;
    body["messages"].as_array().expect("messages").clone()
}
