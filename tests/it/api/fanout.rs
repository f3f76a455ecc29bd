//! Live streams at scale (issue 26): many clients on one table each get
//! every event in order from one tail; a table nobody listens to costs no
//! store reads; a client that takes nothing is cut off while the others
//! keep receiving.

use std::time::Duration;

use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::SimConfig;

use crate::harness::sse::read_sse;
use crate::harness::{App, Backend, Sim, TestStore, all_events, eventually, source, wait_synced};

/// Opens a live stream from `after`.
async fn connect(app: &App, after: &str) -> (reqwest::Response, String) {
    let r = app
        .get("/v1/resources/sim/patients/events")
        .header("accept", "text/event-stream")
        .header("last-event-id", after)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (r, String::new())
}

/// The relay's count of connected live clients, from `/metrics`.
async fn live_clients(app: &App) -> u64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix("stamp_relay_live_stream_clients "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the live clients gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_clients_each_get_every_event_in_order() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 20)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 100);
    let app = App::spawn_with(&ts, vec![src], |c| {
        c.api.max_sse_clients = 320;
        c.api.max_connections = 700;
    })
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let top = ts.store.last_id(&t).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(connect(&app, &top.to_string()).await);
    }
    for _ in 0..3 {
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
    for (i, (resp, buf)) in clients.iter_mut().enumerate() {
        let got = read_sse(resp, buf, want.len(), Duration::from_secs(30)).await;
        let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, want, "client {i}");
    }
    app.stop().await;
}

/// XRANGE and XREAD calls the Redis server at `url` has answered so far.
async fn stream_reads(url: &str) -> u64 {
    let stats = stamp_relay::bench::sources::commandstats(url)
        .await
        .unwrap();
    ["xrange", "xread"]
        .iter()
        .filter_map(|c| stats.get(*c))
        .sum()
}

async fn reads_over_a_quiet_second(url: &str) -> u64 {
    let before = stream_reads(url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stream_reads(url).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_nobody_listens_to_costs_no_stream_reads() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 10)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
    )
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let url = ts.redis.as_ref().unwrap().url();
    assert_eq!(reads_over_a_quiet_second(&url).await, 0, "nobody listens");

    // A listener: its table's tail reads the stream every tick.
    let top = ts.store.last_id(&t).await.unwrap();
    let (resp, _) = connect(&app, &top.to_string()).await;
    assert!(reads_over_a_quiet_second(&url).await > 0, "someone listens");

    // The last listener gone, the tail stops (after the round it may be in).
    drop(resp);
    eventually("the client is gone", Duration::from_secs(10), async || {
        live_clients(&app).await == 0
    })
    .await;
    tokio::time::sleep(2 * stamp_relay::tail::TICK).await;
    assert_eq!(
        reads_over_a_quiet_second(&url).await,
        0,
        "nobody listens again"
    );
    app.stop().await;
}

/// A client that takes nothing while far more than socket buffers hold go
/// past is cut off once its writes stall for `api.write_timeout`; a client
/// that keeps up meanwhile gets every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_while_a_fast_one_gets_every_event() {
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
    let app = App::spawn_with(&ts, vec![src], |c| {
        c.api.write_timeout = Duration::from_secs(1);
    })
    .await;
    let (mut stalled, mut stalled_buf) = connect(&app, "0-0").await;
    let (mut fast, mut fast_buf) = connect(&app, "0-0").await;
    let read = read_sse(&mut fast, &mut fast_buf, total, Duration::from_secs(120)).await;
    let t = Table::new("sim", "patients");
    let want: Vec<String> = all_events(ts.store.as_ref(), &t)
        .await
        .into_iter()
        .map(|e| e.id.to_string())
        .collect();
    let ids: Vec<String> = read.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, want, "the client that kept up");
    eventually(
        "the stalled client is cut off",
        Duration::from_secs(30),
        async || live_clients(&app).await == 1,
    )
    .await;
    // What reached the stalled client's socket before the cut, and no more.
    let late = read_sse(
        &mut stalled,
        &mut stalled_buf,
        total,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        late.len() < total,
        "the stalled client got every event: not cut off"
    );
    app.stop().await;
}
