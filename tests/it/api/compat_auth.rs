//! The compatible API's OAuth route (`POST /compat/{source}/api/integration/auth/`,
//! src/api/compat_auth.rs): a client written for the upstream's OAuth, here
//! a second relay whose source is the first relay's `/compat`, needs only
//! a new base URL, with an API token's name and value as its credentials.

use serde_json::Value;
use stamp_relay::{
    config::{AuthConfig, Paging},
    store::Table,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::{App, READ_TOKEN, Sim, TestStore, assert_rebuilds, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(an_oauth_client_reads_compat_with_a_token_it_exchanged);

async fn token(app: &App, form: &[(&str, &str)]) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}/compat/sim/api/integration/auth/", app.base))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn an_oauth_client_reads_compat_with_a_token_it_exchanged(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 30)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 10);
    let first = App::spawn(&ts, vec![src]).await;
    wait_synced(ts.store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;

    let (status, body) = token(
        &first,
        &[("client_id", "dash"), ("client_secret", READ_TOKEN)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0), "{body}");
    let bearer = body["access_token"].as_str().unwrap();
    let listing = |path: &str| {
        first
            .http
            .get(format!("{}{path}", first.base))
            .bearer_auth(bearer)
    };
    let r = listing("/compat/sim/api/patients/?sync=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["count"], 30, "{page}");
    // Only the compatible API takes it, and only as issued.
    let v1 = listing("/v1/resources").send().await.unwrap();
    assert_eq!(v1.status(), 401);
    let tampered = first
        .http
        .get(format!("{}/compat/sim/api/patients/?sync=0", first.base))
        .bearer_auth(format!("{bearer}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 401);
    let wrong = [("client_id", "dash"), ("client_secret", "guess")];
    let (status, body) = token(&first, &wrong).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let other = [("client_id", "ops"), ("client_secret", READ_TOKEN)];
    assert_eq!(
        token(&first, &other).await.0,
        401,
        "the name must match the token"
    );
    let (status, body) = token(&first, &[("client_id", "dash")]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    // The relay's own OAuth client, pointed at the first relay's /compat.
    // SAFETY: tests only add variables with names no other test reads.
    unsafe {
        std::env::set_var("TEST_COMPAT_CLIENT_ID", "dash");
        std::env::set_var("TEST_COMPAT_CLIENT_SECRET", READ_TOKEN);
    }
    let mut chained = source(
        &format!("{}/compat/sim/api", first.base),
        &["patients"],
        Paging::Pages,
        10,
    );
    chained.name = "chain".into();
    chained.auth = AuthConfig::OAuth {
        client_id_env: "TEST_COMPAT_CLIENT_ID".into(),
        client_secret_env: "TEST_COMPAT_CLIENT_SECRET".into(),
        token_url: None,
    };
    let second = App::spawn(&ts, vec![chained]).await;
    let t = Table::new("chain", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
    second.stop().await;
    first.stop().await;
}
