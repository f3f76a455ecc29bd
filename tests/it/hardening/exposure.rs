//! What answers give away beyond their bodies (issue 24, findings 10 and
//! 13): answers carrying records or events, and the status page, are never
//! cached, sniffed or framed, and the compatible API's links never come
//! from the request's `Host`.

use std::time::Duration;

use serde_json::Value;
use stamp_relay::config::Paging;
use stamp_relay_simulator::SimConfig;

use crate::harness::{App, Backend, READ_TOKEN, Sim, TestStore, eventually, source};

async fn app_with(sim: &Sim, public_url: Option<&str>) -> (TestStore, App) {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let url = public_url.map(str::to_string);
    let app = App::spawn_with(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
        |c| c.api.public_url = url,
    )
    .await;
    (ts, app)
}

async fn five_patients() -> Sim {
    Sim::start(SimConfig {
        initial: vec![("patients".into(), 5)],
        ..SimConfig::default()
    })
    .await
}

/// Page 1 of the compatible listing, two records a page, once all five
/// are in; asked with a forged `Host`.
async fn first_page(app: &App) -> Value {
    let url = format!("{}/compat/sim/api/patients/?sync=0&page_size=2", app.base);
    let mut page = Value::Null;
    eventually("five records kept", Duration::from_secs(20), async || {
        page = app
            .get(&url.replace(&app.base, ""))
            .header("host", "attacker.example")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["count"] == 5
    })
    .await;
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_links_never_come_from_the_host_header() {
    let sim = five_patients().await;
    let (_ts, app) = app_with(&sim, None).await;
    let next = first_page(&app).await["next"].as_str().unwrap().to_string();
    assert!(
        next.starts_with("/compat/sim/api/patients/?"),
        "without api.public_url the link is relative: {next}"
    );
    app.stop().await;

    let (_ts, app) = app_with(&sim, Some("https://relay.example.org/")).await;
    let next = first_page(&app).await["next"].as_str().unwrap().to_string();
    assert!(
        next.starts_with("https://relay.example.org/compat/sim/api/patients/?"),
        "{next}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_patient_data_are_not_cached_sniffed_or_framed() {
    let sim = five_patients().await;
    let (_ts, app) = app_with(&sim, None).await;
    first_page(&app).await;
    let paths = [
        "/v1/resources/sim/patients/events?limit=10",
        "/compat/sim/api/patients/?sync=0",
        "/v1/resources",
        "/",
    ];
    for path in paths {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    let page = app
        .http
        .get(format!("{}/", app.base))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    app.stop().await;
}

/// The embedded store holds patient records and webhook secrets: its
/// folder is the relay user's alone (0700), and so are its files (0600),
/// the write-ahead log included.
#[tokio::test]
async fn the_embedded_store_is_readable_by_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("data");
    let _store = stamp_relay::store::sqlite::SqliteStore::open(&dir).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 2, "the database and its write-ahead log");
}

/// A live stream whose store fails ends with an `error` event that does
/// not tell a read-token holder where the store is (the address goes to
/// the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_streams_store_error_does_not_show_the_redis_address() {
    let Some(mut ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = five_patients().await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
    )
    .await;
    let url = ts.redis.as_ref().unwrap().url();
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    ts.redis.as_mut().unwrap().kill();
    // The position check asks the store first (a 503 problem), or the stream
    // begins and its first read of the backlog fails (an error event):
    // neither may show where the store is.
    let mut r = app
        .http
        .get(format!(
            "{}/v1/resources/sim/patients/events?after=0",
            app.base
        ))
        .bearer_auth(READ_TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    if r.status() == 503 {
        text = r.text().await.unwrap();
    } else {
        assert_eq!(r.status(), 200);
        while !text.contains("event: error") {
            let chunk = tokio::time::timeout(Duration::from_secs(30), r.chunk())
                .await
                .expect("no error event")
                .unwrap()
                .expect("the stream ended without an error event");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(text.contains("store_unavailable"), "{text}");
    assert!(!text.contains(port), "the Redis address shows: {text}");
    app.stop().await;
}
