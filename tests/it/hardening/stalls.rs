//! Clients that hold connections without reading (issue 24, finding 1),
//! against the real server: a client that pipelines requests and never
//! reads its answers is cut off after `api.write_timeout`, a kept-alive
//! connection after `api.idle_timeout`, and `/healthz` answers while every
//! connection slot is held by such clients.

use std::time::Duration;

use stamp_relay::config::{Config, Paging};
use stamp_relay_simulator::SimConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::harness::{App, Backend, Sim, TestStore, source};

async fn app_with(sim: &Sim, tweak: impl FnOnce(&mut Config)) -> (TestStore, App) {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let app = App::spawn_with(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
        |c| {
            // Long enough that only the limit under test can end a connection.
            c.api.header_read_timeout = Duration::from_secs(60);
            c.api.write_timeout = Duration::from_secs(60);
            c.api.idle_timeout = Duration::from_secs(60);
            tweak(c);
        },
    )
    .await;
    (ts, app)
}

fn addr(app: &App) -> std::net::SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// A client that asks for the 48 KB API description `n` times on one
/// connection, with a small receive buffer, and reads nothing.
async fn never_reads(app: &App, n: usize) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr(app)).await.unwrap();
    let one = "GET /openapi.yaml HTTP/1.1\r\nHost: relay\r\n\r\n";
    s.write_all(one.repeat(n).as_bytes()).await.unwrap();
    s
}

/// Reads until the server closes the connection (or resets it).
async fn read_to_close(mut s: TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let read_all = async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    // Only a guard against hanging: the limits under test are far shorter.
    if tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .is_err()
    {
        panic!("the server kept the {what} connection open");
    }
    got
}

fn answers(got: &[u8]) -> usize {
    String::from_utf8_lossy(got).matches("HTTP/1.1 200").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_after_write_timeout() {
    let sim = Sim::start(SimConfig::default()).await;
    let (_ts, app) = app_with(&sim, |c| c.api.write_timeout = Duration::from_millis(500)).await;
    let asked = 400;
    let s = never_reads(&app, asked).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The server gave up on the answers it could not write: reading now
    // gets some of them and then the end, not all 400 and an open socket.
    let got = read_to_close(s, "unread").await;
    assert!(answers(&got) < asked, "all {asked} answers were written");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_idle_timeout() {
    let sim = Sim::start(SimConfig::default()).await;
    let (_ts, app) = app_with(&sim, |c| c.api.idle_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(s, "idle").await;
    assert_eq!(answers(&got), 1, "{}", String::from_utf8_lossy(&got));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_clients_that_never_read_hold_every_slot() {
    let sim = Sim::start(SimConfig::default()).await;
    let (_ts, app) = app_with(&sim, |c| c.api.max_connections = 2).await;
    let _a = never_reads(&app, 400).await;
    let _b = never_reads(&app, 400).await;
    // Both are stuck on an answer by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        reqwest::get(format!("{}/healthz", app.base)),
    )
    .await
    .expect("/healthz did not answer while clients that never read held every slot")
    .unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}
