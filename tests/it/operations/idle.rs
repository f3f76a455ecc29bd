//! What an idle poll costs the store (issue 21): nothing changed upstream,
//! so a poll sends at most six commands to Redis in at most two round
//! trips, besides its one upstream request. Counted by a proxy between the
//! relay and a real Redis that parses the commands the relay sends, so the
//! count is the relay's, not a timing.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use stamp_relay::{
    config::Paging,
    delivery::{RELIST_EVERY, SUPERVISE_EVERY},
    store::{self, Table},
};
use stamp_relay_simulator::{Order, SimConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::harness::delivery::{subscribe_to, wait_delivered};
use crate::harness::receiver::TestReceiver;
use crate::harness::{App, Backend, Sim, TestStore, config, poll_until_quiet, source, wait_synced};
use crate::on_both_stores;

/// Commands the relay sent and its round trips: a burst of commands sent
/// after Redis last answered is one round trip.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    commands: u64,
    round_trips: u64,
}

#[derive(Default)]
struct Tally {
    counts: Counts,
    answered: bool,
}

/// A TCP proxy in front of a Redis that counts what passes through it.
struct CountingProxy {
    port: u16,
    tally: Arc<Mutex<Tally>>,
    cancel: CancellationToken,
}

impl CountingProxy {
    async fn start(redis_port: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tally = Arc::new(Mutex::new(Tally {
            answered: true,
            ..Tally::default()
        }));
        let cancel = CancellationToken::new();
        let (t, c) = (tally.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    () = c.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let server = TcpStream::connect(("127.0.0.1", redis_port)).await.unwrap();
                tokio::spawn(relay_connection(client, server, t.clone(), c.clone()));
            }
        });
        CountingProxy {
            port,
            tally,
            cancel,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn counts(&self) -> Counts {
        self.tally.lock().unwrap().counts
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn relay_connection(
    client: TcpStream,
    server: TcpStream,
    tally: Arc<Mutex<Tally>>,
    cancel: CancellationToken,
) {
    let (mut client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let up_tally = tally.clone();
    let up = async move {
        let (mut buf, mut pending) = (vec![0u8; 64 * 1024], Vec::new());
        loop {
            let n = client_r.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            {
                let mut t = up_tally.lock().unwrap();
                if std::mem::take(&mut t.answered) {
                    t.counts.round_trips += 1;
                }
                t.counts.commands += take_commands(&mut pending);
            }
            if server_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_r.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            tally.lock().unwrap().answered = true;
            if client_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = up => {}
        () = down => {}
    }
}

/// Removes the complete commands (RESP arrays of bulk strings) at the
/// start of `pending` and says how many there were.
fn take_commands(pending: &mut Vec<u8>) -> u64 {
    let mut n = 0;
    while let Some(used) = command_len(pending) {
        pending.drain(..used);
        n += 1;
    }
    n
}

fn command_len(b: &[u8]) -> Option<usize> {
    let (args, mut at) = header(b, 0, b'*')?;
    for _ in 0..args {
        let (len, start) = header(b, at, b'$')?;
        at = start + len + 2;
    }
    (at <= b.len()).then_some(at)
}

/// The number after `tag` on the line at `at`, and where the next line starts.
fn header(b: &[u8], at: usize, tag: u8) -> Option<(usize, usize)> {
    assert_eq!(
        *b.get(at)?,
        tag,
        "the relay sent something other than a RESP command"
    );
    let end = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&b[at + 1..end]).ok()?.parse().ok()?;
    Some((n, end + 2))
}

#[test]
fn commands_are_counted_across_reads() {
    let cmd = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
    let mut pending = cmd[..10].to_vec();
    assert_eq!(take_commands(&mut pending), 0);
    pending.extend_from_slice(&cmd[10..]);
    assert_eq!(take_commands(&mut pending), 2);
    assert!(pending.is_empty());
}

const IDLE_POLLS: u64 = 10;

/// Calls per command since the Redis on `port` started.
async fn commandstats(port: u16) -> std::collections::HashMap<String, u64> {
    stamp_relay::bench::sources::commandstats(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_costs_at_most_six_commands_in_two_round_trips() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let redis_port = ts.redis.as_ref().unwrap().port;
    let proxy = CountingProxy::start(redis_port).await;
    let mut cfg = ts.config.clone();
    cfg.redis_url = Some(proxy.url());
    // No renewal falls inside a poll, however slow the machine.
    cfg.lease_ttl = Duration::from_secs(60);
    let store = store::open(&cfg).await.unwrap();
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 48)],
        order: Order::Stamp,
        ..SimConfig::default()
    })
    .await;
    let sources = [("keyset", Paging::Keyset), ("pages", Paging::Pages)]
        .map(|(name, paging)| stamp_relay::config::SourceConfig {
            name: name.into(),
            ..source(&sim.base_url, &["patients"], paging, 20)
        })
        .to_vec();
    let mut relay = stamp_relay::app::Relay::with_store(config(&cfg, sources), store).unwrap();
    poll_until_quiet(&mut relay, 20).await;
    let cancel = CancellationToken::new();
    for poller in relay.pollers.iter_mut() {
        // The first idle poll after the load still learns what the index holds.
        poller.poll_once(&cancel).await.unwrap();
        let before = proxy.counts();
        let stats_before = commandstats(redis_port).await;
        for _ in 0..IDLE_POLLS {
            let r = poller.poll_once(&cancel).await.unwrap();
            assert!(r.leased && r.outcome.appended() == 0, "{r:?}");
        }
        let stats_after = commandstats(redis_port).await;
        let after = proxy.counts();
        // What Redis ran, the commands inside scripts included.
        let ran: u64 = (stats_after.iter())
            .filter(|(name, _)| *name != "info")
            .map(|(name, n)| n - stats_before.get(name).copied().unwrap_or(0))
            .sum();
        let ran = ran as f64 / IDLE_POLLS as f64;
        eprintln!(
            "{}: Redis ran {ran} commands per idle poll: {stats_after:?}",
            poller.table
        );
        assert!(
            ran <= 6.0,
            "{}: Redis ran {ran} commands per idle poll, scripts' included",
            poller.table
        );
        let commands = (after.commands - before.commands) as f64 / IDLE_POLLS as f64;
        let trips = (after.round_trips - before.round_trips) as f64 / IDLE_POLLS as f64;
        eprintln!(
            "{}: {commands} commands in {trips} round trips per idle poll",
            poller.table
        );
        assert!(
            commands <= 6.0,
            "{}: {commands} commands per idle poll",
            poller.table
        );
        assert!(
            trips <= 2.0,
            "{}: {trips} round trips per idle poll",
            poller.table
        );
    }
}

