//! Redis Cluster and managed-Redis features on real servers: a master
//! SIGKILLed mid-load and replaced by its replica, a tail a failover lost,
//! TLS with a self-signed certificate and an ACL user from the environment,
//! and the configuration checks. The shared suites run on a cluster through
//! `on_cluster!` in their own files.

use crate::harness::record;
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use stamp_relay::{
    config::{Paging, StoreConfig},
    events::StreamId,
    record::UpstreamRecord,
    store::{self, AppendBatch, Refusal, StoreError, Table},
};
use stamp_relay_simulator::{Order, SimConfig};
use tempfile::TempDir;

use crate::harness::redis_cluster::RedisCluster;
use crate::harness::{
    App, Backend, ConfigBuilder, Sim, TestStore, all_events, assert_rebuilds, bin, eventually,
    eventually_blocking, free_port, redis_available, source, upstream, wait_synced,
};

fn cluster_store_config(cluster: &RedisCluster, dir: &TempDir) -> StoreConfig {
    StoreConfig {
        redis_cluster: cluster.urls(),
        key_prefix: "test".into(),
        data_dir: dir.path().join("data"),
        lease_ttl: Duration::from_millis(500),
        ..StoreConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_load_is_replaced_and_the_stream_rebuilds_exactly() {
    let Some(cluster) = RedisCluster::start(1) else {
        return;
    };
    let dir = TempDir::new().unwrap();
    let config = cluster_store_config(&cluster, &dir);
    let store = store::open(&config).await.unwrap();
    let mut ts = TestStore {
        store,
        config,
        redis: None,
        cluster: Some(cluster),
        dir,
    };
    let sim = Sim::start(SimConfig {
        order: Order::Stamp,
        initial: vec![("patients".into(), 20_000)],
        ..SimConfig::default()
    })
    .await;
    let t = Table::new("sim", "patients");
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Keyset, 100)],
    )
    .await;
    let key = "test:{sim:patients}:events";
    let master = tokio::task::block_in_place(|| ts.cluster.as_ref().unwrap().master_of(key));
    eventually(
        "the load is under way",
        Duration::from_secs(60),
        async || ts.store.stream_len(&t).await.unwrap() >= 3_000,
    )
    .await;
    ts.cluster.as_mut().unwrap().kill(master);
    let len_at_kill = ts.store.stream_len(&t).await.unwrap();
    assert!(len_at_kill < 20_000, "the load finished before the kill");
    let promoted = tokio::task::block_in_place(|| ts.cluster.as_ref().unwrap().master_of(key));
    assert_ne!(promoted, master, "a replica took over the table's slot");
    sim.sim.random_writes(Some("patients"), 200);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
    app.stop().await;
}

async fn append(ts: &TestStore, t: &Table, records: &[UpstreamRecord]) -> Result<u64, StoreError> {
    let epoch = ts.store.init_epoch(t, "test-epoch").await?;
    let batch = AppendBatch {
        holder: "me",
        snapshot: false,
        observed: 0,
        epoch: &epoch,
        records,
        rebase: false,
    };
    ts.store.append(t, batch).await.map(|o| o.created)
}

