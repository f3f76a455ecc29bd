//! Several relay instances on one Redis: leases pick one poller per table
//! and one deliverer per (subscription, table); when an instance is killed
//! another takes over within the lease time. Secrets never reach the logs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use stamp_relay::{
    config::{AuthConfig, Paging, SourceConfig},
    store::Table,
};
use stamp_relay_simulator::{Faults, SimAuth, SimConfig};

use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{
    Api, App, Backend, ConfigBuilder, Proc, Sim, TestStore, assert_rebuilds, eventually, free_port,
    serve, upstream, wait_synced,
};
use crate::on_both_stores;

const ADMIN: &str = "instances-admin-token-4711";
const CLIENT_SECRET: &str = "upstream-client-secret-0815";

fn write_config(ts: &TestStore, dir: &Path, name: &str, sim: &str, port: u16) -> PathBuf {
    let source = SourceConfig {
        poll_interval: Duration::from_millis(100),
        page_size: 50,
        auth: AuthConfig::OAuth {
            client_id_env: "SR_INST_ID".into(),
            client_secret_env: "SR_INST_SECRET".into(),
            token_url: None,
        },
        ..upstream("sim", sim, &["patients", "users"])
    };
    ConfigBuilder::on(&ts.config)
        .store(|s| {
            s.lease_ttl = Duration::from_secs(1);
            s.instance_id = format!("relay-{name}-{port}");
        })
        .listen(port)
        .admin_token_env("SR_INST_ADMIN")
        .delivery(|d| {
            d.request_timeout = Duration::from_millis(500);
            d.retry_schedule = [10, 20, 50, 100, 100].map(Duration::from_millis).to_vec();
        })
        .source(source)
        .write(&dir.join(format!("{name}.toml")))
}

fn spawn(cfg: &Path) -> Proc {
    let log = std::fs::File::create(cfg.with_extension("log")).unwrap();
    serve(cfg)
        .args(["--log-format", "json"])
        .env("SR_INST_ADMIN", ADMIN)
        .env("SR_INST_ID", "relay")
        .env("SR_INST_SECRET", CLIENT_SECRET)
        .env("RUST_LOG", "debug,hyper=info,reqwest=info,h2=info")
        // To a file, not a pipe: debug JSON logs fill a pipe's buffer long
        // before the test reads it, and the relay would block on its logging.
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .map(Proc)
        .unwrap()
}

/// Requests in flight per table for the test's subscription.
const IN_FLIGHT: usize = 4;

/// How many receipts repeat an event id received before.
fn duplicates(ids: &[String]) -> usize {
    ids.len() - ids.iter().collect::<std::collections::HashSet<_>>().len()
}

