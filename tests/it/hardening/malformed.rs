//! Every documented route fed malformed input (a property test in the
//! spirit of schemathesis, which docs/testing.md shows how to run by hand): bad
//! path encodings, repeated and garbled query fields, random and broken
//! bodies under several content types. Whatever comes in, no answer is a
//! 5xx, every error is problem+json, and every answer's status and body are
//! the ones openapi.yaml documents for that route.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::harness::openapi::{check_response, documented, spec};
use crate::harness::{ADMIN_TOKEN, TestStore, seeds};

/// Path segments that do not decode, or decode to something odd.
const SEGMENTS: [&str; 8] = [
    "%ff",
    "%zz",
    "%",
    "%00",
    "%C3%28",
    "sub_%E2%82%AC",
    "..%2F..",
    "a%20b",
];

const QUERIES: [&str; 9] = [
    "limit=5&limit=6",
    "after=1&after=2",
    "limit=%ff",
    "after=%zz",
    "limit=",
    "after=-1",
    "limit=1e3",
    "%ff=1",
    "limit[]=1",
];

const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/merge-patch+json",
    "text/plain",
    "text/plain;a=+json",
    "application/x-www-form-urlencoded",
    "application/jsonx",
];

/// A random JSON value, a few levels deep, with field names a subscription
/// knows mixed in so validation gets past the first field.
fn value(rng: &mut StdRng, depth: u32) -> Value {
    const KEYS: [&str; 10] = [
        "url",
        "resources",
        "ops",
        "start",
        "headers",
        "batch_size",
        "rate_limit",
        "enabled",
        "description",
        "from",
    ];
    match rng.random_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-5i64..5_000_000_000)),
        3 => json!(rng.random::<f64>() * 1e6),
        4 => {
            let picks = [
                "",
                "*",
                "sim/patients",
                "now",
                "beginning",
                "https://x.example/h",
                "\u{0}",
                "é",
            ];
            json!(picks[rng.random_range(0..picks.len())])
        }
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..5) {
                let k = KEYS[rng.random_range(0..KEYS.len())];
                m.insert(k.to_string(), value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

fn body(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..6) {
        0 => b"{\"url\": ".to_vec(),
        1 => Vec::new(),
        2 => vec![0xff, 0xfe, b'{'],
        3 => format!("{{\"description\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
        _ => value(rng, 0).to_string().into_bytes(),
    }
}

/// A concrete path for a template: each parameter a real value or a bad one.
fn path_for(template: &str, real_id: &str, rng: &mut StdRng) -> String {
    let mut pick = |real: &str| {
        if rng.random_bool(0.5) {
            real.to_string()
        } else {
            SEGMENTS[rng.random_range(0..SEGMENTS.len())].to_string()
        }
    };
    template
        .replace("{source}", &pick("sim"))
        .replace("{resource}", &pick("patients"))
        .replace("{id}", &pick(real_id))
}

async fn check(
    method: &str,
    template: &str,
    req: reqwest::RequestBuilder,
    oversized: bool,
    what: &str,
) {
    let r = match req.send().await {
        Ok(r) => r,
        // A server that answers before reading an oversized body closes the
        // connection with the rest unread, and TCP may then reset it before
        // the client reads the answer (RFC 9112, section 9.6): the one
        // transport error an HTTP client must expect here.
        Err(e) if oversized && e.is_request() => return,
        Err(e) => panic!("{what}: {e}"),
    };
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = r.bytes().await.unwrap();
    assert!(status < 500, "{what} answered {status}: {bytes:?}");
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{what} answered {status}");
    }
    if status == 204 || !ct.contains("json") {
        return;
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    if ["route_not_found", "method_not_allowed"].contains(&body["code"].as_str().unwrap_or("")) {
        // Not this route after all (a segment decoded to a `/`): no
        // operation to hold it to, but it is a problem all the same.
        return;
    }
    check_response(method, template, status, &ct, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_malformed_input_with_a_documented_problem() {
    let ts = TestStore::open(crate::harness::Backend::Sqlite)
        .await
        .unwrap();
    let (_sim, app, created) = crate::harness::app_with_subscription(&ts).await;
    let spec = spec();
    let real_id = created["id"].as_str().unwrap().to_string();
    // A connection per request: the server closes a connection whose body it
    // did not read, and a pooled client could reuse it in that instant.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for seed in 0..seeds() {
        let mut rng = StdRng::seed_from_u64(seed);
        for (method, template) in documented() {
            let op = &spec["paths"][&template][method.to_lowercase()];
            let takes_body = !op["requestBody"].is_null();
            // Keep the subscription the other cases use.
            let template_ok = method != "DELETE";
            for case in 0..12 {
                let mut path = path_for(&template, &real_id, &mut rng);
                if !template_ok && path.contains(&real_id) {
                    path = path.replace(&real_id, "sub_gone");
                }
                if rng.random_bool(0.5) {
                    path = format!("{path}?{}", QUERIES[rng.random_range(0..QUERIES.len())]);
                }
                let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let mut req = http
                    .request(m, format!("{}{path}", app.base))
                    .bearer_auth(ADMIN_TOKEN);
                let ct = CONTENT_TYPES[rng.random_range(0..CONTENT_TYPES.len())];
                let mut oversized = false;
                if takes_body {
                    let body = body(&mut rng);
                    oversized = body.len() > 64 * 1024;
                    req = req.header("content-type", ct).body(body);
                } else if rng.random_bool(0.2) {
                    // Small: a route without a body answers before reading it.
                    req = req
                        .header("content-type", ct)
                        .body(value(&mut rng, 0).to_string());
                }
                if rng.random_bool(0.2) {
                    req = req.header(
                        "last-event-id",
                        SEGMENTS[rng.random_range(0..SEGMENTS.len())],
                    );
                }
                let what = format!("seed {seed} case {case}: {method} {path}");
                check(&method, &template, req, oversized, &what).await;
            }
        }
    }
    // No route, and a route without the method.
    for (method, path) in [
        ("GET", "/v2/nothing"),
        ("PUT", "/v1/subscriptions"),
        ("TRACE", "/healthz"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = app
            .http
            .request(m, format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 404 | 405), "{method} {path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    app.stop().await;
}
