//! A real `redis-server` per test on a free port, killable and restartable.
//!
//! Without `redis-server` on the PATH the Redis tests are skipped with a
//! message, unless `STAMP_RELAY_REQUIRE_REDIS=1` (set by `.ci/run`), which
//! turns a missing Redis into a failure.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use super::{eventually_blocking, free_port};

fn redis_required() -> bool {
    std::env::var("STAMP_RELAY_REQUIRE_REDIS").is_ok_and(|v| v == "1" || v == "true")
}

/// Whether `redis-server` is installed; false (skip) only when it is not
/// required.
pub fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !redis_required(),
            "redis-server is not installed but STAMP_RELAY_REQUIRE_REDIS=1; install it (apt-get install redis-server)"
        );
        eprintln!(
            "skipping: redis-server is not installed (set STAMP_RELAY_REQUIRE_REDIS=1 to fail instead)"
        );
    }
    found
}

pub struct RedisServer {
    pub port: u16,
    pub dir: TempDir,
    aof: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a fresh server, or returns None (skip) when redis-server is
    /// missing and not required.
    pub fn start(aof: bool) -> Option<RedisServer> {
        if !redis_available() {
            return None;
        }
        // A port found free may be taken by another process (another test
        // suite on the machine) before redis-server binds it: then that
        // process answers there, this server exits, and the next port is tried.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: TempDir::new().unwrap(),
                aof,
                child: None,
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server found its free port taken five times over");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts redis-server on the port; false when what answers there is
    /// another server.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.path().to_str().unwrap(), "--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        let what = format!("redis-server on port {port} to answer PING");
        eventually_blocking(&what, Duration::from_secs(10), || ping(port));
        works_in(port, self.dir.path())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "another server took port {} while Redis was down",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the redis-server on `port` works in `dir`: it is the one started
/// there, not another that held the port.
fn works_in(port: u16, dir: &std::path::Path) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let dir = dir.canonicalize().unwrap();
    let mut buf = [0u8; 1024];
    s.write_all(b"CONFIG GET dir\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| String::from_utf8_lossy(&buf[..n]).contains(dir.to_str().unwrap()))
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}
