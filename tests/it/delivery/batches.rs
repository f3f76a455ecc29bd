//! Batched deliveries through a receiver that deduplicates on `webhook-id`,
//! as the Standard Webhooks guidance (and openapi.yaml) tell receivers to:
//! a batch retried is the same batch, so each event is processed once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use serde_json::{Value, json};
use stamp_relay::{delivery::signing, store::Table};

use crate::harness::{TestStore, all_events, patients_relay, wait_for};
use crate::on_both_stores;

on_both_stores!(a_retried_batch_keeps_its_webhook_id);

/// What the deduplicating receiver saw.
#[derive(Default, Debug)]
struct Seen {
    secret: String,
    /// `webhook-id` -> the event ids of the first request that carried it.
    batches: HashMap<String, Vec<String>>,
    /// Event ids processed, once per new `webhook-id`.
    processed: Vec<String>,
    /// `webhook-id`s that came back with other events.
    changed: Vec<String>,
    bad_signatures: usize,
}

/// Processes each new `webhook-id` and then answers 500, as if the answer
/// were lost after the receiver committed; a repeated id is acknowledged
/// without processing.
async fn dedup(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let id = h("webhook-id").to_string();
    let mut g = seen.lock().unwrap();
    let ts = h("webhook-timestamp").parse().unwrap_or(0);
    if !signing::verify(&g.secret, &id, ts, &body, h("webhook-signature")) {
        g.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let events: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    match g.batches.get(&id) {
        Some(first) if *first == ids => StatusCode::NO_CONTENT,
        Some(_) => {
            g.changed.push(id);
            StatusCode::NO_CONTENT
        }
        None => {
            g.batches.insert(id, ids.clone());
            g.processed.extend(ids);
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

async fn a_retried_batch_keeps_its_webhook_id(ts: TestStore) {
    let (sim, app) = patients_relay(&ts, 23).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let router = Router::new()
        .route("/hook", post(dedup))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let body = json!({"url": url, "resources": ["sim/patients"], "start": "beginning",
        "batch_size": 4, "max_in_flight": 2, "enabled": false});
    let created = app.post_json("/v1/subscriptions", &body).await;
    seen.lock().unwrap().secret = created["secret"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap();
    let t = Table::new("sim", "patients");
    crate::harness::wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_eq!(app.set_enabled(id, true).await.status(), 200);
    // Changes while batches are retried: new events join the queue.
    sim.sim.random_writes(Some("patients"), 20);
    crate::harness::wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let want: Vec<String> = all_events(ts.store.as_ref(), &t)
        .await
        .iter()
        .map(|e| format!("sim:patients:{}:{}", e.record, e.stamp))
        .collect();
    let settled = async || ts.store.pending(id, &t).await.unwrap().len();
    let done = async || {
        let g = seen.lock().unwrap();
        want.iter().all(|w| g.processed.contains(w))
    };
    wait_for(
        "every event processed",
        Duration::from_secs(30),
        done,
        |d| *d,
    )
    .await;
    wait_for("nothing pending", Duration::from_secs(30), settled, |n| {
        *n == 0
    })
    .await;
    assert!(ts.store.dead_letters(id).await.unwrap().is_empty());
    let g = seen.lock().unwrap();
    assert_eq!(g.bad_signatures, 0);
    assert!(
        g.changed.is_empty(),
        "webhook-ids reused for other events: {:?}",
        g.changed
    );
    let mut processed = g.processed.clone();
    processed.sort();
    let before = processed.len();
    processed.dedup();
    assert_eq!(
        before,
        processed.len(),
        "events processed twice under new webhook-ids"
    );
}
