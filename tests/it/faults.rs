//! Upstream failures never move the cursor, and the poll completes once
//! the upstream recovers (`docs/sync.md`); authentication kinds work
//! across token expiry.

use std::time::Duration;

use stamp_relay::{
    config::{AuthConfig, Paging},
    events::StreamId,
    simulator::{Faults, SimAuth, SimConfig},
    store::Target,
};
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
    let t = Target::new("sim", "patients");
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
        let err = relay.pollers[0].poll_once(&cancel).await.unwrap_err();
        assert_eq!(ts.store.last_id(&t).await.unwrap(), cursor, "{name}: {err}");
        assert_eq!(ts.store.stream_len(&t).await.unwrap(), len, "{name}: {err}");
        // The second poll meets one more failure, retries, and completes.
        let r = relay.pollers[0]
            .poll_once(&cancel)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            r.outcome.appended() > 0,
            "{name}: the recovered poll appended nothing"
        );
        assert_eq!(r.before, cursor, "{name}: the failed poll moved the cursor");
        assert!(ts.store.stream_len(&t).await.unwrap() > len);
    }
    assert_rebuilds(ts.store.as_ref(), &t, &sim.sim).await;
}

async fn oauth_tokens_refresh(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        auth: SimAuth::OAuth {
            client_id: "relay".into(),
            client_secret: "s3cret-value".into(),
            token_ttl: Duration::from_millis(400),
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
    poll_until_quiet(&mut relay, 3).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        sim.sim.random_writes(Some("users"), 3);
        poll_until_quiet(&mut relay, 3).await;
    }
    assert_rebuilds(ts.store.as_ref(), &Target::new("sim", "users"), &sim.sim).await;
}
