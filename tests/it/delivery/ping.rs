//! The test ping (`POST /v1/subscriptions/{id}/test`) as docs/webhooks.md
//! describes it, and listed with the attempts.

use serde_json::json;
use stamp_relay::config::Paging;
use stamp_relay_simulator::SimConfig;

use crate::harness::scripted::Scripted;
use crate::harness::{App, Sim, TestStore, source};
use crate::on_both_stores;

on_both_stores!(a_ping_is_one_event_and_is_listed_with_the_attempts);

async fn a_ping_is_one_event_and_is_listed_with_the_attempts(ts: TestStore) {
    let sim = Sim::start(SimConfig::default()).await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
    )
    .await;
    let rx = Scripted::start((204, None, String::new())).await;
    let body = json!({"url": rx.url, "resources": ["*"], "batch_size": 20, "enabled": false});
    let id = app.post_json("/v1/subscriptions", &body).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ping = app
        .post_json(&format!("/v1/subscriptions/{id}/test"), &json!({}))
        .await;
    assert_eq!(ping["outcome"], "delivered", "{ping}");
    // One CloudEvent, not a batch, whatever batch_size says; no updatestamp.
    let sent = rx.requests()[0].json();
    assert_eq!(sent["type"], "io.stamp-relay.ping", "{sent}");
    assert_eq!(sent["data"]["subscription"], id.as_str());
    assert!(sent.get("updatestamp").is_none(), "{sent}");
    let attempts = app
        .get_json(&format!("/v1/subscriptions/{id}/attempts"))
        .await;
    crate::harness::openapi::check_response(
        "GET",
        "/v1/subscriptions/{id}/attempts",
        200,
        "application/json",
        &attempts,
    );
    let first = &attempts["attempts"][0];
    assert_eq!(first["ping"], true, "{attempts}");
    assert_eq!(first["outcome"], "delivered");
    assert_eq!(first["status"], 204);
    assert_eq!(first["event_ids"], json!([sent["id"]]));
    app.stop().await;
}
