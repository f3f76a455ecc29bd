//! Peers that answer far more than the relay keeps (issue 24, findings 2
//! and 3): a real server on a loopback port answers every request with a
//! 300 MB body and counts the bytes the relay took. The relay reads a
//! receiver's answer only up to the 4 KiB it keeps, and an upstream's page
//! up to `max_page_bytes`, error bodies and token answers up to 64 KiB,
//! then closes the connection; what the server got rid of stays bounded
//! (the kernel's socket buffers aside).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use stamp_relay::config::{Auth, Paging, Secret};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

use crate::harness::{App, Backend, TestStore, config, source};

const HUGE: u64 = 300 << 20;
/// What the relay may take of a huge answer: its cap plus what loopback
/// socket buffers hold (a few MB each way).
const BOUNDED: u64 = 48 << 20;

/// A server that answers every request with `status` and a 300 MB JSON
/// string body; the bytes it managed to send, over all connections.
async fn huge_answers(status: u16) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                // The request (small) before the answer.
                let mut buf = vec![0; 16 << 10];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n\"",
                    HUGE + 2
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'a'; 64 << 10];
                let mut left = HUGE;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n as u64;
                }
                let _ = s.write_all(b"\"").await;
            });
        }
    });
    (base, sent)
}

/// Waits for the server to stop sending (the relay closed the connection
/// or stopped reading), then what it sent.
async fn settled(sent: &AtomicU64) -> u64 {
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receivers_huge_answer_is_read_only_as_far_as_it_is_kept() {
    let (hook, sent) = huge_answers(200).await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let app = App::spawn_with(&ts, vec![], |c| {
        // Time enough to read all 300 MB, had the relay tried.
        c.delivery.request_timeout = Duration::from_secs(20);
    })
    .await;
    let created = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": format!("{hook}/h"), "resources": ["*"]}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let ping = app
        .post_json(&format!("/v1/subscriptions/{id}/test"), &json!({}))
        .await;
    assert_eq!(ping["status"], 200, "{ping}");
    assert_eq!(ping["response"].as_str().unwrap().len(), 4096);
    let took = settled(&sent).await;
    assert!(
        took < BOUNDED,
        "the relay read {took} bytes of a 300 MB answer"
    );
    app.stop().await;
}

/// One poll of a relay whose source is `base_url`, tweaked; its error.
async fn poll_error(
    base_url: &str,
    tweak: impl FnOnce(&mut stamp_relay::config::Config),
) -> String {
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let mut src = source(base_url, &["patients"], Paging::Pages, 100);
    src.max_attempts = 1;
    src.request_timeout = Duration::from_secs(20);
    let mut cfg = config(&ts.config, vec![src]);
    tweak(&mut cfg);
    let mut relay = stamp_relay::app::Relay::with_store(cfg, ts.store.clone()).unwrap();
    let cancel = CancellationToken::new();
    relay.pollers[0]
        .poll_once(&cancel)
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_page_past_max_page_bytes_fails_the_poll_unread() {
    let (base, sent) = huge_answers(200).await;
    let err = poll_error(&base, |_| {}).await;
    assert!(
        err.contains("larger than 32 MiB") && err.contains("max_page_bytes"),
        "{err}"
    );
    let took = settled(&sent).await;
    assert!(
        took < BOUNDED,
        "the relay read {took} bytes of a 300 MB page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_upstream_error_bodies_and_token_answers_are_cut_short() {
    let (base, sent) = huge_answers(500).await;
    let err = poll_error(&base, |_| {}).await;
    assert!(err.contains("HTTP 500"), "{err}");
    let took = settled(&sent).await;
    assert!(
        took < BOUNDED,
        "the relay read {took} bytes of a 300 MB error"
    );

    let (tokens, sent) = huge_answers(200).await;
    let token_url = url::Url::parse(&format!("{tokens}/token/")).unwrap();
    let err = poll_error("http://127.0.0.1:9/api", |c| {
        c.sources[0].auth = Auth::OAuth {
            client_id: Secret::new("relay"),
            client_secret: Secret::new("client-secret-of-the-relay"),
            token_url,
        }
    })
    .await;
    assert!(err.contains("token answer is larger than 64 KiB"), "{err}");
    let took = settled(&sent).await;
    assert!(
        took < BOUNDED,
        "the relay read {took} bytes of a 300 MB token answer"
    );
}

/// An upstream whose every page says there is a next one (finding 7).
async fn endless_pages() -> String {
    use axum::{Json, Router, extract::Query, routing::get};
    use std::collections::HashMap;
    async fn list(Query(q): Query<HashMap<String, String>>) -> Json<serde_json::Value> {
        let page: u64 = q["page"].parse().unwrap();
        Json(json!({
            "count": 5,
            "next": format!("http://upstream.invalid/api/patients/?page={}", page + 1),
            "results": [{"uuid": format!("r{page}"), "update_stamp": page, "deleted_at": null}],
        }))
    }
    let app = Router::new().route("/api/patients/", get(list));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_whose_pages_never_end_stops_with_an_error() {
    let base = endless_pages().await;
    let poll = poll_error(&base, |c| c.sources[0].settings.page_size = 1);
    let err = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the walk went on");
    // 5 records at 1 a page fill 5 pages; 10 more are the margin.
    assert!(err.contains("/api/patients/?sync=0&page=16&"), "{err}");
    assert!(err.contains("past page 15"), "{err}");
}

/// An upstream whose error text would forge a log line and colour the
/// operator's terminal (finding 11).
async fn forging_upstream() -> String {
    use axum::{Router, http::StatusCode, routing::get};
    let forged = "boom\n2026-01-01T00:00:00Z  INFO all is well\u{1b}[2J";
    let app = Router::new().route(
        "/api/patients/",
        get(move || async move { (StatusCode::BAD_REQUEST, forged) }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_text_is_escaped_in_text_and_json_logs() {
    let base = forging_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut src = source(&base, &["patients"], Paging::Pages, 100);
    src.max_attempts = 1;
    let cfg = crate::harness::ConfigBuilder::new()
        .data_dir(dir.path().join("data"))
        .source(src)
        .write(&dir.path().join("relay.toml"));
    for format in ["text", "json"] {
        let out = tokio::process::Command::new(crate::harness::bin())
            .args(["--log-format", format, "sync", "--once", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("boom"),
            "{format}: the error is logged:\n{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
            "{format}: a forged line:\n{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "{format}: an escape sequence:\n{text}"
        );
    }
}

/// The page bound follows the pages as they come: an upstream that caps
/// `page_size` below the one asked for is walked to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_of_an_upstream_capping_page_size_is_not_cut_short() {
    let sim = crate::harness::Sim::start(stamp_relay_simulator::SimConfig {
        max_page_size: 5,
        initial: vec![("patients".into(), 200)],
        ..Default::default()
    })
    .await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 1000);
    let mut relay = crate::harness::relay(&ts, vec![src]);
    let report = relay.pollers[0]
        .poll_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome.appended(), 200, "{report:?}");
    assert!(report.pages >= 40, "{report:?}");
}

/// The peak memory (VmHWM, bytes) of a process, from /proc.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Measured from a `stamp-relay serve` process: delivering to a receiver
/// that answers every webhook with 300 MB leaves the relay's peak memory
/// within tens of MB (the whole answer was read into memory before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_relays_peak_memory_stays_bounded_under_huge_receiver_answers() {
    let (hook, sent) = huge_answers(200).await;
    let sim = crate::harness::Sim::start(stamp_relay_simulator::SimConfig {
        initial: vec![("patients".into(), 8)],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::harness::free_port();
    let mut text = crate::harness::ConfigBuilder::new()
        .data_dir(dir.path().join("data"))
        .listen(port)
        .store(|s| s.lease_ttl = Duration::from_secs(30))
        .delivery(|d| {
            d.allow_private_targets = true;
            d.request_timeout = Duration::from_secs(20);
        })
        .source(source(&sim.base_url, &["patients"], Paging::Pages, 100))
        .toml();
    // The builder writes no subscriptions (`subscriptions = []`); this one
    // goes as a table instead.
    text = text.replace("subscriptions = []\n", "");
    text.push_str(&format!(
        "\n[[subscriptions]]\nid = \"huge\"\nurl = \"{hook}/h\"\nresources = [\"*\"]\n\
         secret_env = \"HUGE_SECRET\"\nstart = \"beginning\"\n"
    ));
    let cfg = dir.path().join("relay.toml");
    std::fs::write(&cfg, text).unwrap();
    let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
    let child = crate::harness::serve(&cfg)
        .env("HUGE_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .stderr(log)
        .spawn()
        .unwrap();
    let relay = crate::harness::Proc(child);
    let pid = relay.id();
    // Eight deliveries, each answered with 300 MB (and retried).
    let logs = dir.path().join("relay.log");
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while sent.load(Ordering::Relaxed) < 8 << 20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    if waited.await.is_err() {
        let log = std::fs::read_to_string(&logs).unwrap_or_default();
        panic!("no webhook answered within 60 s; the relay's log:\n{log}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = peak_memory(pid);
    println!("stamp-relay serve peak memory: {} MB", peak >> 20);
    assert!(peak < 120 << 20, "the relay peaked at {} MB", peak >> 20);
}
