//! The status page shows what the API shows, behind a token a browser can send.

use serde_json::{Value, json};
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::SimConfig;

use crate::harness::receiver::TestReceiver;
use crate::harness::{
    App, Backend, ConfigBuilder, READ_TOKEN, Sim, TestStore, eventually, source, upstream,
    wait_synced,
};
use crate::on_both_stores;
use std::time::Duration;

/// The text of `data-<attr>` in the row whose `data-<key>` is `id`.
fn cell(html: &str, key: &str, id: &str, attr: &str) -> String {
    let row_start = html
        .find(&format!("data-{key}=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for {id}"));
    let row = &html[row_start..html[row_start..].find("</tr>").unwrap() + row_start];
    let at = row
        .find(&format!("data-{attr}>"))
        .unwrap_or_else(|| panic!("no {attr} in {row}"))
        + attr.len()
        + 6;
    row[at..at + row[at..].find('<').unwrap()].to_string()
}

on_both_stores!(status_page_matches_the_api);

async fn status_page_matches_the_api(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 30), ("users".into(), 7)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(
        &ts,
        vec![source(
            &sim.base_url,
            &["patients", "users"],
            Paging::Pages,
            10,
        )],
    )
    .await;
    for r in ["patients", "users"] {
        wait_synced(ts.store.as_ref(), &Table::new("sim", r), &sim.sim).await;
    }
    let off: Value = app.post_json("/v1/subscriptions", &json!({"url": "https://hooks.example.com/x", "resources": ["*"], "start": "beginning", "enabled": false})).await;
    // One that delivers everything, so its lag falls to 0.
    let rx = TestReceiver::start(51).await;
    let on = crate::harness::delivery::subscribe_to(
        &app,
        &rx,
        json!({"resources": ["*"], "start": "beginning"}),
    )
    .await;
    let targets = [Table::new("sim", "patients"), Table::new("sim", "users")];
    crate::harness::delivery::wait_delivered(
        ts.store.as_ref(),
        &rx,
        &targets,
        Duration::from_secs(20),
    )
    .await;
    // Deliveries settle through the worker's writer just after receipt.
    eventually(
        "the deliveries to settle",
        Duration::from_secs(10),
        async || {
            let mut lag = 0;
            for t in &targets {
                let sub = ts.store.subscription(&on).await.unwrap().unwrap();
                lag += stamp_relay::store::lag(ts.store.as_ref(), &sub, t)
                    .await
                    .unwrap();
            }
            lag == 0
        },
    )
    .await;

    let anon = app.http.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    assert!(
        anon.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("Basic"),
        "browsers need a Basic challenge"
    );
    let page = app
        .http
        .get(format!("{}/", app.base))
        .basic_auth("me", Some(READ_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("http-equiv=refresh"),
        "the page must refresh itself"
    );

    let api: Value = app.get_json("/v1/resources").await;
    for r in api["resources"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            r["source"].as_str().unwrap(),
            r["resource"].as_str().unwrap()
        );
        assert_eq!(
            cell(&html, "target", &name, "cursor"),
            r["cursor"].to_string(),
            "{name}"
        );
    }
    let id = off["id"].as_str().unwrap();
    // The state cell of each subscription's own row.
    let row = |id: &str| {
        let start = html
            .find(&format!("data-subscription=\"{id}\""))
            .unwrap_or_else(|| panic!("no row for {id}"));
        let len = html[start..].find("</tr>").unwrap();
        html[start..start + len].to_string()
    };
    let off_row = row(id);
    assert!(
        off_row.contains("<span class=bad>disabled</span>"),
        "{off_row}"
    );
    let on_row = row(&on);
    assert!(
        on_row.contains("<span class=ok>enabled</span>") && !on_row.contains("disabled"),
        "{on_row}"
    );
    assert_eq!(cell(&html, "subscription", id, "dead"), "0");
    // Each consumer's health: here both belong to `default`, one disabled,
    // and the other failing only if a send failed (a slow machine's timeout).
    let failing = 1 + usize::from(on_row.contains("data-failure"));
    assert_eq!(
        cell(&html, "consumer", "default", "failing"),
        failing.to_string()
    );
    assert!(
        html.contains("href=\"?consumer=default#subscriptions\""),
        "a link to its subscriptions"
    );
    // Disabled from the beginning, it lacks every stamp of the longest table.
    let lag = api["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cursor"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(cell(&html, "subscription", id, "lag"), lag.to_string());
    assert_eq!(cell(&html, "subscription", &on, "lag"), "0");

    // The rate and who polls come from the store, so every instance (and
    // the `status` command) shows the same. The initial load happened within
    // the last minute, so the rate is above zero; a poll may land between
    // two reads, so the page matches the API read before or after it.
    let before: Value = app.get_json("/v1/resources").await;
    let html = app
        .http
        .get(format!("{}/", app.base))
        .basic_auth("me", Some(READ_TOKEN))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let after: Value = app.get_json("/v1/resources").await;
    for (i, r) in before["resources"].as_array().unwrap().iter().enumerate() {
        let name = format!(
            "{}/{}",
            r["source"].as_str().unwrap(),
            r["resource"].as_str().unwrap()
        );
        assert!(r["rate_per_min"].as_f64().unwrap() > 0.0, "{name}: {r}");
        assert!(
            r["polled_by"].as_str().is_some_and(|h| !h.is_empty()),
            "{name}: {r}"
        );
        assert!(r["last_error"].is_null(), "{name}: {r}");
        let shown: f64 = cell(&html, "target", &name, "rate").parse().unwrap();
        let before = r["rate_per_min"].as_f64().unwrap();
        let later = after["resources"][i]["rate_per_min"].as_f64().unwrap();
        assert!(
            shown == before || shown == later,
            "{name}: page {shown}, API {before} then {later}"
        );
    }
    app.stop().await;

    // `stamp-relay status` reads the same facts from the store.
    let cfg = ConfigBuilder::on(&ts.config)
        .source(upstream("sim", &sim.base_url, &["patients", "users"]))
        .write(&ts.dir.path().join("relay.toml"));
    let out = std::process::Command::new(crate::harness::bin())
        .args(["status", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for r in api["resources"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            r["source"].as_str().unwrap(),
            r["resource"].as_str().unwrap()
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&name))
            .unwrap_or_else(|| panic!("no line for {name} in\n{text}"));
        assert!(
            line.contains(&r["last_id"].as_str().unwrap().to_string()),
            "{line}"
        );
        assert!(line.contains("in sync (polled by "), "{line}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no line for {id} in\n{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    // id, state, pending, waiting, lag, dead letters, url
    assert_eq!(
        cols[1..6],
        ["disabled", "0", "0", &lag.to_string(), "0"],
        "{line}"
    );
}

/// Headless Chromium, as a person would open it: the browser answers the
/// Basic challenge with the token, and the rendered page shows the cursors
/// the API reports. Needs Debian's `chromium` (`.ci/run` installs it); skipped
/// without it unless `STAMP_RELAY_REQUIRE_CHROMIUM` is `1` or `true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        assert!(
            !std::env::var("STAMP_RELAY_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1" || v == "true"),
            "chromium is not installed but STAMP_RELAY_REQUIRE_CHROMIUM=1; apt-get install chromium"
        );
        eprintln!("skipping: chromium is not installed");
        return;
    };
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 12)],
        ..SimConfig::default()
    })
    .await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 10)],
    )
    .await;
    wait_synced(ts.store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;
    let profile = tempfile::TempDir::new().unwrap();
    let url = app
        .base
        .replace("http://", &format!("http://viewer:{READ_TOKEN}@"))
        + "/";
    let out = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .output()
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).replace("data-cursor=\"\"", "data-cursor");
    assert!(
        dom.contains("<h1>stamp-relay</h1>"),
        "chromium did not render the page:\n{dom}"
    );
    let api: Value = app.get_json("/v1/resources").await;
    let cursor = api["resources"][0]["cursor"].to_string();
    assert_eq!(cell(&dom, "target", "sim/patients", "cursor"), cursor);
    app.stop().await;
}
