//! A real local Redis Cluster for tests, started from Debian's `redis-server`
//! the way `RedisServer` starts one node: each node on a free port below
//! 55536 (its cluster bus listens on the port + 10000), joined with
//! `redis-cli --cluster create`. A short `cluster-node-timeout` lets a
//! replica take over from a killed master within a few seconds.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::harness::{eventually_blocking, free_port, redis_available};

pub struct ClusterNode {
    pub port: u16,
    child: Option<Child>,
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    pub dir: TempDir,
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55536 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits up to 30 s for what a starting cluster does.
fn wait_for(what: &str, ok: impl FnMut() -> bool) {
    eventually_blocking(what, Duration::from_secs(30), ok);
}

impl RedisCluster {
    /// Three masters, each with `replicas` replicas; None (skip) when
    /// redis-server is missing and not required.
    pub fn start(replicas: usize) -> Option<RedisCluster> {
        if !redis_available() {
            return None;
        }
        let dir = TempDir::new().unwrap();
        let nodes: Vec<ClusterNode> = (0..3 * (1 + replicas))
            .map(|_| ClusterNode {
                port: cluster_port(),
                child: None,
            })
            .collect();
        let mut cluster = RedisCluster { nodes, dir };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        for n in &cluster.nodes {
            wait_for("every node reports cluster_state:ok", || {
                cli(n.port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        if replicas > 0 {
            for n in &cluster.nodes {
                wait_for("every replica is in sync with its master", || {
                    let info = cli(n.port, &["info", "replication"]);
                    info.contains("role:master") || info.contains("master_link_status:up")
                });
            }
        }
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let port = self.nodes[i].port;
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--dir", dir.to_str().unwrap(), "--save", ""])
            .args(["--appendonly", "no", "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.nodes[i].child = Some(child);
        wait_for("a cluster node answers PING", || {
            cli(port, &["ping"]).contains("PONG")
        });
    }

    /// The seed URLs, as `store.redis_cluster` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    fn serves(&self, port: u16, slot: u16) -> bool {
        let nodes = cli(port, &["cluster", "nodes"]);
        let me = nodes.lines().find(|l| l.contains("myself")).unwrap_or("");
        me.split_whitespace().skip(8).any(|range| {
            let mut ends = range.split('-').filter_map(|p| p.parse::<u16>().ok());
            match (ends.next(), ends.next()) {
                (Some(a), Some(b)) => (a..=b).contains(&slot),
                (Some(a), None) => a == slot,
                _ => false,
            }
        })
    }

    /// SIGKILL of one node, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the master serving `key`'s slot, once a live master
    /// does (after a failover: once a replica took over) and every live node
    /// reports the cluster healthy.
    pub fn master_of(&self, key: &str) -> usize {
        let slot = cli(
            self.alive().next().unwrap_or(0),
            &["cluster", "keyslot", key],
        );
        let slot: u16 = slot.trim().parse().expect("CLUSTER KEYSLOT");
        let mut master = None;
        wait_for("a replica takes over the slot", || {
            master = self.nodes.iter().position(|n| {
                n.child.is_some()
                    && cli(n.port, &["info", "replication"]).contains("role:master")
                    && self.serves(n.port, slot)
            });
            master.is_some()
        });
        for port in self.alive() {
            wait_for("the cluster recovers after a failover", || {
                cli(port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        master.unwrap_or_default()
    }

    fn alive(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Runs test bodies on a local three-master Redis Cluster too, as
/// `<subject>::<file>::cluster::<name>::cluster` (`cargo test --test it cluster::`).
#[macro_export]
macro_rules! on_cluster {
    ($($name:ident),* $(,)?) => {
        mod cluster {
            $(
                mod $name {
                    use $crate::harness::{Backend, TestStore};
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn cluster() {
                        if let Some(ts) = TestStore::open(Backend::Cluster).await {
                            super::super::$name(ts).await;
                        }
                    }
                }
            )*
        }
    };
}
