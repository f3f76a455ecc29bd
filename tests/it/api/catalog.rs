//! The event catalog (`GET /v1/event-types`, docs/tracing.md): its schemas
//! validate every event of a chaos run (random creates, updates, deletes
//! and restores), a declared schema is served as declared, and a field
//! that appears later is added to the inferred schema and counted.

use std::collections::HashMap;

use serde_json::{Value, json};
use stamp_relay::{
    config::{DeclaredSchema, Paging},
    store::Table,
};
use stamp_relay_simulator::{Change, Op, SimConfig};

use crate::harness::openapi::check_response;
use crate::harness::{App, Backend, Sim, TestStore, source, wait_synced};

/// A schema the users' records meet, declared inline.
fn users_schema() -> serde_json::Map<String, Value> {
    json!({
        "type": "object",
        "required": ["uuid", "update_stamp"],
        "properties": {"uuid": {"type": "string"}, "update_stamp": {"type": "integer"}}
    })
    .as_object()
    .unwrap()
    .clone()
}

async fn catalog(app: &App) -> Vec<Value> {
    let r = app.get("/v1/event-types").send().await.unwrap();
    let (status, ct) = (
        r.status().as_u16(),
        r.headers()["content-type"].to_str().unwrap().to_string(),
    );
    let body: Value = r.json().await.unwrap();
    check_response("GET", "/v1/event-types", status, &ct, &body);
    body["event_types"].as_array().unwrap().clone()
}

/// Every event of a table, through replay.
async fn replay(app: &App, resource: &str) -> Vec<Value> {
    let (mut out, mut after) = (Vec::new(), "0".to_string());
    loop {
        let path = format!("/v1/resources/sim/{resource}/events?after={after}&limit=500");
        let page = app.get_json(&path).await;
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        if page["has_more"] != true {
            return out;
        }
        after = page["next_after"].as_str().unwrap().to_string();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_validates_every_event_of_a_chaos_run() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 20), ("users".into(), 5)],
        seed: crate::harness::one_seed(),
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients", "users"], Paging::Pages, 50);
    let app = App::spawn_with(&ts, vec![src], |c| {
        let users = DeclaredSchema::Inline(users_schema());
        c.sources[0].settings.schemas.insert("users".into(), users);
    })
    .await;
    let targets = [Table::new("sim", "patients"), Table::new("sim", "users")];
    let sync = async || {
        for t in &targets {
            wait_synced(ts.store.as_ref(), t, &sim.sim).await;
        }
    };
    sync().await;
    assert_eq!(catalog(&app).await.len(), 8, "four types per table");
    for _ in 0..5 {
        sim.sim.random_writes(None, 40);
        sync().await;
    }
    let id = sim.sim.state("patients")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    // Whatever the seed drew, every op happens at least once.
    let live = sim.sim.state("patients");
    let live = live.iter().find(|r| r["deleted_at"].is_null()).unwrap();
    let live = live["uuid"].as_str().unwrap();
    for op in [Op::Create, Op::Delete, Op::Restore] {
        let change = match op {
            Op::Create => Change::new("patients", op),
            _ => Change::new("patients", op).with_id(live),
        };
        sim.sim.apply(change).unwrap();
        // Polled apart, so the relay sees the delete before the restore.
        sync().await;
    }
    let change = Change::new("patients", Op::Update).with_id(&id);
    sim.sim
        .apply(change.with_fields(json!({"x_new_field": "later"})))
        .unwrap();
    sync().await;

    let types = catalog(&app).await;
    let by_type: HashMap<String, &Value> = types
        .iter()
        .map(|t| (t["type"].as_str().unwrap().to_string(), t))
        .collect();
    let patients = &by_type["io.stamp-relay.patients.updated"];
    assert_eq!(patients["record_schema"], "inferred");
    let record = &patients["schema"]["properties"]["data"];
    assert_eq!(record["x-inferred"], true);
    assert_eq!(record["properties"]["x_new_field"]["type"], "string");
    let users = &by_type["io.stamp-relay.users.created"];
    assert_eq!(users["record_schema"], "declared");
    assert_eq!(
        users["schema"]["properties"]["data"],
        Value::Object(users_schema())
    );

    let validators: HashMap<&String, jsonschema::Validator> = by_type
        .iter()
        .map(|(ty, t)| (ty, jsonschema::validator_for(&t["schema"]).unwrap()))
        .collect();
    let mut checked = HashMap::<String, usize>::new();
    for resource in ["patients", "users"] {
        for e in replay(&app, resource).await {
            let ty = e["type"].as_str().unwrap().to_string();
            let errs: Vec<String> = validators[&ty]
                .iter_errors(&e)
                .map(|x| x.to_string())
                .collect();
            assert!(errs.is_empty(), "{ty}: {errs:?}\n{e:#}");
            *checked.entry(ty).or_default() += 1;
        }
    }
    for op in ["created", "updated", "deleted", "restored"] {
        let n = checked
            .get(&format!("io.stamp-relay.patients.{op}"))
            .copied()
            .unwrap_or(0);
        assert!(n > 0, "the chaos run made no {op} event: {checked:?}");
    }
    // The schemas can refuse: a record whose id is a number is not a patient.
    let mut wrong = replay(&app, "patients").await.remove(0);
    wrong["data"]["uuid"] = json!(5);
    let ty = wrong["type"].as_str().unwrap().to_string();
    assert!(!validators[&ty].is_valid(&wrong));

    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .bearer_auth(crate::harness::ADMIN_TOKEN);
    let text = metrics.send().await.unwrap().text().await.unwrap();
    let counted = text
        .lines()
        .find(|l| l.starts_with("stamp_relay_schema_new_fields_total{") && l.contains("patients"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(
        counted.is_some_and(|n| n >= 1),
        "no new field counted:\n{text}"
    );
    app.stop().await;
}
