use super::*;
use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};

fn parse(toml: &str) -> RawConfig {
    Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::string(toml))
        .extract()
        .unwrap()
}

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

const OAUTH: &str = r#"
[[sources]]
name = "painchek"
base_url = "https://ua.ap.painchek.com/api"
resources = ["patients", "assessments"]
poll_interval = "5s"
[sources.auth]
kind = "oauth"
client_id_env = "PC_ID"
client_secret_env = "PC_SECRET"
"#;

#[test]
fn the_design_example_validates_with_defaults() {
    let c = parse(OAUTH)
        .validate(&env(&[("PC_ID", "id"), ("PC_SECRET", "shh")]))
        .unwrap();
    let s = &c.sources[0];
    assert_eq!(s.settings.page_size, 500);
    assert_eq!(s.settings.paging, Paging::Pages);
    assert_eq!(s.settings.overlap, DEFAULT_OVERLAP);
    assert_eq!(
        s.settings.reconcile_interval, None,
        "sweeps are off by default"
    );
    assert_eq!(s.settings.on_upstream_reset, OnUpstreamReset::Resnapshot);
    assert_eq!(s.settings.hard_deletes, HardDeletes::Report);
    assert_eq!(c.store.key_prefix, "stamp-relay");
    match &s.auth {
        Auth::OAuth {
            token_url,
            client_secret,
            ..
        } => {
            assert_eq!(
                token_url.as_str(),
                "https://ua.ap.painchek.com/api/integration/auth/"
            );
            assert_eq!(client_secret.expose(), "shh");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.delivery.retry_schedule.len(), 7);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = parse(OAUTH)
        .validate(&env(&[("PC_ID", "id"), ("PC_SECRET", "hunter2")]))
        .unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let raw = parse(
        r#"
[store]
key_prefix = "a:b"
[[sources]]
name = "x"
base_url = "not a url"
resources = []
page_size = 0
[sources.auth]
kind = "basic"
username_env = "U"
password_env = "P"
"#,
    );
    let err = raw.validate(&env(&[("U", "me")])).unwrap_err();
    let text = err.to_string();
    for needle in [
        "store.key_prefix",
        "sources[0].base_url",
        "sources[0].resources",
        "sources[0].page_size",
        "sources[0].auth.password_env: environment variable P is not set",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!text.contains("sources[0].auth.username_env"), "{text}");
}

#[test]
fn retention_is_parsed_and_checked() {
    let raw = parse(&format!(
        "[store.retention]\nmax_age = \"30d\"\nmax_events = 1000\n{}",
        OAUTH
    ));
    let r = &raw.store.retention;
    assert_eq!(r.max_age, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!((r.max_events, r.hard_max_events), (Some(1000), None));
    assert!(r.enabled());
    let bad = parse(&format!("[store.retention]\nmax_events = 0\n{}", OAUTH));
    let text = bad
        .validate(&env(&[("PC_ID", "i"), ("PC_SECRET", "s")]))
        .unwrap_err()
        .to_string();
    assert!(text.contains("store.retention.max_events"), "{text}");
    let below = parse(&format!(
        "[store.retention]\nmax_events = 100\nhard_max_events = 10\n{}",
        OAUTH
    ));
    let text = below
        .validate(&env(&[("PC_ID", "i"), ("PC_SECRET", "s")]))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("store.retention.hard_max_events (10)"),
        "{text}"
    );
    assert!(
        !RetentionConfig::default().enabled(),
        "keeps everything unless asked"
    );
}

#[test]
fn duplicate_source_names_are_refused() {
    let raw = parse(
        r#"
[[sources]]
name = "a"
base_url = "http://x/api"
resources = ["patients"]
[[sources]]
name = "a"
base_url = "http://y/api"
resources = ["users"]
"#,
    );
    assert!(
        raw.validate(&env(&[]))
            .unwrap_err()
            .to_string()
            .contains("unique")
    );
}

#[test]
fn join_keeps_the_base_path() {
    let base = Url::parse("https://h/api").unwrap();
    assert_eq!(join(&base, "patients/").as_str(), "https://h/api/patients/");
    let base = Url::parse("https://h/api/").unwrap();
    assert_eq!(join(&base, "patients/").as_str(), "https://h/api/patients/");
}

#[test]
fn what_to_do_with_resets_and_hard_deletes_is_read_per_source() {
    let vars = env(&[("PC_ID", "id"), ("PC_SECRET", "shh")]);
    let toml = OAUTH.replace(
        "poll_interval = \"5s\"",
        "poll_interval = \"5s\"\non_upstream_reset = \"pause\"\nhard_deletes = \"emit\"",
    );
    let c = parse(&toml).validate(&vars).unwrap();
    assert_eq!(
        c.sources[0].settings.on_upstream_reset,
        OnUpstreamReset::Pause
    );
    assert_eq!(c.sources[0].settings.hard_deletes, HardDeletes::Emit);
}

#[test]
fn reconcile_interval_reads_a_duration_and_refuses_one_below_the_poll_interval() {
    let vars = env(&[("PC_ID", "id"), ("PC_SECRET", "shh")]);
    let with = |v: &str| {
        OAUTH.replace(
            "poll_interval = \"5s\"",
            &format!("poll_interval = \"5s\"\nreconcile_interval = \"{v}\""),
        )
    };
    let c = parse(&with("6h")).validate(&vars).unwrap();
    assert_eq!(
        c.sources[0].settings.reconcile_interval,
        Some(std::time::Duration::from_secs(6 * 3600))
    );
    let err = parse(&with("1s")).validate(&vars).unwrap_err().to_string();
    assert!(err.contains("reconcile_interval"), "{err}");
}

#[test]
fn the_delivery_lease_must_outlive_a_whole_request() {
    let s = std::time::Duration::from_secs;
    assert!(validate::delivery_fence(s(30), s(15)).is_ok());
    let e = validate::delivery_fence(s(16), s(15)).unwrap_err();
    assert!(
        e.contains("store.lease_ttl (16s) must be at least 18s 750ms"),
        "{e}"
    );
    assert!(e.contains("still in flight"), "the error says why: {e}");
}

#[test]
fn max_waiting_retries_is_read_and_bounded() {
    let vars = env(&[("PC_ID", "id"), ("PC_SECRET", "shh")]);
    let with = |v: &str| format!("[delivery]\nmax_waiting_retries = {v}\n{OAUTH}");
    let c = parse(OAUTH).validate(&vars).unwrap();
    assert_eq!(c.delivery.max_waiting_retries, 5000, "the default");
    let c = parse(&with("20")).validate(&vars).unwrap();
    assert_eq!(c.delivery.max_waiting_retries, 20);
    for bad in ["0", "1000001"] {
        let err = parse(&with(bad)).validate(&vars).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "delivery.max_waiting_retries ({bad}): must be between 1 and 1000000"
            )),
            "{err}"
        );
    }
}

