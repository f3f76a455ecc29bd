//! Live streams (SSE) with several clients on another instance than the
//! one that appends: every client, the one that reads only at the end
//! included, gets every new event once, in stream order.

use std::time::Duration;

use stamp_relay::{app::Relay, config::Paging, store::Table};
use stamp_relay_simulator::SimConfig;
use tokio_util::sync::CancellationToken;

use crate::harness::sse::read_sse;
use crate::harness::{
    ADMIN_TOKEN, App, Backend, Sim, TestStore, all_events, config, source, wait_synced, with_tokens,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_on_one_instance_reach_every_live_client_of_another() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 5)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 50);
    // Instance A polls and appends.
    let a = App::spawn(&ts, vec![src.clone()]).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let top = ts.store.last_id(&t).await.unwrap();
    // Instance B only serves the API: no poll loop, so nothing it streams
    // was appended by it; its tail finds A's appends in the store.
    let mut config = config(&ts.config, vec![src]);
    with_tokens(&mut config);
    let b = Relay::with_store(config, ts.store.clone()).unwrap();
    let cancel = CancellationToken::new();
    let state = b.api_state(&cancel);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stamp_relay::api::serve(listener, state, cancel.clone()));
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let r = http
            .get(format!("{base}/v1/resources/sim/patients/events"))
            .bearer_auth(ADMIN_TOKEN)
            .header("accept", "text/event-stream")
            .header("last-event-id", top.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        clients.push((r, String::new()));
    }
    for _ in 0..4 {
        sim.sim.random_writes(Some("patients"), 10);
        wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    }
    let want: Vec<String> = all_events(ts.store.as_ref(), &t)
        .await
        .into_iter()
        .filter(|e| e.id > top)
        .map(|e| e.id.to_string())
        .collect();
    assert!(want.len() >= 10);
    // The clients read one after another; the last has not read anything
    // until now.
    for (i, (resp, buf)) in clients.iter_mut().enumerate() {
        let got = read_sse(resp, buf, want.len(), Duration::from_secs(20)).await;
        let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, want, "client {i}");
    }
    cancel.cancel();
    a.stop().await;
}

/// A client that reads nothing while far more events than the tail's
/// buffer (`tail::BUFFER`) and any socket buffers hold go past must lag
/// behind the broadcast; it then catches up from the store and, like a
/// client that keeps up, gets every event once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_catches_up_from_the_store() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let total = 6 * stamp_relay::tail::BUFFER;
    let sim = Sim::start(SimConfig {
        order: stamp_relay_simulator::Order::Stamp,
        initial: vec![("patients".into(), total)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["patients"], Paging::Keyset, 1000);
    // No poll before the clients are connected.
    src.poll_interval = Duration::from_millis(500);
    let app = App::spawn(&ts, vec![src]).await;
    let connect = async || {
        let r = app
            .get("/v1/resources/sim/patients/events")
            .header("accept", "text/event-stream")
            .header("last-event-id", "0-0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        (r, String::new())
    };
    let (mut lagging, mut lag_buf) = connect().await;
    let (mut steady, mut steady_buf) = connect().await;
    let t = Table::new("sim", "patients");
    let read = read_sse(
        &mut steady,
        &mut steady_buf,
        total,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(read.len(), total);
    let want: Vec<String> = all_events(ts.store.as_ref(), &t)
        .await
        .into_iter()
        .map(|e| e.id.to_string())
        .collect();
    let ids: Vec<String> = read.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, want, "the client that kept up");
    let late = read_sse(&mut lagging, &mut lag_buf, total, Duration::from_secs(120)).await;
    let ids: Vec<String> = late.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, want, "the client that lagged");
    app.stop().await;
}
