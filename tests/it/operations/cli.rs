//! The binary as a user runs it: configuration errors name the key, the
//! embedded store names its path, and `demo` works with nothing installed.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use stamp_relay::config::SourceConfig;

use crate::harness::cli::run;
use crate::harness::{ConfigBuilder, bin, free_port, upstream};

fn config_file(body: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), body).unwrap();
    f
}

/// A good file as a user writes it, for the tests of the text itself.
const GOOD: &str = "[[sources]]\nname = \"pc\"\nbase_url = \"http://127.0.0.1:9/api\"\nresources = [\"patients\"]\n";

/// The source `GOOD` names.
fn pc() -> SourceConfig {
    upstream("pc", "http://127.0.0.1:9/api", &["patients"])
}

/// What `GOOD` says, built rather than written.
fn good() -> ConfigBuilder {
    ConfigBuilder::new().source(pc())
}

#[test]
fn check_config_accepts_a_good_file() {
    let f = config_file(GOOD);
    let (ok, text) = run(
        &["check-config", "--config", f.path().to_str().unwrap()],
        &[],
    );
    assert!(ok, "{text}");
    assert!(text.starts_with("ok"), "{text}");
}

#[test]
fn bad_configuration_names_the_key() {
    let cases = [
        (
            "[[sources]]\nname = \"pc\"\nresources = [\"patients\"]\n",
            "base_url",
        ),
        (
            "[[sources]]\nname = \"pc\"\nbase_url = \"http://x/api\"\nresources = [\"patients\"]\n[sources.auth]\nkind = \"kerberos\"\n",
            "kerberos",
        ),
        (
            "[[sources]]\nname = \"pc\"\nbase_url = \"http://x/api\"\nresources = [\"patients\"]\n[sources.auth]\nkind = \"oauth\"\nclient_id_env = \"SR_TEST_UNSET_ID\"\nclient_secret_env = \"SR_TEST_UNSET_SECRET\"\n",
            "sources[0].auth.client_secret_env: environment variable SR_TEST_UNSET_SECRET is not set",
        ),
        (
            "[[sources]]\nname = \"pc\"\nbase_url = \"ftp://x\"\nresources = [\"patients\"]\n",
            "sources[0].base_url",
        ),
        ("[store]\nredis_urll = \"redis://x\"\n", "redis_urll"),
        (
            "[store]\nlease_ttl = \"5s\"\n",
            "store.lease_ttl (5s) must be at least 18s 750ms (delivery.request_timeout (15s) plus a quarter)",
        ),
        (
            "[delivery]\nallowed_cidrs = [\"10.0.0.0/99\"]\n",
            "delivery.allowed_cidrs[0]",
        ),
        (
            "[[sources]]\nname = \"p{c}\"\nbase_url = \"http://x/api\"\nresources = [\"patients\"]\n",
            "sources[0].name",
        ),
    ];
    for (body, needle) in cases {
        let f = config_file(body);
        let (ok, text) = run(
            &["check-config", "--config", f.path().to_str().unwrap()],
            &[],
        );
        assert!(!ok, "accepted:\n{body}");
        assert!(
            text.contains(needle),
            "error for\n{body}\ndoes not name {needle:?}:\n{text}"
        );
    }
    let (ok, text) = run(
        &["check-config", "--config", "/nonexistent/relay.toml"],
        &[],
    );
    assert!(!ok && text.contains("/nonexistent/relay.toml"), "{text}");
}

#[test]
fn environment_overrides_the_file() {
    let f = config_file(GOOD);
    let (ok, text) = run(
        &["check-config", "--config", f.path().to_str().unwrap()],
        &[("STAMP_RELAY__STORE__KEY_PREFIX", "bad{prefix}")],
    );
    assert!(!ok && text.contains("store.key_prefix"), "{text}");
}

