//! The upstream side: basic and bearer credentials, the `max_walks` and
//! `max_delta_records` limits, and the `simulate` command serving requests.

use std::time::Duration;

use stamp_relay::{
    app::Relay,
    config::{Auth, Paging, Secret, SourceConfig},
    poller::PollError,
    store::Table,
};
use stamp_relay_simulator::{Change, Faults, Order, SimAuth, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    Backend, ConfigBuilder, Proc, Sim, TestStore, assert_rebuilds, bin, config, eventually,
    free_port, source, upstream,
};

/// A relay over the simulator's patients with `auth` and a source tweak.
async fn relay_with(
    ts: &TestStore,
    sim: &Sim,
    paging: Paging,
    auth: Auth,
    tweak: impl FnOnce(&mut stamp_relay::config::SourceConfig),
) -> Relay {
    let mut src = source(&sim.base_url, &["patients"], paging, 5);
    tweak(&mut src);
    let mut cfg = config(&ts.config, vec![src]);
    cfg.sources[0].auth = auth;
    Relay::with_store(cfg, ts.store.clone()).unwrap()
}

async fn auth_is_sent(sim_auth: SimAuth, good: Auth, bad: Auth) {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig {
        auth: sim_auth,
        initial: vec![("patients".into(), 12)],
        ..SimConfig::default()
    })
    .await;
    let cancel = CancellationToken::new();
    let mut wrong = relay_with(&ts, &sim, Paging::Pages, bad, |_| {}).await;
    let err = wrong.pollers[0].poll_once(&cancel).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let t = Table::new("sim", "patients");
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 0);
    // The refused relay's lease runs out before the right one polls.
    let mut right = relay_with(&ts, &sim, Paging::Pages, good, |_| {}).await;
    eventually(
        "a poll with the right credentials",
        Duration::from_secs(10),
        async || right.pollers[0].poll_once(&cancel).await.unwrap().leased,
    )
    .await;
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_reach_the_upstream() {
    let basic = |password: &str| Auth::Basic {
        username: Secret::new("relay"),
        password: Secret::new(password),
    };
    let sim_auth = SimAuth::Basic {
        username: "relay".into(),
        password: "s3cret".into(),
    };
    auth_is_sent(sim_auth, basic("s3cret"), basic("wrong")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_reaches_the_upstream() {
    let bearer = |token: &str| Auth::Bearer {
        token: Secret::new(token),
    };
    let sim_auth = SimAuth::Bearer {
        token: "tok-123".into(),
    };
    auth_is_sent(sim_auth, bearer("tok-123"), bearer("tok-999")).await;
}

/// With writes on every page and one walk allowed, a `pages` poll that
/// misses rows fails as unstable and commits nothing; with the writes
/// stopped the next poll completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_walks_bounds_a_poll_over_a_changing_set() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig {
        order: Order::Name,
        initial: vec![("patients".into(), 40)],
        faults: Faults {
            writes_per_page: 2,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let mut relay = relay_with(&ts, &sim, Paging::Pages, Auth::None, |s| s.max_walks = 1).await;
    let cancel = CancellationToken::new();
    let t = Table::new("sim", "patients");
    let mut unstable = 0;
    for _ in 0..5 {
        let before = ts.store.stream_len(&t).await.unwrap();
        match relay.pollers[0].poll_once(&cancel).await {
            Err(PollError::Unstable { walks, .. }) => {
                assert_eq!(walks, 1);
                assert_eq!(ts.store.stream_len(&t).await.unwrap(), before);
                unstable += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        unstable > 0,
        "no poll hit max_walks; the test proves nothing"
    );
    sim.sim.set_faults(Faults::default());
    relay.pollers[0].poll_once(&cancel).await.unwrap();
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
}

/// A `pages` delta larger than `max_delta_records` is refused before it is
/// held in memory, and nothing is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_delta_records_refuses_a_larger_delta() {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 30)],
        ..SimConfig::default()
    })
    .await;
    let mut relay = relay_with(&ts, &sim, Paging::Pages, Auth::None, |s| {
        s.max_delta_records = 10;
    })
    .await;
    let err = relay.pollers[0]
        .poll_once(&CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PollError::TooLarge { sync: 0, limit: 10 }),
        "{err}"
    );
    let t = Table::new("sim", "patients");
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 0);
}

/// `stamp-relay simulate` serves the upstream contract with the options it
/// was given: the record count, the order and bearer auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_serves_what_its_options_say() {
    let port = free_port();
    let _sim = Proc(
        std::process::Command::new(bin())
            .args(["simulate", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--patients", "7", "--order", "stamp"])
            .args(["--auth", "bearer", "--token", "cli-token"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/api/patients/?sync=0&page_size=5");
    let http = reqwest::Client::new();
    let mut page = serde_json::Value::Null;
    eventually(
        "the simulator to answer",
        Duration::from_secs(20),
        async || {
            let Ok(r) = http.get(&url).bearer_auth("cli-token").send().await else {
                return false;
            };
            page = r.json().await.unwrap();
            true
        },
    )
    .await;
    assert_eq!(page["count"], 7, "{page}");
    let stamps: Vec<u64> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["update_stamp"].as_u64().unwrap())
        .collect();
    assert_eq!(stamps.len(), 5);
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    let anon = http.get(&url).send().await.unwrap();
    assert_eq!(anon.status(), 401);
}

/// The `sync --once` row of `table`, split into its columns.
fn summary_row(stdout: &str, table: &str) -> Vec<String> {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{table} ")))
        .unwrap_or_else(|| panic!("no row for {table} in\n{stdout}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `sync --once` prints one row per table with what the poll did, and exits
/// 1 when a table failed (the others are still polled and shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_prints_a_summary_and_exits_1_when_a_table_fails() {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 12)],
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::TempDir::new().unwrap();
    let live = SourceConfig {
        page_size: 5,
        ..upstream("sim", &sim.base_url, &["patients"])
    };
    let dead = SourceConfig {
        max_attempts: 1,
        ..upstream(
            "dead",
            &format!("http://127.0.0.1:{}/api", free_port()),
            &["users"],
        )
    };
    let run = |sources: Vec<SourceConfig>| {
        let cfg = ConfigBuilder::new()
            .data_dir(dir.path().join("data"))
            .sources(sources)
            .write(&dir.path().join("once.toml"));
        let out = std::process::Command::new(bin())
            .args(["sync", "--once", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, stdout) = run(vec![live.clone(), dead]);
    assert_eq!(code, Some(1), "{stdout}");
    let header = summary_row(&stdout, "target");
    assert_eq!(
        header[1..9],
        [
            "fetched", "created", "updated", "deleted", "restored", "walks", "pages", "settle"
        ]
    );
    let row = summary_row(&stdout, "sim/patients");
    assert_eq!(row[1..6], ["12", "12", "0", "0", "0"], "{stdout}");
    assert_eq!(row[9], "12-0", "{stdout}");
    assert!(summary_row(&stdout, "dead/users").contains(&"error:".to_string()));

    let id = sim.sim.state("patients")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    sim.sim
        .apply(Change::new("patients", stamp_relay_simulator::Op::Update).with_id(&id))
        .unwrap();
    let (code, stdout) = run(vec![live]);
    assert_eq!(code, Some(0), "{stdout}");
    let row = summary_row(&stdout, "sim/patients");
    assert_eq!(row[2..6], ["0", "1", "0", "0"], "{stdout}");
    assert_eq!(row[9], "13-0", "{stdout}");
}
