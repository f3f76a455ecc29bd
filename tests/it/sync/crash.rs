//! Crashes: SIGKILL of the relay process at random points of a large
//! initial load, and a Redis restart (AOF on) mid-load, lose nothing and
//! duplicate nothing.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use stamp_relay::{
    config::{Paging, SourceConfig},
    store::Table,
};
use stamp_relay_simulator::{Order, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    Backend, ConfigBuilder, Proc, SeedGuard, Sim, TestStore, all_events, assert_rebuilds, bin,
    eventually, one_seed, relay, seeds, source, upstream, wait_for_every,
};
use crate::{on_both_stores, on_cluster};

on_both_stores!(sigkill_during_keyset_load, sigkill_during_pages_load);
on_cluster!(sigkill_during_keyset_load);

fn write_config(ts: &TestStore, base_url: &str, paging: Paging, path: &Path) {
    let source = SourceConfig {
        page_size: 100,
        paging,
        retry_base: Duration::from_millis(20),
        ..upstream("sim", base_url, &["patients", "assessments"])
    };
    ConfigBuilder::on(&ts.config)
        .store(|s| s.lease_ttl = Duration::from_millis(300))
        .delivery(|d| d.request_timeout = Duration::from_millis(200))
        .source(source)
        .write(path);
}

async fn stream_total(ts: &TestStore) -> u64 {
    let mut len = 0;
    for table in ["patients", "assessments"] {
        len += ts
            .store
            .stream_len(&Table::new("sim", table))
            .await
            .unwrap();
    }
    len
}