#[test]
fn record_schemas_and_the_otlp_endpoint_are_checked() {
    let dir = tempfile::TempDir::new().unwrap();
    let not_json = dir.path().join("bad.json");
    std::fs::write(&not_json, "{").unwrap();
    let toml = format!(
        "{OAUTH}\n[sources.schemas]\npatients = {{ type = \"object\" }}\nassessments = {:?}\nusers = {{ type = \"object\" }}\n[telemetry]\notlp_endpoint = \"localhost:4318\"\n",
        not_json.display().to_string()
    );
    let e = parse(&toml)
        .validate(&env(&[("PC_ID", "id"), ("PC_SECRET", "shh")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sources[0].schemas.users: \"users\" is not one of"),
        "{e}"
    );
    assert!(
        e.contains("sources[0].schemas.assessments:") && e.contains("is not JSON"),
        "{e}"
    );
    assert!(!e.contains("schemas.patients"), "{e}");
    assert!(
        e.contains("telemetry.otlp_endpoint: \"localhost:4318\""),
        "{e}"
    );
}

#[test]
fn credentials_in_base_url_are_refused_without_repeating_them() {
    let raw = parse(
        r#"
[[sources]]
name = "pc"
base_url = "https://relay:hunter2-secret@ua.ap.painchek.com/api"
resources = ["patients"]
"#,
    );
    let e = raw.validate(&env(&[])).unwrap_err().to_string();
    assert!(
        e.contains("sources[0].base_url: carries credentials"),
        "{e}"
    );
    assert!(
        e.contains("[sources.auth]") && e.contains("password_env"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "the password shows: {e}");
}

#[test]
fn short_and_shared_api_tokens_are_refused() {
    let raw = parse(
        r#"
[[api.tokens]]
name = "ops"
scope = "admin"
token_env = "ADMIN"
[[api.tokens]]
name = "dash"
scope = "read"
token_env = "READ"
[[api.tokens]]
name = "tiny"
scope = "read"
token_env = "TINY"
"#,
    );
    const SAME: &str = "0123456789abcdef-same";
    let same = SAME;
    let e = raw
        .clone()
        .validate(&env(&[("ADMIN", SAME), ("READ", SAME), ("TINY", "x")]))
        .unwrap_err()
        .problems;
    assert!(
        e.iter().any(|p| p.starts_with("api.tokens[1].token_env")
            && p.contains("also the token of api.tokens[0]")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|p| p.starts_with("api.tokens[2].token_env")
            && p.contains("has 1 characters; use at least 16")),
        "{e:?}"
    );
    assert!(e.iter().all(|p| !p.contains(same)), "a token shows: {e:?}");
    raw.validate(&env(&[
        ("ADMIN", "admin-token-of-16+"),
        ("READ", "read-token-of-16+"),
        ("TINY", "another-token-16+"),
    ]))
    .unwrap();
}
