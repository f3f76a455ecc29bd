//! Consumers and scoped access (docs/consumers.md): two consumers, A and
//! B, on tables of their own, each with a subscription (B's failing into
//! attempts and dead letters). Every route of openapi.yaml is called with
//! A's credentials (its token and its portal link) and B's ids, tables and
//! names: none answers success, none shows B's data, and nothing of B
//! changed. A route added to openapi.yaml later is covered as it comes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stamp_relay::config::{ConsumerConfig, Paging, Scope, Secret, SourceConfig, TokenConfig};
use stamp_relay_simulator::SimConfig;

use crate::harness::receiver::{Mode, TestReceiver};
use crate::harness::{Api, App, Sim, TestStore, source, wait_for};
use crate::on_both_stores;

on_both_stores!(
    no_route_leaks_across_consumers,
    consumers_are_managed_and_scoped,
    live_streams_end_when_their_credential_goes
);

const LIMITED_READ: &str = "test-limited-read-token";
const LAB_TOKEN: &str = "test-lab-consumer-token";

/// A source named `name` over a simulator of its own, keeping records.
async fn table(name: &str) -> (Sim, SourceConfig) {
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 3)],
        ..SimConfig::default()
    })
    .await;
    let src = SourceConfig {
        name: name.into(),
        keep_records: true,
        ..source(&sim.base_url, &["patients"], Paging::Pages, 100)
    };
    (sim, src)
}

/// What belongs to B and must never reach A.
struct Theirs {
    subscription: String,
    url: String,
    secret: String,
    token: String,
    token_id: String,
    record: String,
}

impl Theirs {
    fn markers(&self) -> [&str; 5] {
        [
            &self.subscription,
            &self.url,
            &self.secret,
            &self.token_id,
            &self.record,
        ]
    }
}

