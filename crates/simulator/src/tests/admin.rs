//! The `/_sim/` admin surface, raw records, and the background writer.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{TestSim, spawn, with_tables};
use crate::{Faults, Order, SimConfig};

#[tokio::test]
async fn changes_apply_in_order_and_report_their_stamps() {
    let t = spawn(SimConfig {
        order: Order::Stamp,
        ..with_tables(&[("patients", 2)])
    })
    .await;
    let changes = json!([
        {"table": "patients", "op": "create", "id": "p-1", "fields": {"last_name": "Zed", "room": "1A"}},
        {"table": "patients", "op": "update", "id": "p-1", "fields": {"room": "2B"}},
        {"table": "patients", "op": "delete", "id": "p-1"},
    ]);
    let (status, applied) = t.send_json(Method::POST, "/_sim/changes", changes).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    let summary: Vec<(&str, u64)> = applied
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["op"].as_str().unwrap(), a["stamp"].as_u64().unwrap()))
        .collect();
    assert_eq!(summary, [("create", 3), ("update", 4), ("delete", 5)]);
    assert_eq!(applied[0]["id"], "p-1");

    let (_, state) = t.get("/_sim/state/patients").await;
    let record = state
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["uuid"] == "p-1")
        .unwrap();
    assert_eq!(
        (record["last_name"].as_str(), record["room"].as_str()),
        (Some("Zed"), Some("2B"))
    );
    assert!(record["deleted_at"].is_string() && record["created_at"].is_string());

    let again = json!([{"table": "patients", "op": "create", "id": "p-1"}]);
    let (status, body) = t.send_json(Method::POST, "/_sim/changes", again).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["detail"].as_str().unwrap().contains("p-1"));
    let unknown = json!([{"table": "wards", "op": "create"}]);
    assert_eq!(
        t.send_json(Method::POST, "/_sim/changes", unknown).await.0,
        StatusCode::NOT_FOUND
    );

    let random = json!({"table": "patients", "count": 3});
    let (status, applied) = t
        .send_json(Method::POST, "/_sim/random-writes", random)
        .await;
    assert_eq!(
        (status, applied.as_array().map(Vec::len)),
        (StatusCode::OK, Some(3))
    );
}

#[tokio::test]
async fn faults_are_read_and_replaced_over_http() {
    let t = spawn(with_tables(&[])).await;
    let (_, faults) = t.get("/_sim/faults").await;
    assert_eq!(
        serde_json::from_value::<Faults>(faults).unwrap(),
        Faults::default()
    );
    let (status, _) = t
        .send_json(Method::PUT, "/_sim/faults", json!({"writes_per_page": 4}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        t.sim.faults(),
        Faults {
            writes_per_page: 4,
            ..Faults::default()
        }
    );
    let (status, body) = t
        .send_json(Method::PUT, "/_sim/faults", json!({"error_rate": 2}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("error_rate"));
    let (status, _) = t
        .send_json(Method::PUT, "/_sim/faults", json!({"eror_rate": 0.1}))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "misspelt fields are refused"
    );
}

#[tokio::test]
async fn raw_records_are_listed_after_the_regular_ones() {
    let t = spawn(SimConfig {
        order: Order::Stamp,
        ..with_tables(&[("sites", 2)])
    })
    .await;
    for record in [
        json!({"name": "no id or stamp"}),
        json!({"uuid": "r-1", "update_stamp": 1}),
    ] {
        let (status, _) = t
            .send_json(
                Method::POST,
                "/_sim/raw",
                json!({"table": "sites", "record": record}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let all = t.page("/api/sites/").await;
    assert_eq!(all["count"], 4);
    assert_eq!(all["results"][2], json!({"name": "no id or stamp"}));
    assert_eq!(all["results"][3]["uuid"], "r-1");
    let newer = t.page("/api/sites/?sync=1").await;
    assert_eq!(newer["count"], 2);
    assert_eq!(newer["results"][1], json!({"name": "no id or stamp"}));
    let second = t.page("/api/sites/?page=2&page_size=3").await;
    assert_eq!(
        second["results"],
        json!([{"uuid": "r-1", "update_stamp": 1}])
    );
    assert_eq!(
        t.sim.state("sites").len(),
        2,
        "raw records are not ground truth"
    );
}

#[tokio::test]
async fn the_request_log_records_effective_parameters() {
    let t = spawn(with_tables(&[("users", 3)])).await;
    t.get("/api/users/?sync=2&page=1&page_size=10").await;
    t.get("/api/users/?sync=x").await;
    let (_, log) = t.get("/_sim/requests").await;
    let entries: Vec<(u64, u64, u64)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["sync"].as_u64().unwrap(),
                e["page_size"].as_u64().unwrap(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(entries, [(2, 10, 200), (0, 50, 400)]);
    assert_eq!(log[0]["table"], "users");
}

#[tokio::test]
async fn the_background_writer_runs_at_the_change_rate_until_shutdown() {
    let config = SimConfig {
        change_rate: 400.0,
        order: Order::Stamp,
        ..with_tables(&[("patients", 1), ("assessments", 1)])
    };
    let t = spawn(config).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let written = |t: &TestSim| {
        ["patients", "assessments", "users", "sites", "comments"]
            .iter()
            .map(|table| {
                t.sim
                    .state(table)
                    .iter()
                    .map(|r| r["update_stamp"].as_u64().unwrap())
                    .max()
                    .unwrap_or(0)
            })
            .sum::<u64>()
    };
    let during = written(&t);
    assert!(
        during > 20,
        "about 100 writes expected, saw stamps summing to {during}"
    );
    t.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = written(&t);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(written(&t), stopped);
}
