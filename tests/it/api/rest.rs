//! The HTTP API (docs/replay.md, `openapi.yaml`): auth on every route, problem answers for bad
//! input, replay equal to the stream, subscriptions on both stores, and a
//! live stream that survives reconnects.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{config::Paging, events::StreamId, store::Table};
use stamp_relay_simulator::{Order, SimConfig};

use crate::harness::openapi::{check_response, documented};
use crate::harness::sse::read_sse;
use crate::harness::{
    ADMIN_TOKEN, App, READ_TOKEN, Sim, TestStore, all_events, source, wait_synced,
};
use crate::{on_both_stores, on_cluster};

on_both_stores!(
    replay_pages_match_the_stream,
    subscriptions_crud_and_persistence,
    live_stream_resumes_exactly
);
on_cluster!(replay_pages_match_the_stream, live_stream_resumes_exactly);

/// A concrete URL for a documented path template.
fn concrete(path: &str) -> String {
    path.replace("{source}", "sim")
        .replace("{resource}", "patients")
        .replace("{id}", "sub_missing")
        .replace("{name}", "sim")
        .replace("{event_id}", "sim:patients:1:1")
}

async fn json_of(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, ct, body)
}

async fn app(ts: &TestStore, sim: &Sim) -> App {
    App::spawn(
        ts,
        vec![source(
            &sim.base_url,
            &["patients", "users"],
            Paging::Pages,
            100,
        )],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_needs_a_token_and_the_right_scope() {
    let ts = TestStore::open(crate::harness::Backend::Sqlite)
        .await
        .unwrap();
    let sim = Sim::start(SimConfig::default()).await;
    let app = app(&ts, &sim).await;
    let admin_only = |p: &str| {
        [
            "/v1/subscriptions",
            "/v1/sources",
            "/v1/filters",
            "/v1/consumers",
        ]
        .iter()
        .any(|prefix| p.starts_with(prefix))
    };
    for (method, path) in documented() {
        let url = format!("{}{}", app.base, concrete(&path));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let anon = app.http.request(m.clone(), &url).send().await.unwrap();
        if path.starts_with("/portal")
            || ["/healthz", "/readyz", "/openapi.yaml", "/asyncapi.yaml"].contains(&path.as_str())
        {
            assert!(
                anon.status().is_success(),
                "{method} {path} must stay open: {}",
                anon.status()
            );
            continue;
        }
        if path.ends_with("/integration/auth/") {
            // The compatible OAuth route takes its credentials in the form
            // (tests/it/api/compat_auth.rs): a token answers nothing there.
            let (status, _, body) = json_of(anon).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (400, Some("invalid_request"))
            );
            let wrong = [("client_id", "dash"), ("client_secret", "nope")];
            let r = app.http.post(&url).form(&wrong).send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with wrong credentials");
            continue;
        }
        let (status, ct, body) = json_of(anon).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        assert!(
            ct.starts_with("application/problem+json"),
            "{method} {path}: {ct}"
        );
        assert_eq!(body["code"], "unauthorized");
        let wrong = app
            .http
            .request(m.clone(), &url)
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{method} {path} with a wrong token");
        let read = app
            .http
            .request(m.clone(), &url)
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap();
        if admin_only(&path) {
            let (status, _, body) = json_of(read).await;
            assert_eq!(status, 403, "{method} {path} with a read token");
            assert_eq!(body["code"], "forbidden");
        } else {
            // A record the table never had is a 404 past authorization.
            let missing_record = path.contains("/records/") && read.status() == 404;
            assert!(
                read.status().is_success() || missing_record,
                "{method} {path} with a read token: {}",
                read.status()
            );
        }
        let admin = app
            .http
            .request(m, &url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let (status, _, body) = json_of(admin).await;
        assert_ne!(
            body["code"], "route_not_found",
            "{method} {path} is documented but not routed"
        );
        assert_ne!(
            body["code"], "method_not_allowed",
            "{method} {path} is documented but not routed"
        );
        assert!(status < 500, "{method} {path} answered {status}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_naming_the_field() {
    let ts = TestStore::open(crate::harness::Backend::Sqlite)
        .await
        .unwrap();
    let sim = Sim::start(SimConfig::default()).await;
    let app = app(&ts, &sim).await;
    let raw = |body: &str| {
        app.http
            .post(format!("{}/v1/subscriptions", app.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        ("malformed JSON", raw("{\"url\": "), 400, None),
        (
            "not JSON at all",
            app.http
                .post(format!("{}/v1/subscriptions", app.base))
                .bearer_auth(ADMIN_TOKEN)
                .body("url=x"),
            415,
            None,
        ),
        (
            "unknown field",
            raw(r#"{"url":"https://x.example/h","resources":["*"],"colour":"red"}"#),
            422,
            Some("colour"),
        ),
        (
            "missing field",
            raw(r#"{"resources":["*"]}"#),
            422,
            Some("url"),
        ),
        (
            "wrong type",
            raw(r#"{"url":"https://x.example/h","resources":"sim/patients"}"#),
            422,
            Some("resources"),
        ),
        (
            "wrong nested type",
            raw(r#"{"url":"https://x.example/h","resources":["*"],"batch_size":"ten"}"#),
            422,
            Some("batch_size"),
        ),
        (
            "negative batch",
            raw(r#"{"url":"https://x.example/h","resources":["*"],"batch_size":-1}"#),
            422,
            Some("batch_size"),
        ),
        (
            "huge batch",
            raw(r#"{"url":"https://x.example/h","resources":["*"],"batch_size":100000}"#),
            422,
            Some("batch_size"),
        ),
        (
            "bad URL",
            raw(r#"{"url":"not a url","resources":["*"]}"#),
            422,
            Some("url"),
        ),
        (
            "ftp URL",
            raw(r#"{"url":"ftp://x.example/h","resources":["*"]}"#),
            422,
            Some("url"),
        ),
        (
            "unknown resource",
            raw(r#"{"url":"https://x.example/h","resources":["sim/nurses"]}"#),
            422,
            Some("resources[0]"),
        ),
        (
            "bad op",
            raw(r#"{"url":"https://x.example/h","resources":["*"],"ops":["moved"]}"#),
            422,
            Some("ops[0]"),
        ),
        (
            "bad start",
            raw(r#"{"url":"https://x.example/h","resources":["*"],"start":"yesterday"}"#),
            422,
            Some("start"),
        ),
        (
            "reserved header",
            raw(r#"{"url":"https://x.example/h","resources":["*"],"headers":{"webhook-id":"x"}}"#),
            422,
            Some("headers.webhook-id"),
        ),
        (
            "huge body",
            raw(&format!(
                r#"{{"url":"https://x.example/h","resources":["*"],"description":"{}"}}"#,
                "x".repeat(200_000)
            )),
            413,
            None,
        ),
        (
            "bad cursor",
            app.get("/v1/resources/sim/patients/events?after=abc"),
            422,
            Some("after"),
        ),
        (
            "negative limit",
            app.get("/v1/resources/sim/patients/events?limit=-5"),
            422,
            Some("limit"),
        ),
        (
            "huge limit",
            app.get("/v1/resources/sim/patients/events?limit=99999999999999999999"),
            422,
            Some("limit"),
        ),
        (
            "zero limit",
            app.get("/v1/resources/sim/patients/events?limit=0"),
            422,
            Some("limit"),
        ),
        (
            "unknown target",
            app.get("/v1/resources/sim/nurses/events"),
            404,
            None,
        ),
        (
            "unknown subscription",
            app.get("/v1/subscriptions/sub_nope"),
            404,
            None,
        ),
        ("unknown route", app.get("/v1/nothing"), 404, None),
        (
            "wrong method",
            app.http
                .put(format!("{}/v1/resources", app.base))
                .bearer_auth(ADMIN_TOKEN),
            405,
            None,
        ),
    ];
    for (name, req, want, field) in cases {
        let resp = req.send().await.unwrap();
        if want == 413 {
            // The body was not read: the connection must not be reused, or
            // the next request in this loop fails without an answer.
            assert_eq!(resp.headers()["connection"], "close", "{name}");
        }
        let (status, ct, body) = json_of(resp).await;
        assert_eq!(status, want, "{name}: {body}");
        assert!(ct.starts_with("application/problem+json"), "{name}: {ct}");
        assert_eq!(body["status"], want, "{name}");
        assert!(
            body["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:stamp-relay:problem:"),
            "{name}"
        );
        if let Some(f) = field {
            assert_eq!(body["field"], f, "{name}: {body}");
        }
    }
    app.stop().await;
}

/// Replay from stamp N returns exactly the events after N, entry by entry.
async fn replay_pages_match_the_stream(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        order: Order::Name,
        initial: vec![("patients".into(), 1200)],
        ..SimConfig::default()
    })
    .await;
    let app = app(&ts, &sim).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    sim.sim.random_writes(Some("patients"), 150);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let stream = all_events(ts.store.as_ref(), &t).await;
    for start in [0u64, 1, 777, stream.last().unwrap().stamp] {
        let mut after = start.to_string();
        let mut got = Vec::new();
        loop {
            let r = app
                .get(&format!(
                    "/v1/resources/sim/patients/events?after={after}&limit=333"
                ))
                .send()
                .await
                .unwrap();
            let (status, ct, body) = json_of(r).await;
            assert_eq!(status, 200);
            check_response(
                "GET",
                "/v1/resources/{source}/{resource}/events",
                status,
                &ct,
                &body,
            );
            got.extend(body["events"].as_array().unwrap().iter().cloned());
            after = body["next_after"].as_str().unwrap().to_string();
            if !body["has_more"].as_bool().unwrap() {
                break;
            }
        }
        let want: Vec<_> = stream
            .iter()
            .filter(|e| e.id > StreamId::new(start, 0))
            .collect();
        assert_eq!(got.len(), want.len(), "after={start}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["streamid"], w.id.to_string());
            assert_eq!(g["subject"], w.record);
            assert_eq!(g["updatestamp"], w.stamp);
            assert_eq!(g["id"], format!("sim:patients:{}:{}", w.record, w.stamp));
            assert_eq!(g["data"], serde_json::from_str::<Value>(&w.data).unwrap());
        }
    }
    let (status, ct, body) = json_of(app.get("/v1/resources").send().await.unwrap()).await;
    check_response("GET", "/v1/resources", status, &ct, &body);
    let patients = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "patients")
        .unwrap();
    assert_eq!(patients["stream_length"], stream.len());
    assert_eq!(patients["cursor"], stream.last().unwrap().id.stamp);
    app.stop().await;
}

async fn subscriptions_crud_and_persistence(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 10)],
        ..SimConfig::default()
    })
    .await;
    let app = app(&ts, &sim).await;
    wait_synced(ts.store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;
    let path = "/v1/subscriptions";
    let r = app
        .post(
            path,
            &json!({"url": "https://hooks.example.com/pc", "resources": ["sim/patients"]}),
        )
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let (status, ct, created) = json_of(r).await;
    assert_eq!(status, 201, "{created}");
    check_response("POST", path, status, &ct, &created);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/subscriptions/{id}"));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let now = ts
        .store
        .last_id(&Table::new("sim", "patients"))
        .await
        .unwrap();
    assert_eq!(
        created["start"]["sim/patients"],
        now.to_string(),
        "start defaults to now"
    );

    let r = app
        .post(path, &json!({"url": "https://h.example/2", "resources": ["*"], "ops": ["deleted"], "start": {"sim/users": 0},
            "headers": {"X-Team": "care"}, "batch_size": 50, "rate_limit": 10, "description": "second"}))
        .send()
        .await
        .unwrap();
    let (status, _, second) = json_of(r).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["start"]["sim/users"], "0-0");

    let (status, ct, one) = json_of(app.get(&format!("{path}/{id}")).send().await.unwrap()).await;
    check_response("GET", "/v1/subscriptions/{id}", status, &ct, &one);
    assert!(
        one.get("secret").is_none(),
        "the secret is shown only at creation"
    );
    let (status, ct, all) = json_of(app.get(path).send().await.unwrap()).await;
    check_response("GET", path, status, &ct, &all);
    assert_eq!(all["subscriptions"].as_array().unwrap().len(), 2);
    assert_eq!(all["subscriptions"][0]["id"], id);

    let body =
        json!({"enabled": false, "resources": ["sim/patients", "sim/users"], "rate_limit": null});
    let r = app
        .patch(&format!("{path}/{id}"), &body)
        .send()
        .await
        .unwrap();
    let (status, ct, patched) = json_of(r).await;
    check_response("PATCH", "/v1/subscriptions/{id}", status, &ct, &patched);
    assert_eq!(patched["enabled"], false);
    assert_eq!(
        patched["start"]["sim/patients"],
        now.to_string(),
        "kept targets keep their start"
    );
    assert!(patched["start"].get("sim/users").is_some());

    let (status, ct, rotated) = json_of(
        app.post(&format!("{path}/{id}/rotate-secret"), &json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_response(
        "POST",
        "/v1/subscriptions/{id}/rotate-secret",
        status,
        &ct,
        &rotated,
    );
    assert_ne!(rotated["secret"], created["secret"]);
    let stored = ts.store.subscription(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.previous_secret.as_ref().unwrap().0.as_str(),
        created["secret"].as_str().unwrap()
    );
    app.stop().await;

    // A restarted relay on the same store sees the same subscriptions.
    let app = self::app(&ts, &sim).await;
    let (_, _, all) = json_of(app.get(path).send().await.unwrap()).await;
    assert_eq!(all["subscriptions"].as_array().unwrap().len(), 2);
    let del = app
        .http
        .delete(format!("{}{path}/{id}", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let (status, _, _) = json_of(app.get(&format!("{path}/{id}")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// While records keep changing, a client that drops and resumes with
/// Last-Event-ID several times ends with every event once, in order.
async fn live_stream_resumes_exactly(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 50)],
        change_rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let app = app(&ts, &sim).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let mut writer = {
        let sim = sim.sim.clone();
        Some(tokio::spawn(async move {
            for _ in 0..40 {
                sim.random_writes(Some("patients"), 3);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }))
    };
    let url = format!("{}/v1/resources/sim/patients/events?after=0", app.base);
    let mut seen: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for round in 0..6 {
        let mut req = app
            .http
            .get(&url)
            .bearer_auth(READ_TOKEN)
            .header("accept", "text/event-stream");
        if let Some(l) = &last {
            req = req.header("last-event-id", l);
        }
        let mut resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let mut buf = String::new();
        let want = if round == 5 {
            usize::MAX
        } else {
            17 + round * 5
        };
        let within = if round == 5 {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(10)
        };
        for (id, ev) in read_sse(&mut resp, &mut buf, want, within).await {
            assert_eq!(ev["streamid"], id);
            seen.push(id.clone());
            last = Some(id);
        }
        drop(resp);
        if round == 4 {
            writer.take().unwrap().await.unwrap();
            wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
        }
    }
    let stream: Vec<String> = all_events(ts.store.as_ref(), &t)
        .await
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(
        seen, stream,
        "the live stream must deliver every event once, in order"
    );
    app.stop().await;
}
