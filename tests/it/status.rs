//! The status page shows what the API shows, behind a token a browser can send.

use serde_json::{Value, json};
use stamp_relay::{config::Paging, simulator::SimConfig, store::Target};

use crate::harness::{App, Backend, READ_TOKEN, Sim, TestStore, source, wait_synced};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_matches_the_api() {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 30), ("users".into(), 7)],
        ..SimConfig::default()
    })
    .await;
    let ts = TestStore::open(Backend::Sqlite).await.unwrap();
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
        wait_synced(ts.store.as_ref(), &Target::new("sim", r), &sim.sim).await;
    }
    let off: Value = app
        .post("/v1/subscriptions", &json!({"url": "https://hooks.example.com/x", "resources": ["*"], "start": "beginning", "enabled": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

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

    let api: Value = app
        .get("/v1/resources")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    assert!(
        html[html.find(&format!("data-subscription=\"{id}\"")).unwrap()..].contains("disabled")
    );
    assert_eq!(cell(&html, "subscription", id, "dead"), "0");
    app.stop().await;
}