/// A failover can lose the newest entries the old master acknowledged (a
/// replica is promoted before receiving them). Appending the next chunk
/// after that gap would skip them for good: the store refuses once, raising
/// the stream's ID back to what it had issued, and the poller's next attempt
/// starts from the stream's real last ID; the lost version comes back as a
/// late event above the lost ID, which is never issued again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_lost_in_a_failover_is_never_skipped() {
    let Some(ts) = TestStore::open(Backend::Cluster).await else {
        return;
    };
    let t = Table::new("sim", "patients");
    assert!(
        ts.store
            .lease(&t, "me", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(
        append(&ts, &t, &[record("a", 1), record("b", 2)])
            .await
            .unwrap(),
        2
    );
    // What a failover that lost `b` leaves: the stream and index without it.
    let client = redis::cluster::ClusterClient::new(ts.config.redis_cluster.clone()).unwrap();
    let mut c = client.get_async_connection().await.unwrap();
    let tag = "test:{sim:patients}";
    let events = format!("{tag}:events");
    let () = redis::pipe()
        .atomic()
        .xdel(&events, &["2-0"])
        .ignore()
        .cmd("XSETID")
        .arg(&events)
        .arg("1-0")
        .ignore()
        .hdel(format!("{tag}:index"), "b")
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    let refused = append(&ts, &t, &[record("c", 3)]).await.unwrap_err();
    assert!(
        refused.refusal()
            == Some(Refusal::Failover {
                top: StreamId::new(1, 0),
                highest: StreamId::new(2, 0)
            }),
        "appending after the gap was not refused: {refused}"
    );
    assert_eq!(ts.store.stream_len(&t).await.unwrap(), 1);
    // The poller starts over from the stream's last ID and fetches `b` again.
    let again = [record("b", 2), record("c", 3)];
    assert_eq!(append(&ts, &t, &again).await.unwrap(), 2);
    let ids: Vec<String> = all_events(ts.store.as_ref(), &t)
        .await
        .iter()
        .map(|e| format!("{}={}", e.record, e.id))
        .collect();
    assert_eq!(
        ids,
        ["a=1-0", "b=2-1", "c=3-0"],
        "2-0 is never issued twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url_and_redis_cluster_are_exclusive() {
    let dir = TempDir::new().unwrap();
    let cfg = ConfigBuilder::new()
        .store(|s| {
            s.redis_url = Some("redis://127.0.0.1:1".into());
            s.redis_cluster = vec!["redis://127.0.0.1:2".into()];
        })
        .source(upstream("sim", "http://127.0.0.1:3/api", &["patients"]))
        .write(&dir.path().join("relay.toml"));
    let out = Command::new(bin())
        .args(["sync", "--once", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("store.redis_cluster"), "{stderr}");
}

struct TlsRedis {
    port: u16,
    ca: std::path::PathBuf,
    child: Child,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// `redis-server` on a TLS port only, with a certificate for 127.0.0.1
/// signed by a self-signed CA made here, and an ACL user `relay` (the
/// default user disabled).
fn tls_redis(dir: &Path, password: &str) -> TlsRedis {
    let days = ["-days", "1"];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=test-ca",
            ][..],
            &days,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
        ],
        dir,
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            &[
                "x509",
                "-req",
                "-in",
                "req.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
            ][..],
            &days,
            &["-extfile", "ext.cnf", "-out", "cert.pem"],
        ]
        .concat(),
        dir,
    );
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--user", "default", "off"])
        .args([
            "--user",
            "relay",
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    eventually_blocking(
        "redis-server to listen on its TLS port",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    TlsRedis {
        port,
        ca: dir.join("ca.pem"),
        child,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_an_acl_user_from_the_environment() {
    if !redis_available() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let password = "tls-test-secret";
    let redis = tls_redis(dir.path(), password);
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 500)],
        ..SimConfig::default()
    })
    .await;
    let cfg = dir.path().join("relay.toml");
    let write = |ca: bool| {
        ConfigBuilder::new()
            .store(|s| {
                s.redis_url = Some(format!("rediss://127.0.0.1:{}", redis.port));
                s.tls_ca_file = ca.then(|| redis.ca.clone());
                s.username_env = Some("TEST_REDIS_USER".into());
                s.password_env = Some("TEST_REDIS_PASSWORD".into());
                s.key_prefix = "test".into();
            })
            .source(upstream("sim", &sim.base_url, &["patients"]))
            .write(&cfg);
    };
    let sync = || {
        Command::new(bin())
            .args(["sync", "--once", "--config", cfg.to_str().unwrap()])
            .env("TEST_REDIS_USER", "relay")
            .env("TEST_REDIS_PASSWORD", password)
            .output()
            .unwrap()
    };
    // The system's roots do not know a self-signed certificate.
    write(false);
    let out = sync();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "connected without trusting the CA");
    assert!(stderr.contains("store.redis_url"), "{stderr}");
    assert!(!stderr.contains(password), "the password leaked: {stderr}");
    write(true);
    let out = sync();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = StoreConfig {
        redis_url: Some(format!(
            "rediss://relay:{password}@127.0.0.1:{}",
            redis.port
        )),
        tls_ca_file: Some(redis.ca.clone()),
        key_prefix: "test".into(),
        ..StoreConfig::default()
    };
    let store: Arc<dyn stamp_relay::store::Store> = store::open(&config).await.unwrap();
    assert!(!store.describe().contains(password), "{}", store.describe());
    let t = Table::new("sim", "patients");
    assert_eq!(store.stream_len(&t).await.unwrap(), 500);
    assert_rebuilds(store.as_ref(), &t, &sim.sim).await;
}