#[test]
fn unreachable_redis_names_the_address() {
    let port = free_port();
    let f = config_file(
        &good()
            .store(|s| s.redis_url = Some(format!("redis://:hunter2@127.0.0.1:{port}")))
            .toml(),
    );
    let (ok, text) = run(
        &["sync", "--once", "--config", f.path().to_str().unwrap()],
        &[],
    );
    assert!(!ok);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("store.redis_url"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the Redis password leaked:\n{text}"
    );
}

#[test]
fn unusable_data_dir_names_the_path() {
    let dir = tempfile::TempDir::new().unwrap();
    // A file where the folder should be.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let f = config_file(&good().data_dir(&file).toml());
    let (ok, text) = run(&["status", "--config", f.path().to_str().unwrap()], &[]);
    assert!(!ok && text.contains(file.to_str().unwrap()), "{text}");
    // A damaged database file.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("stamp-relay.sqlite3"), vec![0x42u8; 8192]).unwrap();
    let f = config_file(&good().data_dir(&data).toml());
    let (ok, text) = run(&["status", "--config", f.path().to_str().unwrap()], &[]);
    assert!(!ok && text.contains("stamp-relay.sqlite3"), "{text}");
}

/// `demo` with no Redis, no config and no network shows events within
/// seconds and stops cleanly on SIGINT.
#[test]
fn demo_shows_events_and_stops_on_sigint() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = Command::new(bin())
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("STAMP_RELAY__STORE__REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(crate::harness::Proc)
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut banner, mut events, mut live, mut hooks) = (false, 0, 0, 0);
    while live == 0 || events < 5 || hooks == 0 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed no events within 60 s");
        banner |= line.contains("stamp-relay demo");
        assert!(!line.contains("signature INVALID"), "{line}");
        hooks += usize::from(line.contains("webhook") && line.contains("signature verified"));
        if line.contains("stamp ") && !line.contains("webhook") {
            events += 1;
            live += usize::from(!line.contains("initial load"));
        }
    }
    assert!(banner);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(status.success(), "demo exited with {status}");
    assert!(
        rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
}

/// docker-compose.yml is valid YAML with Redis (AOF, noeviction), the relay
/// and the simulator, and the relay's mounted configuration validates.
#[test]
fn compose_file_is_consistent() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
    let compose: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_object().unwrap();
    for s in ["redis", "relay", "simulator"] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    let redis = compose["services"]["redis"]["command"].to_string();
    assert!(
        redis.contains("--appendonly") && redis.contains("noeviction"),
        "{redis}"
    );
    let mount = compose["services"]["relay"]["volumes"][0].as_str().unwrap();
    let local = mount.split(':').next().unwrap().trim_start_matches("./");
    let (ok, text) = run(
        &["check-config", "--config", &format!("{root}/{local}")],
        &[("STAMP_RELAY_ADMIN_TOKEN", "check-config-admin-token")],
    );
    assert!(ok, "{local}: {text}");
}

/// The GitOps example of `[[subscriptions]]` in docs/webhooks.md validates against
/// a source with its tables.
#[test]
fn the_documented_subscriptions_example_validates() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/webhooks.md")).unwrap();
    let example = doc
        .split("```toml\n")
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.contains("[[subscriptions]]"))
        .expect("a toml block with [[subscriptions]]");
    let source = "[[sources]]\nname = \"painchek\"\nbase_url = \"https://ua.ap.painchek.com/api\"\nresources = [\"patients\", \"assessments\"]\n";
    let f = config_file(&format!("{source}{example}"));
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let env = [
        ("CARE_WEBHOOK_SECRET", secret),
        ("RECORDS_WEBHOOK_SECRET", secret),
    ];
    let (ok, text) = run(
        &["check-config", "--config", f.path().to_str().unwrap()],
        &env,
    );
    assert!(ok && text.contains("2 subscription(s)"), "{text}");
}

