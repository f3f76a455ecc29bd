//! The portal in real headless Chromium, driven through WebDriver
//! (`fantoccini` and Debian's `chromedriver`, package `chromium-driver`):
//! open a portal link, create an endpoint, see a delivery arrive, make the
//! receiver fail, see the failure and its reason, fix it, retry from the
//! page; by keyboard only redrive a dead letter, retry everything failed
//! and replay from the beginning; rotate the secret, read the event
//! catalog; another consumer's
//! endpoint never shows, nor answers the link's token. Skipped without chromedriver unless
//! `STAMP_RELAY_REQUIRE_CHROMIUM` is `1` or `true`. With
//! `STAMP_RELAY_UPDATE_SCREENSHOT=1` it saves docs/portal.png.

use std::{process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::SimConfig;

use crate::harness::delivery::messages;
use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{App, Backend, Sim, TestStore, eventually, free_port, source, wait_synced};

/// A chromedriver on a free local port, ended on drop.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    /// None when chromedriver is missing and not required.
    async fn start() -> Option<Driver> {
        let found = std::process::Command::new("chromedriver")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                !std::env::var("STAMP_RELAY_REQUIRE_CHROMIUM")
                    .is_ok_and(|v| v == "1" || v == "true"),
                "chromedriver is not installed but STAMP_RELAY_REQUIRE_CHROMIUM=1; apt-get install chromium-driver"
            );
            eprintln!("skipping: chromedriver is not installed");
            return None;
        }
        let port = free_port();
        let child = tokio::process::Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually(
            "chromedriver to listen",
            Duration::from_secs(20),
            async || {
                reqwest::get(&status)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        Some(Driver { child, url })
    }

    /// A headless Chromium session with a fresh profile.
    async fn session(&self, profile: &std::path::Path) -> Client {
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1400",
            format!("--user-data-dir={}", profile.display()),
        ]);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn by_id(c: &Client, id: &str) -> Element {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
}

async fn text_of(c: &Client, id: &str) -> String {
    by_id(c, id).await.text().await.unwrap()
}

async fn click(c: &Client, id: &str) {
    by_id(c, id)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

async fn fill(c: &Client, id: &str, value: &str) {
    let e = by_id(c, id).await;
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Waits until the status line says `want` (each action ends with one).
async fn wait_status(c: &Client, want: &str) {
    let mut last = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            last = text_of(c, "status").await;
            if last.contains(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "status never said {want:?}; last {last:?}");
}

/// Searches the log until the row of `record` is in state `state`; its text.
async fn wait_row(c: &Client, record: &str, state: &str) -> String {
    fill(c, "log-record", record).await;
    let css = format!("#messages tr[data-state={state}]");
    for _ in 0..100 {
        click(c, "log-search-go").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The table may be redrawn between finding the row and reading it.
        if let Ok(row) = c.find(Locator::Css(&css)).await
            && let Ok(text) = row.text().await
        {
            return text;
        }
    }
    panic!(
        "no {state} row for {record}: {}",
        text_of(c, "messages").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_manages_an_endpoint_in_chromium() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 6)],
        ..SimConfig::default()
    })
    .await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 10)],
    )
    .await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let page = app
        .http
        .get(format!("{}/portal/", app.base))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !page.text().await.unwrap().contains("<script>"),
        "no inline script"
    );

    // Two consumers; the other one's endpoint must never show.
    for name in ["care", "records"] {
        app.post_json("/v1/consumers", &json!({ "name": name }))
            .await;
    }
    let hidden = "https://hooks.example.com/records-only-endpoint";
    let other: Value = app
        .post_json("/v1/subscriptions", &json!({"url": hidden, "resources": ["sim/patients"], "consumer": "records", "enabled": false}))
        .await;
    let other = other["id"].as_str().unwrap().to_string();
    let link: Value = app
        .post_json("/v1/consumers/care/portal-links", &json!({}))
        .await;
    let link = link["url"].as_str().unwrap().to_string();
    let link = if link.starts_with('/') {
        format!("{}{link}", app.base)
    } else {
        link
    };
    let token = link.split_once('#').unwrap().1.to_string();

    let profile = tempfile::TempDir::new().unwrap();
    let c = driver.session(profile.path()).await;
    // The portal link: the token in the fragment, gone from the address bar.
    c.goto(&link).await.unwrap();
    wait_status(&c, "Loading: done").await;
    let url = c.current_url().await.unwrap();
    assert!(
        url.fragment().is_none(),
        "the token stays in the address bar: {url}"
    );

    let rx = TestReceiver::start(11).await;
    click(&c, "new-endpoint").await;
    wait_status(&c, "Loading: done").await;
    assert_eq!(
        by_id(&c, "f-resources")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("sim/patients")
    );
    fill(&c, "f-url", &rx.url).await;
    fill(&c, "f-resources", "sim/patients").await;
    fill(&c, "f-description", "care platform").await;
    click(&c, "save-endpoint").await;
    wait_status(&c, "Created ").await;
    let secret = text_of(&c, "secret").await;
    let secret = secret
        .strip_prefix("Signing secret: ")
        .expect("the secret shown")
        .to_string();
    rx.set_secrets(&[&secret]);
    let subs: Value = app.get_json("/v1/subscriptions").await;
    let mine = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == rx.url.as_str());
    let mine = mine.expect("the endpoint made in the portal");
    assert_eq!(mine["consumer"], "care", "{mine}");
    let sub = mine["id"].as_str().unwrap().to_string();

    // A delivery arrives and the log shows it delivered.
    let first = sim.sim.random_writes(Some("patients"), 1).pop().unwrap();
    eventually(
        "the delivery to arrive",
        Duration::from_secs(20),
        async || {
            rx.events()
                .iter()
                .any(|e| e["subject"] == first.id.as_str())
        },
    )
    .await;
    wait_row(&c, &first.id, "delivered").await;
    assert_eq!(rx.bad_signatures(), 0);

    // The receiver fails: the log shows the failure and its reason.
    rx.set_mode(Mode::Flaky(1.0));
    let second = sim.sim.random_writes(Some("patients"), 1).pop().unwrap();
    let row = wait_row(&c, &second.id, "dead").await;
    assert!(row.contains("HTTP 500") && row.contains("flaky"), "{row}");
    // Fixed, and retried from the page.
    rx.set_mode(Mode::Ok);
    let dead = messages(&app, &sub, &format!("record={}", second.id)).await;
    let event_id = dead[0]["event_id"].as_str().unwrap().to_string();
    let retry = format!("#messages tr[data-event=\"{event_id}\"] button");
    c.find(Locator::Css(&retry))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_status(&c, &format!("Retrying {event_id}: done")).await;
    eventually(
        "the retried event to arrive",
        Duration::from_secs(20),
        async || rx.event_ids().contains(&event_id),
    )
    .await;
    wait_row(&c, &second.id, "delivered").await;
    recovery_by_keyboard(&c, &sim, &rx).await;

    // The secret rotates; the page shows the new one, as the API does.
    click(&c, "rotate-secret").await;
    wait_status(&c, "Secret rotated").await;
    let shown = text_of(&c, "secret").await;
    let api = app
        .get_json(&format!("/v1/subscriptions/{sub}/secret"))
        .await;
    let new = api["secret"].as_str().unwrap();
    assert_ne!(new, secret);
    assert!(shown.contains(new), "{shown}");

    screenshot(&c).await;

    // The catalog lists the types of the tables the consumer may read.
    click(&c, "nav-catalog").await;
    wait_status(&c, "Loading: done").await;
    let catalog = c
        .find(Locator::Css(
            "#catalog details[data-type$='patients.updated'] pre",
        ))
        .await
        .unwrap();
    assert!(
        // Inside a closed <details>: not shown, so not `text()`.
        catalog
            .prop("textContent")
            .await
            .unwrap()
            .unwrap_or_default()
            .contains("\"id\""),
        "an example payload"
    );
    click(&c, "nav-endpoints").await;
    wait_status(&c, "Loading: done").await;
    never_shows(&c, &app, &token, &other, hidden).await;
    c.close().await.unwrap();
    app.stop().await;
}

