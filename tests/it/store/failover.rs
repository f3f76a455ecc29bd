//! A store that loses its newest events (poller/epoch.rs, docs/sync.md
//! "Store failovers"): a Redis failover to a replica that was behind, or the
//! embedded file replaced by an older copy. The stream and the index roll
//! back together while a live reader, a replay client and a webhook
//! receiver have already read past the new end. The relay says so, never
//! issues a lost stream ID again, and appends the lost versions as late
//! events above it: every reader gets every version, none skipped.

use std::{collections::HashSet, time::Duration};

use serde_json::json;
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::{Change, Faults, Op, SimConfig};

use crate::harness::delivery::{subscribe_to, wait_delivered};
use crate::harness::receiver::TestReceiver;
use crate::harness::sse::read_sse;
use crate::harness::{App, Sim, TestStore, all_events, eventually, source, wait_synced};
use crate::on_both_stores;

on_both_stores!(a_lost_tail_reaches_every_reader_again);

/// What a store held at one moment, to put back as a lagging replica would.
enum Copy {
    /// Every key of the table but its lease, as `DUMP` gives it.
    Redis(Vec<(String, Vec<u8>)>),
    /// A consistent copy of the file (`VACUUM INTO`).
    File(std::path::PathBuf),
}

async fn redis_conn(ts: &TestStore) -> redis::aio::MultiplexedConnection {
    let url = ts.redis.as_ref().unwrap().url();
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The keys of the table's hash tag but its poll lease, which a failover
/// would carry over too, but the test leaves to the relay.
async fn table_keys(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:{sim:patients}:*")
        .query_async(c)
        .await
        .unwrap();
    keys.into_iter()
        .filter(|k| !k.ends_with(":lease"))
        .collect()
}

async fn copy(ts: &TestStore) -> Copy {
    if ts.redis.is_some() {
        let mut c = redis_conn(ts).await;
        let mut dumped = Vec::new();
        for k in table_keys(&mut c).await {
            let v: Vec<u8> = redis::cmd("DUMP")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            dumped.push((k, v));
        }
        return Copy::Redis(dumped);
    }
    let path = ts.config.data_dir.join("stamp-relay.sqlite3");
    let to = ts.dir.path().join("older.sqlite3");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
    Copy::File(to)
}

/// Puts the copy back in one step, as a promoted replica or a restore would.
async fn roll_back(ts: &TestStore, copy: Copy) {
    match copy {
        Copy::Redis(dumped) => {
            let mut c = redis_conn(ts).await;
            let mut p = redis::pipe();
            p.atomic();
            for k in table_keys(&mut c).await {
                p.del(k).ignore();
            }
            for (k, v) in dumped {
                p.cmd("RESTORE")
                    .arg(k)
                    .arg(0)
                    .arg(v)
                    .arg("REPLACE")
                    .ignore();
            }
            let () = p.query_async(&mut c).await.unwrap();
        }
        Copy::File(older) => {
            let path = ts.config.data_dir.join("stamp-relay.sqlite3");
            for side in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{side}", path.display()));
            }
            std::fs::rename(&older, &path).unwrap();
        }
    }
}

/// A replay client: pages `GET .../events` from `after` to the end, adding
/// the versions (CloudEvent ids) it reads; returns where it stopped.
async fn replay(app: &App, mut after: String, got: &mut HashSet<String>) -> String {
    loop {
        let page = app
            .get_json(&format!(
                "/v1/resources/sim/patients/events?after={after}&limit=50"
            ))
            .await;
        for e in page["events"].as_array().unwrap() {
            got.insert(e["id"].as_str().unwrap().to_string());
        }
        after = page["next_after"].as_str().unwrap().to_string();
        if !page["has_more"].as_bool().unwrap() {
            return after;
        }
    }
}

/// The versions (CloudEvent ids) of the table's stream now.
async fn versions(ts: &TestStore, t: &Table) -> HashSet<String> {
    all_events(ts.store.as_ref(), t)
        .await
        .iter()
        .map(|e| format!("sim:patients:{}:{}", e.record, e.stamp))
        .collect()
}

async fn a_lost_tail_reaches_every_reader_again(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 29,
        initial: vec![("patients".into(), 40)],
        ..SimConfig::default()
    })
    .await;
    let t = Table::new("sim", "patients");
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    )
    .await;
    let rx = TestReceiver::start(29).await;
    subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning"}),
    )
    .await;
    let mut sse = app
        .get("/v1/resources/sim/patients/events")
        .header("accept", "text/event-stream")
        .header("last-event-id", "0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let (mut buf, mut seen) = (String::new(), Vec::new());
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let older = copy(&ts).await;

    // A version that commits late: its stamp is issued now, below the
    // writes that follow, but the upstream shows it only after the failover,
    // when a stream that reused IDs would put it behind the readers.
    let late_faults = Faults {
        late_rate: 1.0,
        late_after: 1_000,
        ..Faults::default()
    };
    sim.sim.set_faults(late_faults);
    let late = sim.sim.apply(Change::new("patients", Op::Create)).unwrap();
    assert!(late.late);
    sim.sim.set_faults(Faults::default());
    // Versions the readers get, then lose from the store.
    sim.sim.random_writes(Some("patients"), 15);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    wait_delivered(
        ts.store.as_ref(),
        &rx,
        std::slice::from_ref(&t),
        Duration::from_secs(30),
    )
    .await;
    let before = ts.store.stream_len(&t).await.unwrap() as usize;
    seen.extend(read_sse(&mut sse, &mut buf, before, Duration::from_secs(30)).await);
    assert_eq!(seen.len(), before, "the live reader read the stream");
    let mut replayed = HashSet::new();
    let position = replay(&app, "0".into(), &mut replayed).await;

    roll_back(&ts, older).await;
    assert_eq!(sim.sim.flush_late(), 1);
    sim.sim.random_writes(Some("patients"), 10);
    eventually(
        "the failover reported",
        Duration::from_secs(30),
        async || {
            let r = app.get_json("/v1/resources").await;
            r["resources"][0]["alerts"]["store_failover"]["count"].as_u64() >= Some(1)
        },
    )
    .await;
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let want = versions(&ts, &t).await;
    assert!(want.contains(&format!("sim:patients:{}:{}", late.id, late.stamp)));
    wait_delivered(
        ts.store.as_ref(),
        &rx,
        std::slice::from_ref(&t),
        Duration::from_secs(30),
    )
    .await;
    let mut got: HashSet<String> = HashSet::new();
    while !want.is_subset(&got) {
        let more = read_sse(&mut sse, &mut buf, 1, Duration::from_secs(10)).await;
        assert!(
            !more.is_empty(),
            "the live reader misses {:?}",
            want.difference(&got).collect::<Vec<_>>()
        );
        seen.extend(more);
        got = seen
            .iter()
            .map(|(_, e)| e["id"].as_str().unwrap().to_string())
            .collect();
    }
    // A replay client resuming from where it stopped reads every version too.
    replay(&app, position, &mut replayed).await;
    assert!(
        want.is_subset(&replayed),
        "replay misses {:?}",
        want.difference(&replayed).collect::<Vec<_>>()
    );
    let ids: Vec<stamp_relay::events::StreamId> =
        seen.iter().map(|(id, _)| id.parse().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "a stream ID came twice or went back: {ids:?}"
    );
    assert!(app.table_counter("store_failovers").await.ends_with(" 1"));
    let page = app.get("/").send().await.unwrap().text().await.unwrap();
    assert!(page.contains("store_failover x1"), "{page}");
    app.stop().await;
}
