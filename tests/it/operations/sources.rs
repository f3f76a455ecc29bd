//! Sources as data (issue 21, items 1 and 8): the document store under
//! `/v1/sources` on both backends, the routes, sealed credentials, pause,
//! resume, delete and purge, a second instance, and the nudge.

use stamp_relay::store::{Table, update_document};

use crate::harness::TestStore;
use crate::on_both_stores;

on_both_stores!(documents_compare_and_set_and_count_writes);

/// `put_document` writes only over the version read (0: only a new one),
/// every write and delete raises the kind's counter, and kinds are apart.
async fn documents_compare_and_set_and_count_writes(ts: TestStore) {
    let s = ts.store.as_ref();
    assert_eq!(s.documents_version("sources").await.unwrap(), 0);
    assert_eq!(
        s.put_document("sources", "a", "{\"x\":1}", 0)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        s.put_document("sources", "a", "{\"x\":2}", 0)
            .await
            .unwrap(),
        None,
        "exists"
    );
    assert_eq!(
        s.put_document("sources", "a", "{\"x\":2}", 1)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        s.put_document("sources", "a", "{\"x\":3}", 1)
            .await
            .unwrap(),
        None,
        "stale"
    );
    s.put_document("sources", "b", "{}", 0).await.unwrap();
    s.put_document("other", "a", "{}", 0).await.unwrap();
    assert_eq!(s.documents_version("sources").await.unwrap(), 3);
    let all = s.documents("sources").await.unwrap();
    let names: Vec<_> = all.iter().map(|d| (d.name.as_str(), d.version)).collect();
    assert_eq!(names, [("a", 2), ("b", 1)]);
    assert_eq!(
        s.document("sources", "a").await.unwrap().unwrap().json,
        "{\"x\":2}"
    );
    let updated = update_document(s, "sources", "a", |v: &mut serde_json::Value| {
        v["y"] = 1.into();
        Ok::<_, stamp_relay::store::StoreError>(())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(updated, serde_json::json!({"x": 2, "y": 1}));
    assert!(s.delete_document("sources", "a").await.unwrap());
    assert!(!s.delete_document("sources", "a").await.unwrap());
    assert_eq!(s.documents_version("sources").await.unwrap(), 5);
    assert!(s.document("sources", "a").await.unwrap().is_none());
    assert_eq!(s.documents("other").await.unwrap().len(), 1);
    // A purge of a table that never existed is a no-op.
    s.purge_table(&Table::new("nope", "r"), &["x".into()])
        .await
        .unwrap();
}

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use stamp_relay::config::{AuthConfig, Secret};
use stamp_relay_simulator::{SimAuth, SimConfig};

use crate::harness::{
    App, ConfigBuilder, Sim, assert_rebuilds, eventually, free_port, serve, upstream, wait_synced,
};

const CLIENT_SECRET: &str = "api-made-client-secret-5521";

/// A simulator asking for OAuth with [`CLIENT_SECRET`], `patients` patients.
async fn oauth_sim(patients: usize) -> Sim {
    Sim::start(SimConfig {
        auth: SimAuth::OAuth {
            client_id: "relay".into(),
            client_secret: CLIENT_SECRET.into(),
            token_ttl: Duration::from_secs(60),
        },
        initial: vec![("patients".into(), patients)],
        ..SimConfig::default()
    })
    .await
}

fn test_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

/// A relay with no source of its own and the sealing key set.
async fn keyed_relay(ts: &TestStore) -> App {
    App::spawn_with(ts, vec![], |c| {
        c.source_keys.current = Some(Secret::new(test_key()))
    })
    .await
}

/// The body that makes source `name` over the simulator's patients.
fn body(name: &str, sim: &Sim, interval: &str) -> Value {
    json!({
        "name": name, "base_url": sim.base_url, "resources": ["patients"],
        "poll_interval": interval, "page_size": 100, "retry_base": "20ms", "retry_max": "200ms",
        "auth": {"kind": "oauth", "client_id": "relay", "client_secret": CLIENT_SECRET},
    })
}

/// Waits until the simulator's request count stays put for a while, and
/// answers it: no poll is running or due.
async fn quiet(sim: &Sim, interval: Duration) -> usize {
    let mut last = usize::MAX;
    let mut out = 0;
    eventually(
        "the simulator to see no more requests",
        Duration::from_secs(30),
        async || {
            tokio::time::sleep(interval * 4).await;
            let now = sim.sim.requests().len();
            let still = now == last;
            (last, out) = (now, now);
            still
        },
    )
    .await;
    out
}

on_both_stores!(an_api_made_source_polls_pauses_resumes_and_goes);

/// Create -> events arrive; the secret is in no answer and no stored byte;
/// pause -> no request; resume -> no loss, no duplicate; delete -> polling
/// stops and the stream stays; purge -> the table's keys are gone.
async fn an_api_made_source_polls_pauses_resumes_and_goes(ts: TestStore) {
    let sim = oauth_sim(30).await;
    let app = keyed_relay(&ts).await;
    let r = app
        .post("/v1/sources", &body("acme", &sim, "100ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert!(
        created["nudge_token"]
            .as_str()
            .unwrap()
            .starts_with("nudge_")
    );
    let t = Table::new("acme", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let shown = app.get_json("/v1/sources/acme").await;
    assert_eq!(shown["auth"]["kind"], "oauth");
    assert_eq!(shown["auth"]["fingerprint"].as_str().unwrap().len(), 8);
    for answer in [
        created.to_string(),
        shown.to_string(),
        app.get_json("/v1/sources").await.to_string(),
    ] {
        assert!(!answer.contains(CLIENT_SECRET), "{answer}");
    }
    assert_no_plaintext(&ts, CLIENT_SECRET).await;

    let r = app
        .patch("/v1/sources/acme", &json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "paused");
    let before = quiet(&sim, Duration::from_millis(100)).await;
    sim.sim.random_writes(Some("patients"), 10);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sim.sim.requests().len(),
        before,
        "a paused source was polled"
    );

    let r = app
        .patch("/v1/sources/acme", &json!({"paused": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;

    assert_eq!(
        app.delete("/v1/sources/acme")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let before = quiet(&sim, Duration::from_millis(100)).await;
    sim.sim.random_writes(Some("patients"), 5);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sim.sim.requests().len(),
        before,
        "a removed source was polled"
    );
    assert!(
        ts.store.stream_len(&t).await.unwrap() > 0,
        "the stream stays"
    );
    assert_eq!(
        app.get("/v1/sources/acme").send().await.unwrap().status(),
        404
    );

    // Purge: made again under another name, then removed with its keys.
    let r = app
        .post("/v1/sources", &body("gone", &sim, "100ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let g = Table::new("gone", "patients");
    wait_synced(ts.store.as_ref(), &g, &sim.sim).await;
    let r = app
        .delete("/v1/sources/gone?purge=true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(ts.store.stream_len(&g).await.unwrap(), 0);
    assert_eq!(ts.store.index_len(&g).await.unwrap(), 0);
    assert!(ts.store.epoch(&g).await.unwrap().is_none());
    assert!(
        ts.store.stream_len(&t).await.unwrap() > 0,
        "another source's stream stays"
    );
    app.stop().await;
}

/// The store's raw bytes (the Redis hash, the SQLite file) hold no
/// plaintext credential.
async fn assert_no_plaintext(ts: &TestStore, secret: &str) {
    if let Some(redis) = &ts.redis {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let raw: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg("test:sources")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(raw.iter().any(|(k, _)| k == "acme"), "{raw:?}");
        for (_, v) in raw {
            assert!(!v.contains(secret) && !v.contains("\"relay\""), "{v}");
        }
    } else {
        let db = ts.config.data_dir.join("stamp-relay.sqlite3");
        let c = rusqlite::Connection::open(db).unwrap();
        let body: String = c
            .query_row(
                "SELECT body FROM documents WHERE kind = 'sources' AND name = 'acme'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            body.contains("ciphertext") && !body.contains(secret),
            "{body}"
        );
    }
}

on_both_stores!(the_file_s_sources_are_managed_by_config_and_problems_name_fields);

async fn the_file_s_sources_are_managed_by_config_and_problems_name_fields(ts: TestStore) {
    let sim = oauth_sim(3).await;
    let mut file = upstream("sim", &sim.base_url, &["patients"]);
    file.auth = AuthConfig::None;
    let app = App::spawn(&ts, vec![file]).await;
    for r in [
        app.patch("/v1/sources/sim", &json!({"paused": true}))
            .send()
            .await
            .unwrap(),
        app.delete("/v1/sources/sim").send().await.unwrap(),
        app.post("/v1/sources", &body("sim", &sim, "1s"))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(r.status(), 409);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["code"], "managed_by_config", "{p}");
    }
    let listed = app.get_json("/v1/sources").await;
    assert_eq!(listed["sources"][0]["managed_by"], "config", "{listed}");
    let mut bad = body("x", &sim, "1s");
    bad["base_url"] = "ftp://upstream.example".into();
    bad["page_size"] = 0.into();
    let r = app.post("/v1/sources", &bad).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "base_url", "{p}");
    let problems = p["problems"].to_string();
    assert!(
        problems.contains("page_size: must be between 1 and 10000"),
        "{problems}"
    );
    let mut unknown = body("x", &sim, "1s");
    unknown["polling"] = true.into();
    let p: Value = app
        .post("/v1/sources", &unknown)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(p["detail"].as_str().unwrap().contains("polling"), "{p}");
    // Credentials without the sealing key: refused, naming the variable.
    let r = app
        .post("/v1/sources", &body("x", &sim, "1s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let p: Value = r.json().await.unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("STAMP_RELAY_SOURCE_KEY"),
        "{p}"
    );
    assert!(!p.to_string().contains(CLIENT_SECRET));
    // Paging and search, without credentials (no key needed).
    for name in ["b-one", "b-two", "c-three"] {
        let mut b = body(name, &sim, "1h");
        b["auth"] = json!({"kind": "none"});
        b["paused"] = true.into();
        assert_eq!(
            app.post("/v1/sources", &b).send().await.unwrap().status(),
            201
        );
    }
    let page = app.get_json("/v1/sources?limit=2&page=1").await;
    assert_eq!(
        (page["total"].as_u64(), page["next_page"].as_u64()),
        (Some(4), Some(2)),
        "{page}"
    );
    let found = app.get_json("/v1/sources?q=B-&state=paused").await;
    let names: Vec<&str> = found["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b-one", "b-two"]);
    app.stop().await;
}

on_both_stores!(a_second_instance_follows_api_made_sources);

/// An instance on the same store starts polling a source made on another,
/// and drops it when it is removed there.
async fn a_second_instance_follows_api_made_sources(ts: TestStore) {
    let sim = oauth_sim(5).await;
    let (a, b) = (keyed_relay(&ts).await, keyed_relay(&ts).await);
    let r = a
        .post("/v1/sources", &body("acme", &sim, "200ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let listed = async |app: &App| {
        let v = app.get_json("/v1/resources").await;
        v.to_string().contains("acme")
    };
    eventually(
        "instance b to list acme's table",
        Duration::from_secs(10),
        async || listed(&b).await,
    )
    .await;
    wait_synced(ts.store.as_ref(), &Table::new("acme", "patients"), &sim.sim).await;
    assert_eq!(
        a.delete("/v1/sources/acme").send().await.unwrap().status(),
        204
    );
    eventually(
        "instance b to drop acme",
        Duration::from_secs(10),
        async || !listed(&b).await,
    )
    .await;
    a.stop().await;
    b.stop().await;
}

on_both_stores!(a_nudge_polls_now_and_carries_no_data);

/// With an hour's interval, a nudge (the source's own token) polls at once;
/// its body is not data; a wrong token is refused.
async fn a_nudge_polls_now_and_carries_no_data(ts: TestStore) {
    let sim = oauth_sim(4).await;
    let app = keyed_relay(&ts).await;
    let created: Value = app
        .post_json("/v1/sources", &body("acme", &sim, "1h"))
        .await;
    let token = created["nudge_token"].as_str().unwrap().to_string();
    let mut other = body("other", &sim, "1h");
    other["paused"] = true.into();
    let other: Value = app.post_json("/v1/sources", &other).await;
    let t = Table::new("acme", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let before = quiet(&sim, Duration::from_millis(100)).await;
    sim.sim.random_writes(Some("patients"), 3);
    let url = format!("{}/v1/sources/acme/nudge", app.base);
    let forged = json!({"results": [{"uuid": "forged", "update_stamp": 999999}]});
    for wrong in [
        other["nudge_token"].as_str().unwrap(),
        crate::harness::READ_TOKEN,
        "nudge_nope",
    ] {
        let r = app
            .http
            .post(&url)
            .bearer_auth(wrong)
            .json(&forged)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
    }
    assert_eq!(sim.sim.requests().len(), before, "a refused nudge polled");
    let r = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert!(sim.sim.requests().len() > before);
    assert!(ts.store.index_entry(&t, "forged").await.unwrap().is_none());
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
    app.stop().await;
}

/// A relay subprocess with debug logs: a source made through its API with
/// credentials never shows them in its logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_made_credentials_never_reach_the_logs() {
    let ts = TestStore::open(crate::harness::Backend::Sqlite)
        .await
        .unwrap();
    let sim = oauth_sim(5).await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let cfg = ConfigBuilder::on(&ts.config)
        .listen(port)
        .admin_token_env("SR_SRC_ADMIN")
        .write(&dir.path().join("relay.toml"));
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let admin = "sources-admin-token-0042";
    let _relay = crate::harness::Proc(
        serve(&cfg)
            .env("SR_SRC_ADMIN", admin)
            .env("STAMP_RELAY_SOURCE_KEY", test_key())
            .env("RUST_LOG", "debug,hyper=info,reqwest=info,h2=info")
            .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let api = crate::harness::Api::local(port, admin);
    api.wait_healthy().await;
    let r = api
        .post("/v1/sources", &body("acme", &sim, "100ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t = Table::new("acme", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let mut rotated = body("acme", &sim, "100ms");
    rotated["auth"]["client_secret"] = "wrong-secret-7781".into();
    let r = api
        .patch("/v1/sources/acme", &json!({"auth": rotated["auth"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(
        "the change to be logged",
        Duration::from_secs(10),
        async || {
            std::fs::read_to_string(&log_path)
                .unwrap()
                .contains("source changed")
        },
    )
    .await;
    // Polls with the wrong secret fail meanwhile, and say why.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("source created"),
        "debug logs were not captured"
    );
    for secret in [CLIENT_SECRET, "wrong-secret-7781", &test_key()] {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
    }
}

/// `GET /v1/sources` at 2,000 sources (paused, so nothing polls): the
/// relay loads them all from the store, pages them and filters by state.
/// Prints how long the answers took (a figure, not an assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_works_at_two_thousand_sources() {
    let Some(ts) = TestStore::open(crate::harness::Backend::Redis).await else {
        return;
    };
    let app = keyed_relay(&ts).await;
    let started = std::time::Instant::now();
    for i in 0..2000 {
        let name = format!("org-{i:04}");
        let doc = json!({
            "settings": {"name": name, "base_url": "http://127.0.0.1:9/api", "resources": ["patients", "assessments"]},
            "paused": true, "created_ms": 1, "updated_ms": 1,
        });
        let doc = doc.to_string();
        let put = ts.store.put_document("sources", &name, &doc, 0);
        assert_eq!(put.await.unwrap(), Some(1));
    }
    eventually(
        "every stored source to be loaded",
        Duration::from_secs(120),
        async || {
            let v = app.get_json("/v1/sources?limit=1&state=paused").await;
            v["total"] == 2000
        },
    )
    .await;
    let loaded = started.elapsed();
    let t = std::time::Instant::now();
    let page = app.get_json("/v1/sources?page=20&limit=100").await;
    let paged = t.elapsed();
    let t = std::time::Instant::now();
    let found = app
        .get_json("/v1/sources?q=org-19&state=paused&limit=1000")
        .await;
    let filtered = t.elapsed();
    assert_eq!(page["sources"].as_array().unwrap().len(), 100);
    assert_eq!(page["sources"][0]["name"], "org-1900");
    assert_eq!(page["next_page"], Value::Null);
    assert_eq!(found["total"], 100);
    println!(
        "2000 sources x 2 tables: stored and loaded {loaded:.1?}; GET page 20 of 100: {paged:.1?}; \
         GET ?q=&state=paused: {filtered:.1?}"
    );
    app.stop().await;
}
