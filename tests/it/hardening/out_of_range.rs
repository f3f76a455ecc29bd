//! Positions past i64::MAX in a request (issue 24, finding 12): a 400
//! problem naming the parameter on both stores, never a wrapped read (the
//! embedded store) nor a 503 (Redis).

use serde_json::Value;

use crate::{
    harness::{TestStore, patients_relay},
    on_both_stores,
};

on_both_stores!(positions_past_i64_are_a_400_naming_the_parameter);

async fn positions_past_i64_are_a_400_naming_the_parameter(ts: TestStore) {
    let (_sim, app) = patients_relay(&ts, 3).await;
    let max = u64::MAX.to_string();
    let past = (1u64 << 63).to_string();
    let events = "/v1/resources/sim/patients/events";
    let compat = "/compat/sim/api/patients/";
    let cases = [
        (format!("{events}?after={max}"), "after"),
        (format!("{events}?after={past}-0"), "after"),
        (format!("{events}?after=1-{max}"), "after"),
        (format!("{events}?after=99999999999999999999999"), "after"),
        (format!("{compat}?sync={max}"), "sync"),
        (format!("{compat}?page={past}"), "page"),
        (format!("{compat}?sync=0&after={max}"), "after"),
        // A page whose first record would lie past the largest position.
        (
            format!("{compat}?page={}&page_size=100", 1u64 << 60),
            "page",
        ),
    ];
    for (path, field) in cases {
        let r = app.get(&path).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], "out_of_range", "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let r = app
        .get(events)
        .header("accept", "text/event-stream")
        .header("last-event-id", &max)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "Last-Event-ID");
    // The largest position itself is in range: past this table's top, so
    // the honest-positions answer (409 naming the top), not a 400.
    let top = (i64::MAX as u64).to_string();
    let r = app
        .get(&format!("{events}?after={top}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "position_ahead", "{body}");
    app.stop().await;
}