async fn sigkill_during_load(ts: TestStore, paging: Paging) {
    let order = if paging == Paging::Keyset {
        Order::Stamp
    } else {
        Order::Name
    };
    let total: u64 = 30_000;
    let sim = Sim::start(SimConfig {
        order,
        initial: vec![("patients".into(), 20_000), ("assessments".into(), 10_000)],
        ..SimConfig::default()
    })
    .await;
    let initial: std::collections::HashMap<&str, std::collections::HashSet<String>> =
        ["patients", "assessments"]
            .into_iter()
            .map(|table| {
                let ids = sim
                    .sim
                    .state(table)
                    .iter()
                    .filter_map(|r| r["uuid"].as_str().map(str::to_string))
                    .collect();
                (table, ids)
            })
            .collect();
    let cfg = ts.dir.path().join("relay.toml");
    write_config(&ts, &sim.base_url, paging, &cfg);
    // Where the kills land comes from a seed: `STAMP_RELAY_SEED`, else a
    // fresh one each run (printed on failure), so runs try new kill points.
    let seed = one_seed();
    let _guard = SeedGuard {
        what: format!("sigkill_during_load {paging:?}"),
        seed,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let run = || {
        Command::new(bin())
            .args(["sync", "--once", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut interrupted = 0;
    for round in 0..seeds() + 2 {
        // Kill once the stream has grown by a random amount: mid-commit for
        // both strategies (a `pages` poll commits only after its walk). At
        // most three quarters of the way, so that the chunks a fast load
        // commits between two looks at the stream cannot carry it past the
        // end before the kill lands.
        let start = stream_total(&ts).await;
        let kill_at = start + rng.random_range(1..(total.saturating_sub(start) * 3 / 4).max(2));
        // A stalled run fails the test instead of hanging it (and is killed
        // as the `Proc` drops).
        let mut child = Proc(run());
        let what = format!("round {round}: sync --once to finish or reach {kill_at} events");
        let ms = Duration::from_millis;
        let look =
            async || child.try_wait().unwrap().is_some() || stream_total(&ts).await >= kill_at;
        wait_for_every(&what, Duration::from_secs(120), ms(2), look, |over| *over).await;
        // A no-op when it finished by itself.
        child.kill().unwrap();
        child.wait().unwrap();
        let len = stream_total(&ts).await;
        interrupted += usize::from(len > start && len < total);
        // Writes keep arriving between crashes.
        sim.sim.random_writes(None, 20 + round as usize);
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    assert!(
        interrupted > 0,
        "no SIGKILL landed mid-load; the test proves nothing"
    );
    // Then run to completion twice: the second run picks up nothing new.
    let mut after_first = 0;
    for pass in 0..2 {
        let out = run().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sync failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("skipped"), "{stdout}");
        let len = stream_total(&ts).await;
        if pass == 0 {
            after_first = len;
        } else {
            assert_eq!(
                len, after_first,
                "the second complete run appended events:\n{stdout}"
            );
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    for table in ["patients", "assessments"] {
        let t = Table::new("sim", table);
        assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
        // Each initial record first reached the stream in the initial load,
        // which the kills interrupted: a restart mid-load (the stream no
        // longer empty) must not turn the rest of the load into changes.
        let mut seen = std::collections::HashSet::new();
        let not_snapshot: Vec<_> = all_events(ts.store.as_ref(), &t)
            .await
            .into_iter()
            .filter(|e| seen.insert(e.record.clone()) && initial[table].contains(&e.record))
            .filter(|e| !e.snapshot)
            .map(|e| e.id.to_string())
            .collect();
        assert!(
            not_snapshot.is_empty(),
            "{t}: {} initial records first appeared with snapshot=0, first {:?}",
            not_snapshot.len(),
            &not_snapshot[..not_snapshot.len().min(5)]
        );
    }
}

async fn sigkill_during_keyset_load(ts: TestStore) {
    sigkill_during_load(ts, Paging::Keyset).await;
}

async fn sigkill_during_pages_load(ts: TestStore) {
    sigkill_during_load(ts, Paging::Pages).await;
}

/// Redis killed and restarted (AOF, fsync always) while the relay loads:
/// the pollers retry until Redis is back and the stream ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_load() {
    let Some(mut ts) = TestStore::open_with(Backend::Redis, true).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), 10000)],
        ..SimConfig::default()
    })
    .await;
    let relay = relay(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Keyset, 50)],
    );
    let cancel = CancellationToken::new();
    let store = ts.store.clone();
    let t = Table::new("sim", "patients");
    let run = tokio::spawn(relay.run(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        cancel.clone(),
    ));
    // Wait until the load is under way, then crash Redis twice.
    let mut acknowledged = Vec::new();
    for want in [1500, 4000] {
        wait_for_every(
            &format!("the load to reach {want} events"),
            Duration::from_secs(60),
            Duration::from_millis(5),
            async || store.stream_len(&t).await.unwrap_or(0),
            |len| *len >= want,
        )
        .await;
        assert!(
            store.stream_len(&t).await.unwrap() < 10000,
            "the load finished before Redis was killed"
        );
        // What was acknowledged before the kill; with AOF it survives
        // verbatim (a Redis that came back empty would be reloaded from 0
        // with new `observed` times, and this would not match).
        let read = all_events(store.as_ref(), &t).await;
        restart_and_check_it_came_back_full(&mut ts, &t, read.len() as u64).await;
        acknowledged.extend(read);
    }
    eventually(
        "the load to finish after Redis came back",
        Duration::from_secs(60),
        async || store.stream_len(&t).await.unwrap_or(0) >= 10000,
    )
    .await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_rebuilds(store.as_ref(), &t, &sim.sim).await;
    let after: std::collections::HashMap<_, _> = all_events(store.as_ref(), &t)
        .await
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    assert!(acknowledged.len() >= 1500);
    for e in &acknowledged {
        assert_eq!(
            after.get(&e.id),
            Some(e),
            "an event read before a Redis kill changed or vanished"
        );
    }
}

/// Kills and restarts the test's Redis, then checks it came back with the
/// stream and the index as they were (the AOF replays before Redis
/// answers), not empty: the epoch is the same, so the relay goes on from
/// where it was instead of reloading from 0.
async fn restart_and_check_it_came_back_full(ts: &mut TestStore, t: &Table, acknowledged: u64) {
    let store = ts.store.clone();
    let epoch = store.epoch(t).await.unwrap();
    let redis = ts.redis.as_mut().unwrap();
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let r = async || -> stamp_relay::store::StoreResult<_> {
        Ok((
            store.stream_len(t).await?,
            store.index_len(t).await?,
            store.epoch(t).await?,
        ))
    };
    let mut after = None;
    eventually(
        "the store to answer again",
        Duration::from_secs(30),
        async || {
            after = r().await.ok();
            after.is_some()
        },
    )
    .await;
    let (len, indexed, epoch_after) = after.unwrap();
    assert!(
        len >= acknowledged && indexed >= acknowledged,
        "Redis came back with {len} events and {indexed} index entries; {acknowledged} were acknowledged"
    );
    assert_eq!(
        epoch_after, epoch,
        "the table's epoch changed across the restart"
    );
}
