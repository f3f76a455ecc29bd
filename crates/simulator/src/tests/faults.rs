//! Every fault kind, late writes, and authentication.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use serde_json::Value;

use super::{spawn, stamps, text, with_tables};
use crate::{Change, Faults, Op, Order, SimAuth, SimConfig};

#[tokio::test]
async fn one_shot_failures_answer_the_configured_status_then_recover() {
    let t = spawn(with_tables(&[("sites", 2)])).await;
    t.sim.set_faults(Faults {
        fail_next: 2,
        fail_status: 429,
        ..Faults::default()
    });
    for _ in 0..2 {
        let response = t.client.get(t.url("/api/sites/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let body: Value = response.json().await.unwrap();
        assert!(body["detail"].is_string() && body["errors"].is_array());
    }
    t.page("/api/sites/").await;
    t.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: 502,
        ..Faults::default()
    });
    let (status, body) = t.get("/api/sites/").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("simulated_failure"))
    );
    let faults: Vec<Option<String>> = t.sim.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some("fail".into()),
            Some("fail".into()),
            None,
            Some("fail".into())
        ]
    );
}

#[tokio::test]
async fn random_errors_and_rate_limits_follow_their_rates() {
    let t = spawn(with_tables(&[("sites", 2)])).await;
    t.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let (status, body) = t.get("/api/sites/").await;
    assert!([500, 502, 503].contains(&status.as_u16()), "{status}");
    assert_eq!(body["code"], "server_error");
    t.sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        ..Faults::default()
    });
    let response = t.client.get(t.url("/api/sites/")).send().await.unwrap();
    assert_eq!(
        (response.status(), &response.headers()[RETRY_AFTER]),
        (StatusCode::TOO_MANY_REQUESTS, &"1".parse().unwrap())
    );
}

#[tokio::test]
async fn slow_answers_wait_and_truncated_ones_cut_the_body_in_half() {
    let t = spawn(with_tables(&[("patients", 20)])).await;
    t.sim.set_faults(Faults {
        slow_rate: 1.0,
        slow_ms: 150,
        ..Faults::default()
    });
    let started = Instant::now();
    t.page("/api/patients/").await;
    assert!(started.elapsed() >= Duration::from_millis(150));

    t.sim.set_faults(Faults::default());
    let whole = t
        .client
        .get(t.url("/api/patients/"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    for faults in [
        Faults {
            truncate_next: 1,
            ..Faults::default()
        },
        Faults {
            truncate_rate: 1.0,
            ..Faults::default()
        },
    ] {
        t.sim.set_faults(faults);
        let response = t.client.get(t.url("/api/patients/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let cut = response.bytes().await.unwrap();
        assert_eq!(cut.len(), whole.len() / 2);
        assert!(serde_json::from_slice::<Value>(&cut).is_err());
    }
    t.sim.set_faults(Faults::default());
    t.page("/api/patients/").await;
}

#[tokio::test]
async fn hanging_requests_outlast_client_timeouts() {
    let t = spawn(with_tables(&[("sites", 1)])).await;
    t.sim.set_faults(Faults {
        hang_next: 1,
        ..Faults::default()
    });
    let hung = t
        .client
        .get(t.url("/api/sites/"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    t.page("/api/sites/").await;
}

#[tokio::test]
async fn late_writes_stay_hidden_until_enough_further_writes_or_a_flush() {
    let t = spawn(SimConfig {
        order: Order::Stamp,
        ..with_tables(&[("patients", 5)])
    })
    .await;
    let id = text(&t.sim.state("patients")[0], "uuid").to_owned();
    t.sim.set_faults(Faults {
        late_rate: 1.0,
        late_after: 100,
        ..Faults::default()
    });
    let update = Change::new("patients", Op::Update)
        .with_id(&id)
        .with_fields(serde_json::json!({"room": "9Z"}));
    let applied = t.sim.apply(update).unwrap();
    assert_eq!((applied.stamp, applied.late), (6, true));
    let created = t.sim.apply(Change::new("patients", Op::Create)).unwrap();
    assert_eq!(created.stamp, 7);
    assert_eq!(t.page("/api/patients/?sync=5").await["count"], 0);
    let shown = t.sim.state("patients");
    assert_eq!(shown.len(), 5, "the late create is absent");
    assert_ne!(
        shown.iter().find(|r| text(r, "uuid") == id).unwrap()["room"],
        "9Z"
    );

    let (_, flushed) = t
        .send_json(reqwest::Method::POST, "/_sim/flush-late", Value::Null)
        .await;
    assert_eq!(flushed["flushed"], 2);
    assert_eq!(stamps(&t.page("/api/patients/?sync=5").await), [6, 7]);

    // With late_after 2, a late write shows after two more writes to the table.
    t.sim.set_faults(Faults {
        late_rate: 1.0,
        late_after: 2,
        ..Faults::default()
    });
    let late = t.sim.apply(Change::new("patients", Op::Create)).unwrap();
    t.sim.set_faults(Faults::default());
    t.sim.random_writes(Some("patients"), 1);
    assert!(!stamps(&t.page("/api/patients/?sync=7").await).contains(&late.stamp));
    t.sim.random_writes(Some("patients"), 1);
    assert!(stamps(&t.page("/api/patients/?sync=7").await).contains(&late.stamp));
}

#[tokio::test]
async fn oauth_tokens_are_required_and_expire() {
    let auth = SimAuth::OAuth {
        client_id: "id".into(),
        client_secret: "secret".into(),
        token_ttl: Duration::from_millis(500),
    };
    let t = spawn(SimConfig {
        auth,
        ..with_tables(&[("sites", 1)])
    })
    .await;
    let (status, body) = t.get("/api/sites/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].is_string());
    let token_url = t.url("/api/integration/auth/");
    let wrong = t
        .client
        .post(&token_url)
        .form(&[("client_id", "id"), ("client_secret", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let granted = t
        .client
        .post(&token_url)
        .form(&[("client_id", "id"), ("client_secret", "secret")])
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), StatusCode::OK);
    let granted: Value = granted.json().await.unwrap();
    assert_eq!(
        (
            granted["token_type"].as_str(),
            granted["expires_in"].as_u64()
        ),
        (Some("Bearer"), Some(1)),
        "a 500 ms lifetime is announced rounded up"
    );
    let bearer = format!("Bearer {}", granted["access_token"].as_str().unwrap());
    let list = || {
        t.client
            .get(t.url("/api/sites/"))
            .header(AUTHORIZATION, &bearer)
            .send()
    };
    assert_eq!(list().await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let expired = list().await.unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        expired.json::<Value>().await.unwrap()["detail"],
        "Token has expired."
    );
}

#[tokio::test]
async fn basic_and_static_bearer_check_the_header() {
    let basic = SimAuth::Basic {
        username: "demo".into(),
        password: "pw".into(),
    };
    let t = spawn(SimConfig {
        auth: basic,
        ..with_tables(&[("sites", 1)])
    })
    .await;
    let with = |user: &str, pass: &str| {
        t.client
            .get(t.url("/api/sites/"))
            .basic_auth(user, Some(pass.to_owned()))
            .send()
    };
    assert_eq!(with("demo", "pw").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        with("demo", "nope").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let t = spawn(SimConfig {
        auth: SimAuth::Bearer {
            token: "tok".into(),
        },
        ..with_tables(&[("sites", 1)])
    })
    .await;
    let with = |token: &str| t.client.get(t.url("/api/sites/")).bearer_auth(token).send();
    assert_eq!(with("tok").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        with("other").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
