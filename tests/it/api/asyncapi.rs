//! asyncapi.yaml is a valid AsyncAPI 3.0 document (checked against the
//! official JSON Schema in tests/fixtures), is served at `/asyncapi.yaml`,
//! and its message schemas accept what a running relay really sends:
//! webhook bodies, replay and live events, and Redis stream entries.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::SimConfig;

use crate::harness::delivery::subscribe_to;
use crate::harness::receiver::TestReceiver;
use crate::harness::sse::read_sse;
use crate::harness::{App, Backend, Sim, TestStore, all_events, eventually, source, wait_synced};

fn document() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// Every error of `v` against `validator`, as lines.
fn errors(validator: &jsonschema::Validator, v: &Value) -> Vec<String> {
    validator
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn asyncapi_yaml_is_a_valid_asyncapi_3_document() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/asyncapi-3.0.0.schema.json"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let doc = document();
    assert_eq!(errors(&validator, &doc), Vec::<String>::new());
    // The check can fail: a document without `info` is refused.
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(!validator.is_valid(&broken));
}

/// A validator for one schema of the document's components.
fn component(doc: &Value, name: &str) -> jsonschema::Validator {
    let mut schema = json!({"$ref": format!("#/components/schemas/{name}")});
    schema["components"] = doc["components"].clone();
    jsonschema::draft7::new(&schema).unwrap()
}

fn check(validator: &jsonschema::Validator, what: &str, v: &Value) {
    let errs = errors(validator, v);
    assert!(
        errs.is_empty(),
        "{what} does not match asyncapi.yaml: {errs:?}\n{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_and_true_to_what_a_relay_sends() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 5)],
        ..SimConfig::default()
    })
    .await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 50)],
    )
    .await;
    let served = app
        .http
        .get(format!("{}/asyncapi.yaml", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "open, like /openapi.yaml");
    let doc: Value = serde_yaml::from_str(&served.text().await.unwrap()).unwrap();
    assert_eq!(doc, document());
    let (event, entry) = (
        component(&doc, "CloudEvent"),
        component(&doc, "StreamEntry"),
    );

    let t = Table::new("sim", "patients");
    let mut live = app
        .get("/v1/resources/sim/patients/events")
        .header("accept", "text/event-stream")
        .header("last-event-id", "0-0")
        .send()
        .await
        .unwrap();
    let rx = TestReceiver::start(2).await;
    subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning"}),
    )
    .await;
    sim.sim.random_writes(Some("patients"), 20);
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let stored = all_events(ts.store.as_ref(), &t).await.len();
    eventually(
        "every event delivered",
        Duration::from_secs(30),
        async || rx.events().len() >= stored,
    )
    .await;

    for e in rx.events() {
        check(&event, "a webhook event", &e);
    }
    let page = app
        .get_json("/v1/resources/sim/patients/events?limit=1000")
        .await;
    let replayed = page["events"].as_array().unwrap();
    assert_eq!(replayed.len(), stored);
    replayed
        .iter()
        .for_each(|e| check(&event, "a replayed event", e));
    let mut buf = String::new();
    let streamed = read_sse(&mut live, &mut buf, stored, Duration::from_secs(20)).await;
    assert_eq!(streamed.len(), stored);
    streamed
        .iter()
        .for_each(|(_, e)| check(&event, "a live event", e));

    let client = redis::Client::open(ts.redis.as_ref().unwrap().url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg("test:{sim:patients}:events")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(entries.len(), stored);
    for (_, fields) in entries {
        check(
            &entry,
            "a stream entry",
            &serde_json::to_value(fields).unwrap(),
        );
    }
    app.stop().await;
}