/// Everything the relays in `dir` wrote.
fn all_logs(dir: &std::path::Path) -> String {
    let mut s = String::new();
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            s += &std::fs::read_to_string(path).unwrap();
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_work_and_survive_a_kill() {
    let Some(ts) = TestStore::open_with(Backend::Redis, true).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        auth: SimAuth::OAuth {
            client_id: "relay".into(),
            client_secret: CLIENT_SECRET.into(),
            token_ttl: Duration::from_secs(60),
        },
        initial: vec![("patients".into(), 300), ("users".into(), 40)],
        ..SimConfig::default()
    })
    .await;
    let rx = TestReceiver::start(31).await;
    let dir = tempfile::TempDir::new().unwrap();
    let redis = ts.redis.as_ref().unwrap().url();
    let (pa, pb) = (free_port(), free_port());
    let a = spawn(&write_config(&ts, dir.path(), "a", &sim.base_url, pa));
    let b = spawn(&write_config(&ts, dir.path(), "b", &sim.base_url, pb));
    let (api_a, api_b) = (Api::local(pa, ADMIN), Api::local(pb, ADMIN));
    // Both must listen before the test talks to them: b starts a little
    // after a, and a PATCH to b that races its startup is refused.
    for api in [&api_a, &api_b] {
        api.wait_healthy().await;
    }
    let body = json!({"url": rx.url, "resources": ["*"], "start": "beginning", "enabled": false,
        "max_in_flight": IN_FLIGHT});
    let created = api_a.post_json("/v1/subscriptions", &body).await;
    let secret = created["secret"].as_str().unwrap();
    rx.set_secrets(&[secret]);
    rx.set_mode(Mode::Flaky(0.1));
    let id = created["id"].as_str().unwrap();
    let r = api_b.set_enabled(id, true).await;
    assert_eq!(
        r.status(),
        200,
        "both instances serve the same subscriptions"
    );

    // Let both work, then kill whichever holds the patients lease.
    eventually("50 deliveries", Duration::from_secs(30), async || {
        rx.event_ids().len() >= 50
    })
    .await;
    // Kill the instance polling patients, so the other must take over.
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let holder: String = redis::cmd("GET")
        .arg("test:{sim:patients}:lease")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Each instance's name (store.instance_id) says which one it is.
    let names = [(a.id(), "-a-"), (b.id(), "-b-")];
    let pid_of = |c: &Child| {
        names
            .iter()
            .find(|(id, _)| *id == c.id())
            .unwrap()
            .1
            .to_string()
    };
    // Both instances show the holder as who polls patients: the poll
    // status lives in the store, not in the instance that polled.
    for (port, api) in [(pa, &api_a), (pb, &api_b)] {
        let r = api.get_json("/v1/resources").await;
        let patients = r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["resource"] == "patients")
            .unwrap();
        assert_eq!(
            patients["polled_by"].as_str(),
            Some(holder.as_str()),
            "instance on {port}: who polls patients; the lease says {holder}"
        );
    }
    let (victim, survivor, survivor_api) = if holder.contains(&pid_of(&a)) {
        (a, b, api_b)
    } else {
        (b, a, api_a)
    };
    assert!(
        holder.contains(&pid_of(&victim)),
        "lease holder {holder} is neither instance"
    );
    let mut b = survivor;
    // One deliverer per (subscription, table): until the kill, no event
    // arrived twice (failed answers are not recorded, so retries do not count).
    let before_kill = rx.event_ids();
    assert_eq!(
        duplicates(&before_kill),
        0,
        "an event arrived twice with both instances up"
    );
    {
        let mut victim = victim;
        victim.kill().unwrap();
        victim.wait().unwrap();
    }
    let survivor_pid = pid_of(&b);
    assert_takeover(&mut conn, id, &survivor_pid).await;
    for _ in 0..5 {
        sim.sim.random_writes(None, 20);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let patients = Table::new("sim", "patients");
    let users = Table::new("sim", "users");
    wait_synced(ts.store.as_ref(), &patients, &sim.sim).await;
    wait_synced(ts.store.as_ref(), &users, &sim.sim).await;
    assert_rebuilds(ts.store.as_ref(), &patients, &sim.sim).await;
    assert_rebuilds(ts.store.as_ref(), &users, &sim.sim).await;
    let both = [patients.clone(), users.clone()];
    crate::harness::delivery::wait_delivered(
        ts.store.as_ref(),
        &rx,
        &both,
        Duration::from_secs(60),
    )
    .await;
    crate::harness::delivery::assert_record_order(&rx.events());
    assert_eq!(rx.bad_signatures(), 0);
    // Only what the victim had sent but not yet settled arrives again: at
    // most its requests in flight and one unwritten group of settles per
    // table. Never two requests for one record at once.
    let all = rx.event_ids();
    assert!(
        duplicates(&all) <= 2 * 4 * IN_FLIGHT,
        "{} events arrived twice; the victim could leave at most {} unsettled",
        duplicates(&all),
        2 * 4 * IN_FLIGHT
    );
    assert_eq!(rx.inner.lock().unwrap().overlaps, 0);
    // The survivor took over patients, and says so.
    eventually(
        "the survivor to report its polls",
        Duration::from_secs(10),
        async || {
            let r = survivor_api.get_json("/v1/resources").await;
            r["resources"].as_array().unwrap().iter().all(|x| {
                x["polled_by"]
                    .as_str()
                    .is_some_and(|h| h.contains(&survivor_pid))
                    && x["last_error"].is_null()
            })
        },
    )
    .await;

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    assert!(b.wait().unwrap().success());
    let logs = all_logs(dir.path());
    assert!(
        logs.contains("poll finished"),
        "debug logs were not captured"
    );
    for secret in [ADMIN, CLIENT_SECRET, secret] {
        assert!(!logs.contains(secret), "a secret appeared in the logs");
    }
    // JSON lines whose spans say what they are about: each poll line names
    // its source and resource, each attempt its subscription and event.
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let about = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    let polls = about("poll finished");
    assert!(!polls.is_empty(), "no poll lines in the JSON logs");
    for l in polls {
        assert_eq!(l["span"]["source"], "sim", "{l}");
        assert!(l["span"]["resource"].is_string(), "{l}");
    }
    let attempts = about("delivery attempt");
    assert!(!attempts.is_empty(), "no attempt lines in the JSON logs");
    for l in attempts {
        let deliver = l["spans"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "deliver"))
            .unwrap_or_else(|| panic!("no deliver span in {l}"));
        assert_eq!(deliver["subscription"], id, "{l}");
        assert!(
            l["span"]["event_id"]
                .as_str()
                .is_some_and(|e| e.starts_with("sim:")),
            "{l}"
        );
    }
}

on_both_stores!(two_instances_load_through_pages_slower_than_the_lease);

/// Every page takes longer than the lease: the holder renews it in the
/// background, so neither instance takes the table mid-walk and throws the
/// walk away, and the load completes.
async fn two_instances_load_through_pages_slower_than_the_lease(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 300)],
        faults: Faults {
            slow_rate: 1.0,
            slow_ms: 400,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let src = crate::harness::source(&sim.base_url, &["patients"], Paging::Pages, 100);
    let short_lease = |c: &mut stamp_relay::config::Config| {
        c.store.lease_ttl = Duration::from_millis(250);
    };
    let a = App::spawn_with(&ts, vec![src.clone()], short_lease).await;
    let b = App::spawn_with(&ts, vec![src], short_lease).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
    let events = crate::harness::all_events(ts.store.as_ref(), &t).await;
    assert_eq!(events.len(), 300);
    assert!(events.iter().all(|e| e.snapshot));
    a.stop().await;
    b.stop().await;
}

/// Takeover within a few lease times (the lease is 1 s): the survivor
/// holds the poll lease and the patients delivery lease of `sub`.
async fn assert_takeover(
    conn: &mut redis::aio::MultiplexedConnection,
    sub: &str,
    survivor_pid: &str,
) {
    let delivery_lease = format!("test:{{sim:patients:sub:{sub}}}:lease");
    for key in ["test:{sim:patients}:lease", delivery_lease.as_str()] {
        eventually(
            &format!("the survivor to take {key}"),
            Duration::from_secs(5),
            async || {
                let h: Option<String> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut *conn)
                    .await
                    .unwrap();
                h.is_some_and(|h| h.contains(survivor_pid))
            },
        )
        .await;
    }
}
