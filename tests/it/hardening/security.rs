//! Hardening against the real server: a web page the operator visits cannot
//! write with the browser's Basic login, `/readyz` leaks no upstream detail,
//! an environment proxy never carries a request, and two PATCHes at once
//! both land.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use serde_json::{Value, json};
use stamp_relay::{
    config::{Paging, SourceConfig},
    store::update_subscription,
};
use stamp_relay_simulator::SimConfig;

use crate::harness::app_with_subscription;
use crate::harness::{
    ADMIN_TOKEN, Api, App, ConfigBuilder, Proc, Sim, TestStore, eventually, free_port, serve,
    source, upstream,
};
use crate::on_both_stores;

on_both_stores!(concurrent_patches_lose_nothing);

fn basic(token: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("operator:{token}"));
    format!("Basic {b64}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_forms_are_refused_without_side_effects() {
    let ts = TestStore::open(crate::harness::Backend::Sqlite)
        .await
        .unwrap();
    let (_sim, app, created) = app_with_subscription(&ts).await;
    let id = created["id"].as_str().unwrap().to_string();
    let json_body = r#"{"url":"https://attacker.example/h","resources":["*"]}"#;
    // What a hostile page can send without a CORS preflight.
    let forms = [
        ("text/plain", json_body.to_string()),
        ("text/plain;a=+json", json_body.to_string()),
        (
            "application/x-www-form-urlencoded",
            "url=https%3A%2F%2Fattacker.example%2Fh&resources=*".to_string(),
        ),
        (
            "multipart/form-data; boundary=XX",
            format!(
                "--XX\r\nContent-Disposition: form-data; name=\"{json_body}\"\r\n\r\nx\r\n--XX--\r\n"
            ),
        ),
    ];
    let writes = [
        (reqwest::Method::POST, "/v1/subscriptions".to_string()),
        (reqwest::Method::PATCH, format!("/v1/subscriptions/{id}")),
        (
            reqwest::Method::POST,
            format!("/v1/subscriptions/{id}/rotate-secret"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/subscriptions/{id}/replay"),
        ),
        (reqwest::Method::DELETE, format!("/v1/subscriptions/{id}")),
    ];
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for (method, path) in &writes {
        for (ct, body) in &forms {
            let r = send(&app, method, path, &basic(ADMIN_TOKEN), (ct, body)).await;
            assert_eq!(
                r,
                (401, "bearer_required".into()),
                "{method} {path} as {ct} with Basic"
            );
        }
    }
    // With the Bearer token, a form body still is not JSON.
    for (ct, body) in &forms {
        let r = send(
            &app,
            &reqwest::Method::POST,
            "/v1/subscriptions",
            &bearer,
            (ct, body),
        )
        .await;
        assert_eq!(r, (415, "unsupported_media_type".into()), "{ct}");
    }
    // Nothing changed, and Basic still reads.
    let listed: Value = app
        .http
        .get(format!("{}/v1/subscriptions", app.base))
        .header("authorization", basic(ADMIN_TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subs = listed["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{listed}");
    assert_eq!(subs[0]["url"], "https://hooks.example.com/h");
    assert_eq!(subs[0]["updated_ms"], created["updated_ms"]);
    let stored = ts.store.subscription(&id).await.unwrap().unwrap();
    assert_eq!(stored.secret.as_str(), created["secret"].as_str().unwrap());
    assert_eq!(stored.version, 0, "no write reached the store");
    app.stop().await;
}

/// Sends a body as a form would, answering the problem's status and code.
async fn send(
    app: &App,
    method: &reqwest::Method,
    path: &str,
    authorization: &str,
    (content_type, body): (&str, &str),
) -> (u16, String) {
    let r = app
        .http
        .request(method.clone(), format!("{}{path}", app.base))
        .header("authorization", authorization)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "application/problem+json", "answer {status}");
    let body: Value = r.json().await.unwrap();
    (status, body["code"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_parts_without_upstream_detail() {
    let ts = TestStore::open(crate::harness::Backend::Sqlite)
        .await
        .unwrap();
    let dead = format!("http://127.0.0.1:{}/private-upstream-path", free_port());
    let app = App::spawn(&ts, vec![source(&dead, &["patients"], Paging::Pages, 100)]).await;
    eventually("the poll fails", Duration::from_secs(20), async || {
        let r = app.get_json("/v1/resources").await;
        r["resources"][0]["last_error"].is_string()
    })
    .await;
    let behind_token = app.get_json("/v1/resources").await;
    let error = behind_token["resources"][0]["last_error"].as_str().unwrap();
    let ready = reqwest::get(format!("{}/readyz", app.base)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let text = ready.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["parts"][1],
        json!({"name": "poller:sim/patients", "ready": true})
    );
    for secret in ["private-upstream-path", "127.0.0.1", error] {
        assert!(!text.contains(secret), "/readyz shows {secret:?}: {text}");
    }
    app.stop().await;
}

/// A fake proxy that counts the connections it gets and answers none.
async fn counting_proxy() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxy_is_never_used() {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 5)],
        ..SimConfig::default()
    })
    .await;
    let (proxy_port, proxied) = counting_proxy().await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let source = SourceConfig {
        poll_interval: Duration::from_millis(100),
        ..upstream("sim", &sim.base_url, &["patients"])
    };
    let cfg = ConfigBuilder::new()
        .data_dir(dir.path().join("data"))
        .listen(port)
        .admin_token_env("RELAY_TEST_ADMIN")
        .delivery(|d| d.request_timeout = Duration::from_secs(3))
        .source(source)
        .write(&dir.path().join("relay.toml"));
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let mut cmd = serve(&cfg);
    cmd.env("RELAY_TEST_ADMIN", ADMIN_TOKEN)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, &proxy);
    }
    let _child = cmd.spawn().map(Proc).unwrap();
    // The test's own requests go direct too (`Api` reads no proxy variables).
    let api = Api::local(port, ADMIN_TOKEN);
    // The upstream poll went direct: through the silent proxy it could not succeed.
    eventually(
        "the upstream is polled",
        Duration::from_secs(30),
        async || {
            let Ok(r) = api.get("/v1/resources").send().await else {
                return false;
            };
            let body: Value = r.json().await.unwrap_or_default();
            body["resources"][0]["last_ok_ms"].is_u64()
        },
    )
    .await;
    let body = json!({"url": "http://metadata.internal.invalid/latest", "resources": ["*"], "enabled": false});
    let created = api.post_json("/v1/subscriptions", &body).await;
    let id = created["id"].as_str().unwrap();
    let sent = api
        .post_json(&format!("/v1/subscriptions/{id}/test"), &json!({}))
        .await;
    // Direct, the name does not resolve; through the proxy it would have
    // been the proxy's to fetch (and the proxy would have seen it).
    assert_ne!(sent["outcome"], "delivered", "{sent}");
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "a request went to the proxy"
    );
}

