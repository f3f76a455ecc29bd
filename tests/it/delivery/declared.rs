//! Subscriptions declared in the configuration file (`[[subscriptions]]`,
//! src/declared.rs): delivered without any API call and signed with the
//! secret the environment holds; a restart with a changed entry updates it
//! in place, keeping its position; the API refuses to change or delete it;
//! the store losing it brings it back; leaving the file disables it.

use std::{collections::BTreeSet, time::Duration};

use figment::{Figment, providers::Format};
use serde_json::{Value, json};
use stamp_relay::{
    config::{Paging, RawConfig, SubscriptionDecl},
    store::Table,
};
use stamp_relay_simulator::{Order, SimConfig};

use crate::harness::openapi::check_response;
use crate::harness::receiver::TestReceiver;
use crate::harness::{App, Sim, TestStore, all_events, eventually, source, wait_synced};
use crate::on_both_stores;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NEW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The `[[subscriptions]]` of a TOML text, validated as the relay
/// validates its file, with `CARE_SECRET` holding `secret`.
fn declare(toml: &str, secret: &str) -> Vec<SubscriptionDecl> {
    let raw: RawConfig = Figment::from(figment::providers::Toml::string(toml))
        .extract()
        .unwrap();
    let env = |k: &str| (k == "CARE_SECRET").then(|| secret.to_string());
    raw.validate(&env).unwrap().subscriptions
}

/// One entry for `url` with `filters`, as a GitOps file would hold it.
fn entry(url: &str, filters: &str) -> String {
    format!(
        r#"[[subscriptions]]
id = "care"
url = "{url}"
resources = ["sim/patients"]
secret_env = "CARE_SECRET"
start = "beginning"
filters = {filters}
description = "female residents"
"#
    )
}

const FEMALE: &str = r#"[{ exact = { "data.gender" = "female" } }]"#;
const MALE: &str = r#"[{ exact = { "data.gender" = "male" } }]"#;

/// A simulator holding `n` patients, answering in stamp order.
async fn patients(n: usize) -> Sim {
    Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), n)],
        ..SimConfig::default()
    })
    .await
}

async fn start(ts: &TestStore, sim: &Sim, decls: Vec<SubscriptionDecl>) -> App {
    let sources = vec![source(&sim.base_url, &["patients"], Paging::Keyset, 100)];
    App::spawn_with(ts, sources, |c| c.subscriptions = decls).await
}

fn of_gender(events: &[stamp_relay::events::Event], gender: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| serde_json::from_str::<Value>(&e.data).unwrap()["gender"] == gender)
        .map(|e| e.id.to_string())
        .collect()
}

fn received(rx: &TestReceiver) -> Vec<String> {
    rx.events()
        .iter()
        .map(|e| e["streamid"].as_str().unwrap().to_string())
        .collect()
}

on_both_stores!(a_declared_subscription_delivers_and_follows_the_file);

