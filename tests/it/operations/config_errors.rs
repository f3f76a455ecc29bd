//! The configuration as a user meets it (docs/configuration.md):
//! `check-config` lists every problem in one run, each with its file line
//! or environment variable; list items are set from the environment by
//! index; no API token is a warning; `status` needs no secret but the
//! store's.

use crate::harness::cli::run;

fn check(body: &str, env: &[(&str, &str)]) -> (bool, String) {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), body).unwrap();
    run(
        &["check-config", "--config", f.path().to_str().unwrap()],
        env,
    )
}

const SOURCE: &str = "[[sources]]\nname = \"pc\"\nbase_url = \"http://127.0.0.1:9/api\"\nresources = [\"patients\"]\n";

#[test]
fn check_config_lists_every_problem_with_its_line_or_variable() {
    let body = format!(
        "{SOURCE}page_size = \"big\"\n[store]\nlease_ttl = 5\nredis_urll = \"x\"\nkey_prefix = \"a{{b}}\"\n"
    );
    let env = [
        ("STAMP_RELAY__DELIVERY__REQUEST_TIMEOUT", "true"),
        ("STAMP_RELAY__API__MAX_CONNECTIONS", "0"),
    ];
    let (ok, text) = check(&body, &env);
    assert!(!ok, "{text}");
    for needle in [
        "sources[0].page_size: invalid type: found string \"big\", expected u32 (line 5 of ",
        "store.lease_ttl: invalid type: found signed int `5`, expected a duration (line 7 of ",
        "redis_urll",
        "(environment variable STAMP_RELAY__DELIVERY__REQUEST_TIMEOUT)",
        "store.key_prefix",
        "api.max_connections: must be greater than zero (environment variable STAMP_RELAY__API__MAX_CONNECTIONS)",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    assert!(
        text.contains("(line 8 of "),
        "the unknown key's line:\n{text}"
    );
    let prefix = text
        .lines()
        .find(|l| l.contains("store.key_prefix"))
        .unwrap();
    assert!(
        prefix.ends_with(".toml)") && prefix.contains("(line 9 of "),
        "{prefix}"
    );
}

#[test]
fn list_items_are_set_from_the_environment() {
    let env = [
        (
            "STAMP_RELAY__SOURCES__0__BASE_URL",
            "http://127.0.0.1:9/other",
        ),
        ("STAMP_RELAY__API__TOKENS__0__NAME", "ops"),
        ("STAMP_RELAY__API__TOKENS__0__SCOPE", "admin"),
        (
            "STAMP_RELAY__API__TOKENS__0__TOKEN_ENV",
            "SR_TEST_OPS_TOKEN",
        ),
        ("SR_TEST_OPS_TOKEN", "secret-value-of-the-ops-token"),
    ];
    let (ok, text) = check(SOURCE, &env);
    assert!(ok && text.starts_with("ok: 1 source(s)"), "{text}");
    assert!(!text.contains("warning"), "{text}");
    let (ok, text) = check(SOURCE, &[("STAMP_RELAY__SOURCES__1__NAME", "x")]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("sources[1].base_url: missing field `base_url`; add it to the file or set STAMP_RELAY__SOURCES__1__BASE_URL"),
        "a new item needs its required keys:\n{text}"
    );
    let (ok, text) = check(SOURCE, &[("STAMP_RELAY__SOURCES__3__NAME", "x")]);
    assert!(!ok && text.contains("set index 1 next"), "{text}");
}

#[test]
fn no_api_tokens_is_a_warning() {
    let (ok, text) = check(SOURCE, &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: api.tokens: no [[api.tokens]]"),
        "{text}"
    );
}

#[test]
fn status_needs_no_upstream_or_api_secret() {
    let dir = tempfile::TempDir::new().unwrap();
    let body = format!(
        "[store]\ndata_dir = {:?}\n\n[[api.tokens]]\nname = \"ops\"\nscope = \"admin\"\n\
         token_env = \"SR_TEST_UNSET_TOKEN\"\n\n{SOURCE}[sources.auth]\nkind = \"oauth\"\n\
         client_id_env = \"SR_TEST_UNSET_ID\"\nclient_secret_env = \"SR_TEST_UNSET_SECRET\"\n",
        dir.path().to_str().unwrap()
    );
    let f = dir.path().join("relay.toml");
    std::fs::write(&f, body).unwrap();
    let (ok, text) = run(&["status", "--config", f.to_str().unwrap()], &[]);
    assert!(ok, "{text}");
    assert!(text.contains("pc/patients"), "{text}");
    // A wrong key is still reported.
    std::fs::write(&f, "[store]\nlease_ttl = 5\n").unwrap();
    let (ok, text) = run(&["status", "--config", f.to_str().unwrap()], &[]);
    assert!(!ok && text.contains("store.lease_ttl"), "{text}");
}
