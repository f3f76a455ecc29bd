//! The SSRF guard at the door: a subscription whose URL is, or resolves
//! to, an address delivery refuses is refused when it is created or
//! changed (a 422 naming `delivery.allowed_cidrs`), and a `[[subscriptions]]`
//! entry by `check-config` and at startup, rather than failing every send.

use std::process::Command;

use serde_json::{Value, json};
use stamp_relay::config::Paging;
use stamp_relay_simulator::SimConfig;

use crate::harness::{App, Sim, TestStore, bin, source};
use crate::on_both_stores;

on_both_stores!(internal_targets_are_refused_at_the_door);

const INTERNAL: [&str; 6] = [
    "http://127.0.0.1:9/hook",
    "http://10.0.0.5/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:9/hook",
    "http://[::ffff:127.0.0.1]:9/hook",
    "http://localhost:9/hook",
];

async fn internal_targets_are_refused_at_the_door(ts: TestStore) {
    let sim = Sim::start(SimConfig::default()).await;
    let sources = vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)];
    let app = App::spawn_with(&ts, sources.clone(), |c| {
        c.delivery.allow_private_targets = false;
        // Loopback opened by the configuration, as a test receiver needs.
        c.delivery.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let refused = |r: &Value, url: &str| {
        assert_eq!(r["field"], "url", "{url}: {r}");
        let detail = r["detail"].as_str().unwrap();
        assert!(detail.contains("delivery.allowed_cidrs"), "{url}: {detail}");
    };
    let allowed = json!({"url": "http://127.0.0.1:9/hook", "resources": ["*"], "enabled": false});
    let r = app
        .post("/v1/subscriptions", &allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "loopback is allowed by delivery.allowed_cidrs"
    );
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let internal = [
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "http://192.168.1.10/hook",
        "http://[fd00::1]/hook",
    ];
    for url in internal {
        let body = json!({"url": url, "resources": ["*"]});
        let r = app.post("/v1/subscriptions", &body).send().await.unwrap();
        assert_eq!(r.status(), 422, "{url}");
        refused(&r.json().await.unwrap(), url);
        let path = format!("/v1/subscriptions/{id}");
        let r = app.patch(&path, &json!({"url": url})).send().await.unwrap();
        assert_eq!(r.status(), 422, "{url}");
        refused(&r.json().await.unwrap(), url);
    }
    let subs = ts.store.subscriptions().await.unwrap();
    assert_eq!(subs.len(), 1, "only the allowed one was stored");
    assert_eq!(subs[0].url.as_str(), "http://127.0.0.1:9/hook");
    app.stop().await;
}

/// `check-config` names the entry and the setting that would allow it.
#[test]
fn check_config_refuses_an_internal_webhook_url() {
    let dir = tempfile::tempdir().unwrap();
    let entry = |i: usize, url: &str| {
        format!(
            "[[subscriptions]]\nid = \"s{i}\"\nurl = \"{url}\"\nresources = [\"pc/patients\"]\nsecret_env = \"SR_DOOR_WHSEC\"\n"
        )
    };
    let mut body = "[[sources]]\nname = \"pc\"\nbase_url = \"http://127.0.0.1:9/api\"\nresources = [\"patients\"]\n".to_string();
    for (i, url) in INTERNAL.iter().enumerate() {
        body.push_str(&entry(i, url));
    }
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, &body).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("SR_DOOR_WHSEC", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    for i in 0..INTERNAL.len() {
        let key = format!("subscriptions[{i}].url:");
        let line = text.lines().find(|l| l.contains(&key));
        let line = line.unwrap_or_else(|| panic!("{key} missing from:\n{text}"));
        assert!(line.contains("delivery.allowed_cidrs"), "{line}");
    }
    // Allowed by the file: ok.
    let open = format!(
        "{body}[delivery]\nallowed_cidrs = [\"127.0.0.0/8\", \"::1/128\", \"10.0.0.0/8\", \"169.254.0.0/16\"]\n"
    );
    std::fs::write(&path, open).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("SR_DOOR_WHSEC", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
}