/// The README's configuration is complete: check-config passes with the
/// variables it names, and `stamp-relay defaults` prints the reference.
#[test]
fn the_readme_configuration_validates() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a toml block in the README");
    let f = config_file(example);
    let env = [
        (
            "STAMP_RELAY_ADMIN_TOKEN",
            "0123456789abcdef0123456789abcdef",
        ),
        ("PAINCHEK_CLIENT_ID", "id"),
        ("PAINCHEK_CLIENT_SECRET", "secret"),
    ];
    let (ok, text) = run(
        &["check-config", "--config", f.path().to_str().unwrap()],
        &env,
    );
    assert!(ok && text.contains("1 source(s)"), "{text}");
    let (ok, text) = run(&["defaults"], &[]);
    assert!(
        ok && text.contains("[[sources]]") && text.contains("max_waiting_retries"),
        "{text}"
    );
}

/// `--log-format json` writes one JSON object per line.
#[test]
fn json_logs_are_json() {
    let dir = tempfile::TempDir::new().unwrap();
    let f = config_file(
        &ConfigBuilder::new()
            .data_dir(dir.path().join("d"))
            .source(SourceConfig {
                max_attempts: 1,
                ..pc()
            })
            .toml(),
    );
    let out = Command::new(bin())
        .args([
            "--log-format",
            "json",
            "sync",
            "--once",
            "--config",
            f.path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The upstream (port 9) is down: the run fails, and says so in its
    // exit code.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "no logs");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}

/// `[[subscriptions]]` is checked with the rest of the file and by the
/// API's rules: every problem at once, each naming its key, and a secret
/// in the wrong form is described, never printed.
#[test]
fn declared_subscriptions_are_checked_naming_their_keys() {
    let entry = |id: &str, url: &str, env: &str, filters: &str| {
        format!(
            "[[subscriptions]]\nid = \"{id}\"\nurl = \"{url}\"\nresources = [\"pc/patients\"]\nsecret_env = \"{env}\"\nfilters = {filters}\n"
        )
    };
    let good = "[{ exact = { \"data.gender\" = \"female\" } }]";
    let body = [
        GOOD.to_string(),
        entry("ok", "https://care.example/hook", "SR_TEST_WHSEC", good),
        entry("bad-url", "ftp://care.example", "SR_TEST_WHSEC", good),
        entry(
            "no-secret",
            "https://care.example/hook",
            "SR_TEST_UNSET_WHSEC",
            good,
        ),
        entry(
            "bad-filter",
            "https://care.example/hook",
            "SR_TEST_WHSEC",
            "[{ regex = { type = \".*\" } }]",
        ),
        entry("weak", "https://care.example/hook", "SR_TEST_PLAIN", good),
    ]
    .concat();
    let f = config_file(&body);
    let path = f.path().to_str().unwrap();
    let whsec = ("SR_TEST_WHSEC", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    let plain = ("SR_TEST_PLAIN", "hunter2-plain-password");
    let (ok, text) = run(&["check-config", "--config", path], &[whsec, plain]);
    assert!(!ok, "{text}");
    for needle in [
        "subscriptions[1].url: must be an http or https URL",
        "subscriptions[2].secret_env: environment variable SR_TEST_UNSET_WHSEC is not set",
        "subscriptions[3].filters[0]: unknown dialect \"regex\"",
        "subscriptions[4].secret_env: the secret in SR_TEST_PLAIN must start with whsec_",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(
        !text.contains("hunter2") && !text.contains("C2FVsBQ"),
        "{text}"
    );
    assert!(!text.contains("subscriptions[0]"), "{text}");

    let f = config_file(
        &[
            GOOD.to_string(),
            entry("ok", "https://care.example/hook", "SR_TEST_WHSEC", good),
        ]
        .concat(),
    );
    let (ok, text) = run(
        &["check-config", "--config", f.path().to_str().unwrap()],
        &[whsec],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("1 subscription(s) from the file")
            && text.contains("subscription ok: https://care.example/… (pc/patients)"),
        "{text}"
    );
}
