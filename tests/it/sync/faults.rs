//! Upstream failures never move the cursor, and the poll completes once
//! the upstream recovers (`docs/sync.md`); authentication kinds work
//! across token expiry.

use std::time::Duration;

use stamp_relay::{
    config::{AuthConfig, Paging},
    events::StreamId,
    store::Table,
};
use stamp_relay_simulator::{Faults, SimAuth, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{Sim, TestStore, assert_rebuilds, poll_until_quiet, relay, source};
use crate::on_both_stores;

on_both_stores!(failures_never_move_the_cursor, oauth_tokens_refresh);

async fn failures_never_move_the_cursor(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 5,
        initial: vec![("patients".into(), 40)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 10);
    src.max_attempts = 2;
    src.request_timeout = Duration::from_millis(300);
    let mut relay = relay(&ts, vec![src]);
    let t = Table::new("sim", "patients");
    let cancel = CancellationToken::new();
    poll_until_quiet(&mut relay, 3).await;
    let before = ts.store.last_id(&t).await.unwrap();
    assert_ne!(before, StreamId::ZERO);

    let kinds: [(&str, Faults); 4] = [
        (
            "5xx",
            Faults {
                fail_next: 3,
                fail_status: 503,
                ..Faults::default()
            },
        ),
        (
            "429",
            Faults {
                fail_next: 3,
                fail_status: 429,
                ..Faults::default()
            },
        ),
        (
            "truncated",
            Faults {
                truncate_next: 3,
                ..Faults::default()
            },
        ),
        (
            "timeout",
            Faults {
                hang_next: 3,
                ..Faults::default()
            },
        ),
    ];
    for (name, faults) in kinds {
        sim.sim.random_writes(Some("patients"), 5);
        sim.sim.set_faults(faults);
        // Two attempts per poll, three failures queued: the first poll fails
        // and must leave the stream untouched.
        let cursor = ts.store.last_id(&t).await.unwrap();
        let len = ts.store.stream_len(&t).await.unwrap();
        let started = std::time::Instant::now();
        let err = relay.pollers[0].poll_once(&cancel).await.unwrap_err();
        let first_took = started.elapsed();
        assert_eq!(ts.store.last_id(&t).await.unwrap(), cursor, "{name}: {err}");
        assert_eq!(ts.store.stream_len(&t).await.unwrap(), len, "{name}: {err}");
        // The second poll meets one more failure, retries, and completes.
        let started = std::time::Instant::now();
        let r = relay.pollers[0]
            .poll_once(&cancel)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "429" {
            // The simulator's 429 says `Retry-After: 1`; the test source's
            // own backoff is at most 200 ms, so each poll's one wait before
            // its retry lasting a second is the header honoured.
            let min = Duration::from_millis(950);
            let second_took = started.elapsed();
            assert!(
                first_took >= min && second_took >= min,
                "Retry-After ignored: polls took {first_took:?} and {second_took:?}"
            );
        }
        assert!(
            r.outcome.appended() > 0,
            "{name}: the recovered poll appended nothing"
        );
        assert_eq!(r.before, cursor, "{name}: the failed poll moved the cursor");
        assert!(ts.store.stream_len(&t).await.unwrap() > len);
    }
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
}

/// One token serves many pages; a token past its lifetime is replaced
/// before use; a token the upstream revokes is replaced once on the 401.
/// Token requests are counted by the simulator, list requests (with their
/// status) in its request log.
async fn oauth_tokens_refresh(ts: TestStore) {
    // Long enough that one quick poll run never reaches the relay's
    // refresh time (nine tenths of it), short enough to wait out.
    const TTL: Duration = Duration::from_secs(4);
    let sim = Sim::start(SimConfig {
        auth: SimAuth::OAuth {
            client_id: "relay".into(),
            client_secret: "s3cret-value".into(),
            token_ttl: TTL,
        },
        initial: vec![("users".into(), 12)],
        ..SimConfig::default()
    })
    .await;
    // SAFETY: tests only add variables with names no other test reads.
    unsafe {
        std::env::set_var("TEST_OAUTH_ID", "relay");
        std::env::set_var("TEST_OAUTH_SECRET", "s3cret-value");
    }
    let mut src = source(&sim.base_url, &["users"], Paging::Pages, 5);
    src.auth = AuthConfig::OAuth {
        client_id_env: "TEST_OAUTH_ID".into(),
        client_secret_env: "TEST_OAUTH_SECRET".into(),
        token_url: None,
    };
    let mut relay = relay(&ts, vec![src]);
    let refused = |sim: &Sim| {
        sim.sim
            .requests()
            .iter()
            .filter(|r| r.status == 401)
            .count()
    };

    // Reuse: 12 records in pages of 5 is three pages and more, one token.
    poll_until_quiet(&mut relay, 3).await;
    let pages = sim.sim.requests().len();
    assert!(pages >= 3, "{pages} list requests");
    assert_eq!(
        sim.sim.tokens_issued(),
        1,
        "one token for {pages} list requests"
    );
    assert_eq!(refused(&sim), 0);

    // Revoked mid-run: the first page meets a 401, the relay fetches one
    // new token and the same page succeeds with it.
    sim.sim.revoke_tokens();
    sim.sim.random_writes(Some("users"), 3);
    let before = sim.sim.requests().len();
    poll_until_quiet(&mut relay, 3).await;
    let log = sim.sim.requests();
    assert_eq!(log[before].status, 401, "{:?}", log[before]);
    assert!(
        log[before + 1..].iter().all(|r| r.status == 200),
        "{:?}",
        &log[before..]
    );
    assert_eq!(refused(&sim), 1);
    assert_eq!(sim.sim.tokens_issued(), 2, "one refresh on the 401");
    assert_eq!(
        log[before + 1].page,
        log[before].page,
        "the page is retried"
    );

    // Expiry: once the lifetime has passed, the relay fetches a new token
    // before the next request instead of sending the old one.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    sim.sim.random_writes(Some("users"), 3);
    let before = sim.sim.requests().len();
    poll_until_quiet(&mut relay, 3).await;
    assert_eq!(sim.sim.tokens_issued(), 3, "one token after expiry");
    assert_eq!(refused(&sim), 1, "no expired token sent");
    assert!(sim.sim.requests().len() > before);

    assert_rebuilds(ts.store.as_ref(), &Table::new("sim", "users"), &sim.sim).await;
}
