//! Delivery rules against a scripted receiver that answers what the test
//! tells it and keeps every request: the end of `secret_grace`, the 4 KiB
//! cap on stored answers, a replay, and a signed test ping. (`Retry-After`
//! and `disable_after` are in retries.rs, on a supplied clock.)

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{
    config::{Config, Paging},
    events::now_ms,
    store::Table,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::scripted::{Request, Scripted};
use crate::harness::{App, Backend, Sim, TestStore, eventually, source, wait_synced};

/// A relay over 3 patients, with its delivery settings changed by `tweak`,
/// and a subscription to them from the beginning; returns (id, secret).
async fn setup(
    rx: &Scripted,
    tweak: impl FnOnce(&mut Config),
) -> (TestStore, Sim, App, String, String) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 3)],
        ..SimConfig::default()
    })
    .await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 50);
    let app = App::spawn_with(&ts, vec![src], tweak).await;
    wait_synced(ts.store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;
    let created = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": rx.url, "resources": ["*"], "start": "beginning", "max_in_flight": 1}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();
    (ts, sim, app, id, secret)
}

/// After `secret_grace` the rotated-out secret no longer signs, neither
/// deliveries nor test pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_secret_stops_signing_when_secret_grace_ends() {
    let rx = Scripted::start((204, None, String::new())).await;
    let (_ts, sim, app, id, old) = setup(&rx, |c| {
        // Longer than the supervisor's look at the subscriptions (500 ms),
        // which is how soon a worker learns of the rotation.
        c.delivery.secret_grace = Duration::from_secs(2);
    })
    .await;
    eventually("3 deliveries", Duration::from_secs(20), async || {
        rx.requests().len() >= 3
    })
    .await;
    let rotated = app
        .post_json(&format!("/v1/subscriptions/{id}/rotate-secret"), &json!({}))
        .await;
    let new = rotated["secret"].as_str().unwrap().to_string();
    let until = rotated["previous_secret_valid_until_ms"].as_u64().unwrap();
    eventually("the grace to pass", Duration::from_secs(10), async || {
        now_ms() > until
    })
    .await;
    let before = rx.requests().len();
    sim.sim.random_writes(Some("patients"), 2);
    let ping = app
        .post_json(&format!("/v1/subscriptions/{id}/test"), &json!({}))
        .await;
    assert_eq!(ping["outcome"], "delivered", "{ping}");
    let is_ping = |r: &Request| r.json()["type"].as_str().unwrap().ends_with(".ping");
    eventually(
        "the new writes delivered",
        Duration::from_secs(20),
        async || rx.requests()[before..].iter().any(|r| !is_ping(r)),
    )
    .await;
    let after = &rx.requests()[before..];
    assert!(after.iter().any(is_ping));
    for r in after {
        assert!(r.signed_with(&new), "{:?}", r.headers);
        assert!(
            !r.signed_with(&old),
            "still signed with the old secret: {:?}",
            r.headers
        );
    }
    app.stop().await;
}

/// A receiver's answer is kept up to 4 KiB in the attempt log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_answers_are_cut_at_4_kib() {
    let long: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let rx = Scripted::start((500, None, long.clone())).await;
    let (_ts, _sim, app, id, _) = setup(&rx, |_| {}).await;
    let mut attempts = Value::Null;
    eventually("an attempt logged", Duration::from_secs(20), async || {
        attempts = app
            .get_json(&format!("/v1/subscriptions/{id}/attempts"))
            .await;
        attempts["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let kept = attempts["attempts"][0]["response"].as_str().unwrap();
    assert_eq!(kept.len(), 4096);
    assert!(long.starts_with(kept));
    app.stop().await;
}

/// `POST .../replay` from the beginning sends every event again, and
/// `POST .../test` sends one signed ping and reports the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_and_the_test_ping_is_signed() {
    let rx = Scripted::start((204, None, String::new())).await;
    let (_ts, _sim, app, id, secret) = setup(&rx, |_| {}).await;
    eventually("3 deliveries", Duration::from_secs(20), async || {
        rx.requests().len() >= 3
    })
    .await;
    let first: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| r.json()["id"].to_string())
        .collect();
    let r = app
        .post(
            &format!("/v1/subscriptions/{id}/replay"),
            &json!({"from": "beginning"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["replaying_after"]["sim/patients"], "0-0", "{body}");
    eventually("3 more deliveries", Duration::from_secs(20), async || {
        rx.requests().len() >= 6
    })
    .await;
    let again: Vec<String> = rx.requests()[3..6]
        .iter()
        .map(|r| r.json()["id"].to_string())
        .collect();
    assert_eq!(again, first, "the replay sends the same events in order");

    let ping = app
        .post_json(&format!("/v1/subscriptions/{id}/test"), &json!({}))
        .await;
    assert_eq!(
        (&ping["outcome"], &ping["status"]),
        (&json!("delivered"), &json!(204))
    );
    let sent = rx.requests().last().cloned().unwrap();
    let event = sent.json();
    assert!(
        event["id"].as_str().unwrap().starts_with("ping:"),
        "{event}"
    );
    assert_eq!(sent.header("webhook-id"), event["id"].as_str().unwrap());
    assert_eq!(event["data"]["subscription"], id.as_str());
    assert!(sent.signed_with(&secret), "{:?}", sent.headers);
    assert!(!sent.signed_with("whsec_dGVzdA=="));
    app.stop().await;
}