async fn a_declared_subscription_delivers_and_follows_the_file(ts: TestStore) {
    let sim = patients(80).await;
    let t = Table::new("sim", "patients");
    let rx = TestReceiver::start(41).await;
    rx.set_secrets(&[SECRET]);
    let app = start(&ts, &sim, declare(&entry(&rx.url, FEMALE), SECRET)).await;
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let first = all_events(ts.store.as_ref(), &t).await;
    let want = of_gender(&first, "female");
    assert!(!want.is_empty());
    eventually("the female patients", Duration::from_secs(60), async || {
        received(&rx).len() >= want.len()
    })
    .await;
    let got: BTreeSet<String> = received(&rx).into_iter().collect();
    assert_eq!(got, want, "exactly what the file's filter passes");
    let end = first.last().unwrap().id;
    eventually("every event settled", Duration::from_secs(30), async || {
        let store = ts.store.as_ref();
        store.position("care", &t).await.unwrap() == Some(end)
            && store.pending("care", &t).await.unwrap().is_empty()
    })
    .await;
    assert_eq!(
        rx.bad_signatures(),
        0,
        "signed with the secret of CARE_SECRET"
    );
    shown_and_refused(&app).await;
    app.stop().await;

    // The file changes url, filter and secret: updated in place, so the
    // position is kept and nothing delivered is sent again.
    let moved = TestReceiver::start(42).await;
    moved.set_secrets(&[NEW_SECRET]);
    let app = start(&ts, &sim, declare(&entry(&moved.url, MALE), NEW_SECRET)).await;
    let shown = app.get_json("/v1/subscriptions/care").await;
    assert_eq!(shown["url"], moved.url.as_str(), "{shown}");
    sim.sim.random_writes(Some("patients"), 40);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let later = all_events(ts.store.as_ref(), &t)
        .await
        .split_off(first.len());
    let want = of_gender(&later, "male");
    eventually(
        "the male patients since",
        Duration::from_secs(60),
        async || received(&moved).len() >= want.len(),
    )
    .await;
    let got = received(&moved);
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(got.len(), want.len(), "none of the earlier events again");
    assert_eq!(moved.bad_signatures(), 0, "signed with the new secret");
    let stored = ts.store.subscription("care").await.unwrap().unwrap();
    let (old, until) = stored
        .previous_secret
        .expect("rotated, as rotate-secret does");
    assert_eq!(
        old.as_str(),
        SECRET,
        "the old secret signs for the grace period"
    );
    assert!(until > stamp_relay::events::now_ms());
    app.stop().await;

    // Left out of the file: disabled, released to the API, kept.
    let app = start(&ts, &sim, Vec::new()).await;
    let shown = app.get_json("/v1/subscriptions/care").await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert!(shown["managed_by"].is_null(), "{shown}");
    let reason = shown["disabled_reason"].as_str().unwrap();
    assert!(
        reason.contains("removed from the configuration file"),
        "{reason}"
    );
    let r = app
        .http
        .delete(format!("{}/v1/subscriptions/care", app.base));
    let r = r
        .bearer_auth(crate::harness::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    app.stop().await;
}

/// GET shows the mark; DELETE, PATCH and rotate-secret answer 409, while
/// PATCH may still pause and resume it.
async fn shown_and_refused(app: &App) {
    let r = app.get("/v1/subscriptions/care").send().await.unwrap();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let shown: Value = r.json().await.unwrap();
    check_response("GET", "/v1/subscriptions/{id}", 200, &ct, &shown);
    assert_eq!(shown["managed_by"], "config", "{shown}");
    assert_eq!(
        shown["filters"],
        json!([{"exact": {"data.gender": "female"}}])
    );
    let url = format!("{}/v1/subscriptions/care", app.base);
    let admin = crate::harness::ADMIN_TOKEN;
    let refusals = [
        app.http.delete(&url).bearer_auth(admin),
        app.http
            .patch(&url)
            .bearer_auth(admin)
            .json(&json!({"description": "x"})),
        app.http
            .patch(&url)
            .bearer_auth(admin)
            .json(&json!({"enabled": false, "ops": []})),
        app.post("/v1/subscriptions/care/rotate-secret", &json!({})),
    ];
    for r in refusals {
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 409);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct, "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["code"], "managed_by_config", "{p}");
        assert!(
            p["detail"].as_str().unwrap().contains("configuration file"),
            "{p}"
        );
    }
    assert_eq!(app.set_enabled("care", false).await.status(), 200);
    assert_eq!(app.set_enabled("care", true).await.status(), 200);
    let page = app.get("/").send().await.unwrap().text().await.unwrap();
    assert!(page.contains("care <small>(config)</small>"), "{page}");
}

on_both_stores!(a_declared_subscription_comes_back_when_the_store_loses_it);

async fn a_declared_subscription_comes_back_when_the_store_loses_it(ts: TestStore) {
    let sim = patients(20).await;
    let rx = TestReceiver::start(43).await;
    rx.set_secrets(&[SECRET]);
    let app = start(&ts, &sim, declare(&entry(&rx.url, FEMALE), SECRET)).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    crate::harness::wipe::wipe(&ts).await;
    eventually(
        "the subscription back",
        Duration::from_secs(30),
        async || {
            let r = app.get("/v1/subscriptions/care").send().await.unwrap();
            r.status() == 200 && r.json::<Value>().await.unwrap()["managed_by"] == "config"
        },
    )
    .await;
    app.stop().await;
}