on_both_stores!(a_subscription_made_on_one_instance_is_delivered_by_another);

/// Instance 2 polls and delivers; instance 1 has no tables and only serves
/// the API. A subscription created on instance 1 reaches instance 2's
/// supervisor through the subscriptions' version well before its fallback
/// list (`RELIST_EVERY`, 30 s), so its events arrive within 10 s.
async fn a_subscription_made_on_one_instance_is_delivered_by_another(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 5)],
        ..SimConfig::default()
    })
    .await;
    let table = Table::new("sim", "patients");
    let second = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
    )
    .await;
    second.wait_healthy().await;
    wait_synced(ts.store.as_ref(), &table, &sim.sim).await;
    let first = App::spawn(&ts, Vec::new()).await;
    let rx = TestReceiver::start(1).await;
    // Both instances' supervisors have listed the subscriptions (none)
    // before this one exists.
    tokio::time::sleep(2 * SUPERVISE_EVERY).await;
    subscribe_to(
        &first,
        &rx,
        json!({"resources": ["*"], "start": "beginning"}),
    )
    .await;
    assert!(RELIST_EVERY > Duration::from_secs(10));
    wait_delivered(ts.store.as_ref(), &rx, &[table], Duration::from_secs(10)).await;
    first.stop().await;
    second.stop().await;
}