/// Two PATCHes of different fields at once, many times over: each round
/// both changes are kept (a read-modify-write without a version check
/// loses one of them now and then).
async fn concurrent_patches_lose_nothing(ts: TestStore) {
    let (_sim, app, created) = app_with_subscription(&ts).await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/v1/subscriptions/{id}");
    let patch = |body: Value| app.patch(&path, &body).send();
    for round in 1..=25u32 {
        let description = format!("round {round}");
        let (a, b) = tokio::join!(
            patch(json!({"description": description})),
            patch(json!({"batch_size": round})),
        );
        assert_eq!(a.unwrap().status(), 200);
        assert_eq!(b.unwrap().status(), 200);
        let now = app.get_json(&format!("/v1/subscriptions/{id}")).await;
        assert_eq!(
            (
                now["description"].as_str().unwrap(),
                now["batch_size"].as_u64().unwrap()
            ),
            (description.as_str(), u64::from(round)),
            "round {round} lost an update"
        );
    }
    // A write naming a version that is no longer stored is refused.
    let stale = ts.store.subscription(&id).await.unwrap().unwrap();
    assert_eq!(stale.version, 50, "two updates a round");
    update_subscription(ts.store.as_ref(), &id, |s| {
        s.description = "newer".into();
        Ok::<_, stamp_relay::store::StoreError>(())
    })
    .await
    .unwrap()
    .unwrap();
    let mut lost = stale.clone();
    lost.version += 1;
    assert!(
        !ts.store
            .replace_subscription(&lost, stale.version)
            .await
            .unwrap()
    );
    let kept = ts.store.subscription(&id).await.unwrap().unwrap();
    assert_eq!((kept.description.as_str(), kept.version), ("newer", 51));
    app.stop().await;
}