/// A consumer over one source, with a token; answers the token and its id.
async fn consumer(app: &App, name: &str, source: &str) -> (String, String) {
    let body = json!({"name": name, "sources": [source], "description": format!("{name} team")});
    let r = app.post("/v1/consumers", &body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let path = format!("/v1/consumers/{name}/tokens");
    let r = app.post(&path, &json!({})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    (
        v["token"].as_str().unwrap().into(),
        v["id"].as_str().unwrap().into(),
    )
}

/// A subscription of `consumer`, made by the admin: its id and secret.
async fn subscription(app: &App, consumer: &str, table: &str, url: &str) -> (String, String) {
    let body =
        json!({"url": url, "resources": [table], "consumer": consumer, "start": "beginning"});
    let r = app.post("/v1/subscriptions", &body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["consumer"], consumer);
    (
        v["id"].as_str().unwrap().into(),
        v["secret"].as_str().unwrap().into(),
    )
}

/// The relay with consumers A (`srca`) and B (`srcb`), B's deliveries dead.
async fn two_consumers(ts: &TestStore) -> (Vec<Sim>, App, TestReceiver, String, Theirs) {
    let ((sim_a, src_a), (sim_b, src_b)) = (table("srca").await, table("srcb").await);
    let app = App::spawn_with(ts, vec![src_a, src_b], |c| {
        let t = TokenConfig {
            sources: Some(vec!["srca".into()]),
            ..TokenConfig::new("limited", Scope::Read, "UNUSED")
        };
        c.api_tokens.push((t, Secret::new(LIMITED_READ)));
    })
    .await;
    let (token_a, _) = consumer(&app, "team-a", "srca").await;
    let (token_b, token_b_id) = consumer(&app, "team-b", "srcb").await;
    let rx_b = TestReceiver::start(7).await;
    rx_b.set_mode(Mode::Flaky(1.0));
    let (sub_b, secret_b) = subscription(&app, "team-b", "srcb/patients", &rx_b.url).await;
    let rx_a = TestReceiver::start(8).await;
    let (_sub_a, _) = subscription(&app, "team-a", "srca/patients", &rx_a.url).await;
    let dead = async || {
        let path = format!("/v1/subscriptions/{sub_b}/dead-letters");
        app.get_json(&path).await["dead_letters"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for("B's dead letters", Duration::from_secs(30), dead, |n| {
        *n > 0
    })
    .await;
    let record = sim_b.sim.state("patients")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let theirs = Theirs {
        subscription: sub_b,
        url: rx_b.url.clone(),
        secret: secret_b,
        token: token_b,
        token_id: token_b_id,
        record,
    };
    (vec![sim_a, sim_b], app, rx_a, token_a, theirs)
}

/// Values of parameters that name nothing, B's counterparts.
fn nobody() -> Theirs {
    Theirs {
        subscription: "sub_00000000000000000000000000000000".into(),
        token_id: "000000000000".into(),
        record: "00000000-0000-0000-0000-000000000000".into(),
        url: String::new(),
        secret: String::new(),
        token: String::new(),
    }
}

/// `path` of openapi.yaml with `b`'s names and ids in its parameters
/// (`theirs`: B's consumer and table, else ones that do not exist).
fn with_params(path: &str, b: &Theirs, theirs: bool) -> String {
    let id = if path.starts_with("/v1/subscriptions") {
        &b.subscription
    } else if path.starts_with("/v1/consumers") {
        &b.token_id
    } else {
        &b.record
    };
    let (consumer, table) = if theirs {
        ("team-b", "srcb")
    } else {
        ("team-zz", "srczz")
    };
    let name = if path.starts_with("/v1/sources") {
        table
    } else {
        consumer
    };
    path.replace("{id}", id)
        .replace("{name}", name)
        .replace("{source}", table)
        .replace("{resource}", "patients")
}

/// B's answer with B's values written as the ones that do not exist.
fn as_nobody(body: &str, b: &Theirs) -> String {
    let n = nobody();
    body.replace(&b.subscription, &n.subscription)
        .replace(&b.token_id, &n.token_id)
        .replace(&b.record, &n.record)
        .replace("team-b", "team-zz")
        .replace("srcb", "srczz")
}

/// Every (method, path) of openapi.yaml and whether it needs no token.
fn routes() -> Vec<(Method, String, bool)> {
    let spec = crate::harness::openapi::spec();
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in ["get", "post", "patch", "put", "delete"] {
            if let Some(op) = item.get(m) {
                let open = op["security"].as_array().is_some_and(Vec::is_empty);
                out.push((m.to_uppercase().parse().unwrap(), path.clone(), open));
            }
        }
    }
    assert!(out.len() > 30, "too few routes read from openapi.yaml");
    out
}

/// The status and body of `method path` as `token`.
async fn call(api: &Api, token: &str, method: &Method, path: &str) -> (StatusCode, String) {
    let mut req = api
        .http
        .request(method.clone(), format!("{}{path}", api.base))
        .bearer_auth(token);
    if matches!(*method, Method::POST | Method::PATCH | Method::PUT) {
        req = req.json(&json!({}));
    }
    let r = req.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Calls every route as `token` with B's parameters: a route naming B's
/// things answers exactly as for things that do not exist (404, never a
/// 403 that tells they do), and no answer shows B's data.
async fn every_route_as(api: &Api, token: &str, who: &str, b: &Theirs) {
    for (method, path, open) in routes() {
        let (status, body) = call(api, token, &method, &with_params(&path, b, true)).await;
        let said = format!("{who}: {method} {path} answered {status}: {body}");
        for m in [&b.url, &b.secret, &b.token] {
            assert!(!body.contains(m.as_str()), "{said} (shows B's {m})");
        }
        if !path.contains('{') {
            if !open {
                for m in b.markers() {
                    assert!(!body.contains(m), "{said} (shows B's {m})");
                }
                assert!(!body.contains("srcb"), "{said} (names B's table)");
            }
            continue;
        }
        assert!(!status.is_success(), "{said}");
        if open {
            continue;
        }
        let nothing = with_params(&path, &nobody(), false);
        let (status_n, body_n) = call(api, token, &method, &nothing).await;
        assert_eq!(
            (status, as_nobody(&body, b)),
            (status_n, body_n),
            "{who}: {method} {path} answers otherwise for B's than for nothing"
        );
    }
}

/// What of a subscription only its owner may change.
fn settings(v: &Value) -> Value {
    let keys = [
        "url",
        "resources",
        "ops",
        "headers",
        "batch_size",
        "description",
        "consumer",
    ];
    keys.iter().map(|k| (k.to_string(), v[k].clone())).collect()
}

async fn no_route_leaks_across_consumers(ts: TestStore) {
    let (_sims, app, rx_a, token_a, b) = two_consumers(&ts).await;
    let before = app
        .get_json(&format!("/v1/subscriptions/{}", b.subscription))
        .await;
    let as_a = Api::new(app.base.clone(), &token_a);
    // A sees its own: the checks below can tell a leak from a refusal.
    let mine = as_a.get_json("/v1/subscriptions").await;
    let subs = mine["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{mine}");
    assert_eq!(subs[0]["url"], rx_a.url.as_str());
    let tables = as_a.get_json("/v1/resources").await.to_string();
    assert!(
        tables.contains("srca") && !tables.contains("srcb"),
        "{tables}"
    );
    // A table A may not see and one that does not exist get the same
    // answer, word for word: neither tells that srcb exists.
    let mut answers = Vec::new();
    for table in ["srcb/patients", "srcz/patients"] {
        let r = as_a
            .post(
                "/v1/subscriptions",
                &json!({"url": rx_a.url, "resources": [table]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let v = r.json::<Value>().await.unwrap();
        assert_eq!(v["field"], "resources[0]", "{v}");
        let answer = v.to_string().replace(table, "TABLE");
        assert!(!answer.contains("srcb"), "{v}");
        answers.push(answer);
    }
    assert_eq!(answers[0], answers[1]);
    every_route_as(&as_a, &token_a, "A's token", &b).await;
    let link: Value = app
        .post("/v1/consumers/team-a/portal-links", &json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/portal/#pl.team-a.", app.base)),
        "{link}"
    );
    let link_token = url.split_once('#').unwrap().1;
    let as_link = Api::new(app.base.clone(), link_token);
    assert_eq!(as_link.get_json("/v1/subscriptions").await, mine);
    every_route_as(&as_link, link_token, "A's portal link", &b).await;
    let limited = Api::new(app.base.clone(), LIMITED_READ);
    every_route_as(&limited, LIMITED_READ, "a read token limited to srca", &b).await;
    // Nothing of B changed, and B's own token still works.
    let after = app
        .get_json(&format!("/v1/subscriptions/{}", b.subscription))
        .await;
    assert_eq!(settings(&before), settings(&after));
    let as_b = Api::new(app.base.clone(), &b.token);
    let r = as_b.get("/v1/consumers/team-b").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Revoking A's links ends the link, not A's token.
    let r = app
        .post("/v1/consumers/team-a/portal-links/revoke", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = as_link.get("/v1/subscriptions").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(as_a.get_json("/v1/subscriptions").await, mine);
}

/// The answer's status and problem code (or body).
async fn outcome(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let code = v.get("code").cloned().unwrap_or(v);
    (status, code)
}

/// A relay with `lab` declared in the file (one table) and its token.
async fn lab_relay(ts: &TestStore) -> (Sim, App) {
    let (sim, src) = table("sim").await;
    let app = App::spawn_with(ts, vec![src], |c| {
        c.consumers.push(ConsumerConfig {
            name: "lab".into(),
            description: "the lab".into(),
            sources: vec!["*".into()],
            resources: vec!["sim/patients".into()],
        });
        let t = TokenConfig {
            consumer: Some("lab".into()),
            ..TokenConfig::new("lab", Scope::Consumer, "UNUSED")
        };
        c.api_tokens.push((t, Secret::new(LAB_TOKEN)));
    })
    .await;
    (sim, app)
}

async fn consumers_are_managed_and_scoped(ts: TestStore) {
    let (_sim, app) = lab_relay(&ts).await;
    let all = app.get_json("/v1/consumers").await;
    let names: Vec<&str> = all["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "lab"], "{all}");
    let edit = json!({"description": "x"});
    let refused = outcome(app.patch("/v1/consumers/lab", &edit)).await;
    assert_eq!(refused, (409, json!("managed_by_config")));
    let refused = outcome(app.patch("/v1/consumers/default", &edit)).await;
    assert_eq!(refused, (409, json!("built_in")));
    assert_eq!(outcome(app.delete("/v1/consumers/default")).await.0, 409);
    for bad in [
        json!({"name": "Bad Name"}),
        json!({"name": "x", "resources": ["nope"]}),
    ] {
        let r = app.post("/v1/consumers", &bad).send().await.unwrap();
        assert_eq!(r.status(), 422, "{bad}");
    }
    // Without `consumer`, an admin's subscription is the default's.
    let made = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": "https://hooks.example.com/d", "resources": ["*"]}),
        )
        .await;
    assert_eq!(made["consumer"], "default");
    // The file's consumer through its configured token.
    let lab = Api::new(app.base.clone(), LAB_TOKEN);
    let wide = json!({"url": "https://hooks.example.com/l", "resources": ["*"]});
    let r = lab.post("/v1/subscriptions", &wide).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "resources");
    let narrow = json!({"url": "https://hooks.example.com/l", "resources": ["sim/patients"]});
    let own = lab.post_json("/v1/subscriptions", &narrow).await;
    assert_eq!(own["consumer"], "lab", "{own}");
    let listed = lab.get_json("/v1/subscriptions").await;
    assert_eq!(listed["subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(outcome(lab.get("/v1/consumers/lab")).await.0, 200);
    assert_eq!(outcome(lab.get("/v1/consumers/default")).await.0, 404);
    assert_eq!(outcome(lab.get("/metrics")).await.0, 403);
    assert_eq!(outcome(lab.get("/")).await.0, 403);
    assert_eq!(outcome(lab.get("/v1/sources")).await.0, 403);
    // A consumer with subscriptions stays; an issued token ends when revoked.
    let r = app
        .post("/v1/consumers", &json!({"name": "tmp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sub = json!({"url": "https://hooks.example.com/t", "resources": ["*"], "consumer": "tmp"});
    app.post_json("/v1/subscriptions", &sub).await;
    let in_use = outcome(app.delete("/v1/consumers/tmp")).await;
    assert_eq!(in_use, (409, json!("consumer_in_use")));
    let issued = app.post_json("/v1/consumers/tmp/tokens", &json!({})).await;
    let tmp = Api::new(app.base.clone(), issued["token"].as_str().unwrap());
    assert_eq!(outcome(tmp.get("/v1/subscriptions")).await.0, 200);
    let path = format!(
        "/v1/consumers/tmp/tokens/{}",
        issued["id"].as_str().unwrap()
    );
    assert_eq!(outcome(app.delete(&path)).await.0, 204);
    assert_eq!(outcome(tmp.get("/v1/subscriptions")).await.0, 401);
    for ttl in ["0", "86401"] {
        let path = format!("/v1/consumers/tmp/portal-links?ttl_seconds={ttl}");
        let refused = outcome(app.post(&path, &json!({}))).await;
        assert_eq!(refused.0, 422, "ttl {ttl}");
    }
    a_live_stream_ends_with_its_portal_link(&app).await;
}

/// A live stream opened with a portal link ends when the link expires.
async fn a_live_stream_ends_with_its_portal_link(app: &App) {
    let path = "/v1/consumers/lab/portal-links?ttl_seconds=2";
    let link = app.post_json(path, &json!({})).await;
    let token = link["url"].as_str().unwrap().split_once('#').unwrap().1;
    let r = app
        .http
        .get(format!("{}/v1/resources/sim/patients/events", app.base))
        .header("accept", "text/event-stream")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(30), r.bytes()).await;
    assert!(body.is_ok(), "the stream outlived its link by 28 s");
}

/// A live stream of sim/patients opened with `token`, its first events read.
async fn open_stream(app: &App, token: &str) -> reqwest::Response {
    let mut r = app
        .http
        .get(format!(
            "{}/v1/resources/sim/patients/events?after=0-0",
            app.base
        ))
        .header("accept", "text/event-stream")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    r
}

/// The stream ends (well before a portal link's hour).
async fn ends(r: reqwest::Response, why: &str) {
    let body = tokio::time::timeout(Duration::from_secs(30), r.bytes()).await;
    assert!(body.is_ok(), "the stream outlived {why} by 30 s");
}

/// A new consumer `name` of sim/patients and a token issued to it.
async fn consumer_with_token(app: &App, name: &str) -> String {
    let made = json!({"name": name, "resources": ["sim/patients"]});
    assert_eq!(
        app.post("/v1/consumers", &made)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let issued = app
        .post_json(&format!("/v1/consumers/{name}/tokens"), &json!({}))
        .await;
    issued["token"].as_str().unwrap().to_string()
}

/// Open live streams end when their credential is revoked, their consumer
/// deleted or its allow-list narrowed past the table, not at the link's expiry.
async fn live_streams_end_when_their_credential_goes(ts: TestStore) {
    let (_sim, app) = lab_relay(&ts).await;
    let link = app
        .post_json("/v1/consumers/lab/portal-links", &json!({}))
        .await;
    let token = link["url"].as_str().unwrap().split_once('#').unwrap().1;
    let r = open_stream(&app, token).await;
    let revoke = app.post("/v1/consumers/lab/portal-links/revoke", &json!({}));
    assert_eq!(revoke.send().await.unwrap().status(), 204);
    ends(r, "its revoked portal link").await;

    let token = consumer_with_token(&app, "revoked").await;
    let r = open_stream(&app, &token).await;
    let ids = app.get_json("/v1/consumers/revoked").await;
    let id = ids["tokens"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/consumers/revoked/tokens/{id}");
    assert_eq!(outcome(app.delete(&path)).await.0, 204);
    ends(r, "its revoked token").await;

    let token = consumer_with_token(&app, "deleted").await;
    let r = open_stream(&app, &token).await;
    assert_eq!(outcome(app.delete("/v1/consumers/deleted")).await.0, 204);
    ends(r, "its deleted consumer").await;

    let token = consumer_with_token(&app, "narrowed").await;
    let r = open_stream(&app, &token).await;
    let narrower = json!({"resources": ["sim/visits"]});
    assert_eq!(
        outcome(app.patch("/v1/consumers/narrowed", &narrower))
            .await
            .0,
        200
    );
    ends(r, "its table leaving the allow-list").await;
    app.stop().await;
}