/// The other consumer's endpoint is not on the page, and the link's token
/// gets 404 for it, as for an id that does not exist.
async fn never_shows(c: &Client, app: &App, token: &str, other: &str, url: &str) {
    let page = c.source().await.unwrap();
    assert!(
        !page.contains(other) && !page.contains(url),
        "another consumer's endpoint shows"
    );
    let rows = c
        .find_all(Locator::Css("#endpoints tbody tr[data-endpoint]"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "only the consumer's own endpoint is listed");
    for path in ["", "/messages", "/secret", "/attempts"] {
        let r = app
            .http
            .get(format!("{}/v1/subscriptions/{other}{path}", app.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "GET {path} of another consumer's endpoint");
    }
}

/// docs/portal.png, the README's picture, only when asked for.
async fn screenshot(c: &Client) {
    if !std::env::var("STAMP_RELAY_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        return;
    }
    c.execute("document.getElementById('secret').textContent = ''", vec![])
        .await
        .unwrap();
    fill(c, "log-record", "").await;
    click(c, "log-search-go").await;
    wait_status(c, "Searching: done").await;
    let png = c.screenshot().await.unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/portal.png");
    std::fs::write(path, png).unwrap();
}

/// Presses Enter on the element `id` (a focused button or field).
async fn press_enter(c: &Client, id: &str) {
    let e = by_id(c, id).await;
    e.send_keys("\u{E007}")
        .await
        .unwrap_or_else(|err| panic!("Enter on #{id}: {err}"));
}

/// The recovery actions, by keyboard only: a dead letter redriven, every
/// waiting retry made due, a replay from the beginning typed and submitted.
async fn recovery_by_keyboard(c: &Client, sim: &Sim, rx: &TestReceiver) {
    rx.set_mode(Mode::Flaky(1.0));
    let third = sim.sim.random_writes(Some("patients"), 1).pop().unwrap();
    wait_row(c, &third.id, "dead").await;
    rx.set_mode(Mode::Ok);
    press_enter(c, "redrive").await;
    wait_status(c, "1 dead letters redriven").await;
    wait_row(c, &third.id, "delivered").await;
    press_enter(c, "retry-failed").await;
    wait_status(c, "waiting retries are due now").await;
    let before = rx.event_ids().len();
    fill(c, "replay-stamp", "beginning").await;
    press_enter(c, "replay-stamp").await;
    wait_status(c, "Replay started").await;
    eventually(
        "the replay to arrive",
        Duration::from_secs(20),
        async || rx.event_ids().len() > before,
    )
    .await;
}
