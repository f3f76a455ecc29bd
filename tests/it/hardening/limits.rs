//! The `[api]` limits against the real server: live streams past
//! `max_sse_clients` get a 503 problem, slow headers are cut off after
//! `header_read_timeout`, and connections past `max_connections` wait.

use std::time::Duration;

use serde_json::Value;
use stamp_relay::config::Paging;
use stamp_relay_simulator::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{ADMIN_TOKEN, App, READ_TOKEN, Sim, TestStore, eventually, source};

/// A relay with `tweak`ed settings, and its store: the caller keeps the
/// store (its temporary folder) for as long as the relay runs.
async fn app_with(
    sim: &Sim,
    tweak: impl FnOnce(&mut stamp_relay::config::Config),
) -> (TestStore, App) {
    let ts = TestStore::open(crate::harness::Backend::Sqlite)
        .await
        .unwrap();
    let app = App::spawn_with(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
        tweak,
    )
    .await;
    (ts, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_past_the_cap_get_a_503_problem() {
    let sim = Sim::start(SimConfig::default()).await;
    let (_ts, app) = app_with(&sim, |c| c.api.max_sse_clients = 1).await;
    let open = || {
        app.http
            .get(format!("{}/v1/resources/sim/patients/events", app.base))
            .bearer_auth(READ_TOKEN)
            .header("accept", "text/event-stream")
            .send()
    };
    let first = open().await.unwrap();
    if first.status() != 200 {
        // Say what the relay answered: a flake here once gave no detail.
        let status = first.status();
        panic!(
            "first stream: {status} {}",
            first.text().await.unwrap_or_default()
        );
    }
    let second = open().await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["content-type"], "application/problem+json");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["code"], "too_many_streams");
    // Pages are not streams: they still answer.
    let page = app
        .get("/v1/resources/sim/patients/events?limit=1")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    drop(first);
    eventually(
        "the slot is given back",
        Duration::from_secs(10),
        async || open().await.unwrap().status() == 200,
    )
    .await;
    app.stop().await;
}

/// Reads until the server closes the connection; what it sent on the way.
async fn read_to_close(mut s: tokio::net::TcpStream, what: &str) -> String {
    let mut got = Vec::new();
    // Only a guard against hanging forever: the server closes well before.
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("the server kept the {what} connection open"))
        .ok();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let sim = Sim::start(SimConfig::default()).await;
    let (_ts, app) = app_with(&sim, |c| {
        c.api.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    for (what, conn) in [("silent", silent), ("partial", partial)] {
        let got = read_to_close(conn, what).await;
        assert!(!got.contains("200 OK"), "{what}: {got}");
    }
    // A whole request still answers.
    let ok = reqwest::get(format!("{}/healthz", app.base)).await.unwrap();
    assert_eq!(ok.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_one() {
    let sim = Sim::start(SimConfig::default()).await;
    let (_ts, app) = app_with(&sim, |c| {
        c.api.max_connections = 1;
        c.api.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // Takes the only slot: the server accepted it and waits for its headers.
    let holder = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Accepted after the holder: give the server the moment it needs to do so.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("{}/v1/resources", app.base);
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a second connection was served");
    drop(holder);
    let status = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting request was never served")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    app.stop().await;
}
