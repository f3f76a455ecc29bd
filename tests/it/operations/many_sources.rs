//! The status surfaces at many sources: counts by health state on top,
//! the worst sources first, search by name and paging, on the page at `/`
//! (sources really polled: healthy, unreachable, refused) and in
//! `stamp-relay status` at 2,000 sources x 5 tables.

use std::time::{Duration, Instant};

use stamp_relay::{
    config::{Paging, SourceConfig},
    health::{Health, State},
    store::{PollStatus, Table},
};
use stamp_relay_simulator::{Faults, SimConfig};

use crate::harness::{
    App, Backend, ConfigBuilder, READ_TOKEN, Sim, TestStore, eventually, free_port, source,
    upstream,
};

fn polled(name: &str, base_url: &str) -> SourceConfig {
    SourceConfig {
        name: name.into(),
        poll_interval: Duration::from_millis(300),
        failing_after_intervals: 1,
        ..source(base_url, &["patients", "users"], Paging::Pages, 100)
    }
}

async fn page(app: &App, query: &str) -> reqwest::Response {
    app.http
        .get(format!("{}/{query}", app.base))
        .basic_auth("me", Some(READ_TOKEN))
        .send()
        .await
        .unwrap()
}

async fn html(app: &App, query: &str) -> String {
    let r = page(app, query).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The sources listed on a page, in order, with their states.
fn rows(html: &str) -> Vec<(String, String)> {
    html.split("<tr data-source=\"")
        .skip(1)
        .map(|row| {
            let (name, rest) = row.split_once('"').unwrap();
            let state = rest.split("data-state=\"").nth(1).unwrap();
            (
                name.to_string(),
                state.split('"').next().unwrap().to_string(),
            )
        })
        .collect()
}

/// The count shown for `state` in the `kind` line (`sources` or `tables`).
fn count(html: &str, kind: &str, state: &str) -> usize {
    let line = html
        .split(&format!("<p id={kind}-by-state>"))
        .nth(1)
        .unwrap();
    let at = line
        .split(&format!("data-count=\"{state}\""))
        .nth(1)
        .unwrap();
    let text = at.split('>').nth(1).unwrap().split('<').next().unwrap();
    text.rsplit(' ').next().unwrap().parse().unwrap()
}

/// 50 sources on the simulator, 3 on a port nobody listens on, 2 on an
/// upstream that answers 401: 55 sources, two pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_counts_states_puts_the_worst_first_searches_and_pages() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig::default()).await;
    let refusing = Sim::start(SimConfig {
        faults: Faults {
            fail_next: 1_000_000,
            fail_status: 401,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let dead = format!("http://127.0.0.1:{}/api", free_port());
    let mut sources: Vec<SourceConfig> = (0..50)
        .map(|i| polled(&format!("org-{i:02}"), &sim.base_url))
        .collect();
    sources.extend((0..3).map(|i| polled(&format!("dead-{i}"), &dead)));
    sources.extend((0..2).map(|i| polled(&format!("locked-{i}"), &refusing.base_url)));
    let app = App::spawn(&ts, sources).await;
    eventually("every table judged", Duration::from_secs(60), async || {
        let h = html(&app, "").await;
        count(&h, "tables", "failing") == 6 && count(&h, "tables", "auth_failed") == 4
    })
    .await;

    let first = html(&app, "").await;
    assert_eq!(count(&first, "sources", "healthy"), 50);
    assert_eq!(count(&first, "sources", "failing"), 3);
    assert_eq!(count(&first, "sources", "auth_failed"), 2);
    assert_eq!(count(&first, "tables", "healthy"), 100);
    let listed = rows(&first);
    assert_eq!(listed.len(), 50, "a page holds 50 sources");
    let states: Vec<&str> = listed.iter().take(6).map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        states,
        [
            "auth_failed",
            "auth_failed",
            "failing",
            "failing",
            "failing",
            "healthy"
        ]
    );
    assert!(
        first.contains("data-matching=55 data-page=1 data-pages=2"),
        "paging line"
    );
    assert!(first.contains("rel=next"));

    let second = rows(&html(&app, "?page=2").await);
    assert_eq!(second.len(), 5);
    assert!(second.iter().all(|(_, s)| s == "healthy"));
    let mut all: Vec<String> = listed
        .iter()
        .chain(&second)
        .map(|(n, _)| n.clone())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 55, "the two pages show every source once");

    let found = rows(&html(&app, "?q=DEAD").await);
    assert_eq!(
        found.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["dead-0", "dead-1", "dead-2"]
    );
    let failing = rows(&html(&app, "?state=failing&q=").await);
    assert_eq!(failing.len(), 3);
    let narrowed = html(&app, "?q=org-4").await;
    assert_eq!(rows(&narrowed).len(), 10);
    // The counts on top stay over every source, whatever the search.
    assert_eq!(count(&narrowed, "sources", "failing"), 3);
    // Only the tables of the sources shown are listed.
    assert_eq!(narrowed.matches("<tr data-target=").count(), 20);

    let bad = page(&app, "?state=fine").await;
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    app.stop().await;
}

/// `stamp-relay status` over 2,000 sources x 5 tables declared in the
/// configuration, with the poll statuses their pollers would have written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_pages_two_thousand_sources() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig::default()).await;
    let resources = ["patients", "assessments", "users", "sites", "comments"];
    let names: Vec<String> = (0..2000).map(|i| format!("org-{i:04}")).collect();
    let health = |state, reason: &str| PollStatus {
        holder: "relay-1".into(),
        health: Some(Health {
            state,
            reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
            since: 1,
            next_attempt: None,
        }),
        ..PollStatus::default()
    };
    for (i, name) in names.iter().enumerate() {
        for (j, r) in resources.iter().enumerate() {
            let status = match (i % 100, j) {
                (0, 0) => health(State::Failing, "HTTP 503"),
                (7, _) => health(State::AuthFailed, "HTTP 401"),
                _ => health(State::Healthy, ""),
            };
            ts.store
                .put_poll_status(&Table::new(name, *r), &status)
                .await
                .unwrap();
        }
    }
    let mut builder = ConfigBuilder::on(&ts.config);
    for name in &names {
        builder = builder.source(upstream(name, &sim.base_url, &resources));
    }
    let cfg = builder.write(&ts.dir.path().join("relay.toml"));
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = std::process::Command::new(crate::harness::bin())
            .args(["status", "--config", cfg.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "stamp-relay status {args:?} at 2,000 sources x 5 tables: {:?}, {} bytes",
            started.elapsed(),
            text.len()
        );
        text
    };
    let sources = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("source "))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let first = run(&[]);
    assert!(
        first.contains(
            "sources: auth_failed 20, failing 20, quarantined 0, degraded 0, paused 0, healthy 1960"
        ),
        "{first}"
    );
    assert!(first.contains("tables:  auth_failed 100, failing 20, quarantined 0, degraded 0, paused 0, healthy 9880"), "{first}");
    assert!(
        first.contains("2000 sources match; page 1 of 40"),
        "{first}"
    );
    let listed = sources(&first);
    assert_eq!(listed.len(), 50);
    assert_eq!(listed[0], "org-0007 auth_failed");
    assert_eq!(listed[20], "org-0000 failing");
    assert_eq!(listed[40], "org-0001 healthy");
    // Tables are listed for the sources shown only.
    assert_eq!(
        first
            .lines()
            .filter(|l| l.starts_with("org-") && l.contains('/'))
            .count(),
        250
    );

    let last = sources(&run(&["--page", "40"]));
    assert_eq!(last.last().unwrap(), "org-1999 healthy");
    let found = sources(&run(&["--search", "org-19", "--state", "failing"]));
    assert_eq!(found, ["org-1900 failing"]);
    let out = std::process::Command::new(crate::harness::bin())
        .args([
            "status",
            "--config",
            cfg.to_str().unwrap(),
            "--state",
            "fine",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state"));
}
