//! Records an upstream should never send (issue 24, findings 4 and 6):
//! ids with control characters or over 256 bytes, and stamps past
//! 2^53 - 1 (i64::MAX and beyond included), are rejected at ingest (kept
//! in the reject stream, counted, never appended), while ids that are
//! merely unusual (non-ASCII, spaces, `%`) are delivered with a printable
//! ASCII `webhook-id` that decodes to the CloudEvents id and a signature
//! the receiver verifies.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde_json::{Value, json};
use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::{Change, Op, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    harness::{App, Sim, TestStore, all_events, eventually, receiver::TestReceiver, relay, source},
    on_both_stores,
};

on_both_stores!(
    odd_ids_are_delivered_safely_or_rejected_at_ingest,
    a_stamp_past_i64_is_rejected_and_later_changes_still_arrive,
    a_stamp_past_max_stamp_jump_is_rejected,
);

const CARRIED: [&str; 5] = ["Zoë-Ñandú", "emoji-😀", "with space", "pct%41", "q<>\"'"];

fn refused() -> [String; 3] {
    [
        "esc\u{1b}[31mred".into(),
        "nl\nforged log line".into(),
        "x".repeat(300),
    ]
}

/// `%XX` decoded back to the bytes they stand for.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn odd_ids_are_delivered_safely_or_rejected_at_ingest(ts: TestStore) {
    let sim = Sim::start(SimConfig::default()).await;
    for id in CARRIED.iter().map(|s| s.to_string()).chain(refused()) {
        sim.sim
            .apply(Change::new("patients", Op::Create).with_id(&id))
            .unwrap();
    }
    let rx = TestReceiver::start(7).await;
    let app = App::spawn(
        &ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
    )
    .await;
    let created = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": rx.url, "resources": ["*"], "start": "beginning"}),
        )
        .await;
    rx.set_secrets(&[created["secret"].as_str().unwrap()]);
    let t = Table::new("sim", "patients");
    eventually(
        "the odd ids delivered",
        Duration::from_secs(30),
        async || rx.event_ids().len() >= CARRIED.len(),
    )
    .await;
    assert_eq!(rx.bad_signatures(), 0, "every delivery verifies");
    let received = rx
        .inner
        .lock()
        .unwrap()
        .received
        .iter()
        .map(|r| {
            (
                r.webhook_id.clone(),
                r.events[0]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect::<Vec<_>>();
    for (header, ce_id) in received {
        assert!(
            header.bytes().all(|b| b.is_ascii_graphic()),
            "not printable ASCII: {header:?}"
        );
        assert_eq!(
            percent_decode(&header),
            ce_id,
            "the header decodes to the id"
        );
    }
    let appended: Vec<String> = all_events(ts.store.as_ref(), &t)
        .await
        .into_iter()
        .map(|e| e.record)
        .collect();
    let mut want: Vec<String> = CARRIED.iter().map(|s| s.to_string()).collect();
    let mut got = appended.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "only the carriable ids are appended");
    let rejects = ts.store.rejects(&t, 100).await.unwrap();
    assert_eq!(rejects.len(), 3, "{rejects:?}");
    app.stop().await;
}

/// The (id, stamp) records the fake upstream serves.
type Served = Arc<Mutex<Vec<(String, u64)>>>;

/// An upstream serving whatever records the test puts in, with stamps the
/// simulator would never issue: those above `sync`, as one page.
async fn upstream_of(records: Served) -> String {
    async fn list(
        State(records): State<Served>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        let sync: u64 = q["sync"].parse().unwrap();
        let results: Vec<Value> = records
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, stamp)| *stamp > sync)
            .map(|(id, stamp)| json!({"uuid": id, "update_stamp": stamp, "deleted_at": null}))
            .collect();
        Json(json!({"count": results.len(), "next": null, "results": results}))
    }
    let app = Router::new()
        .route("/api/patients/", get(list))
        .with_state(records);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// Polls once and returns the appended record ids, in stream order.
async fn poll(ts: &TestStore, r: &mut stamp_relay::app::Relay) -> Vec<String> {
    r.pollers[0]
        .poll_once(&CancellationToken::new())
        .await
        .unwrap();
    let t = Table::new("sim", "patients");
    all_events(ts.store.as_ref(), &t)
        .await
        .into_iter()
        .map(|e| e.record)
        .collect()
}

async fn a_stamp_past_i64_is_rejected_and_later_changes_still_arrive(ts: TestStore) {
    let records = Arc::new(Mutex::new(vec![
        ("a".to_string(), 5),
        ("evil".to_string(), (1u64 << 63) + 5),
    ]));
    let base = upstream_of(records.clone()).await;
    let mut r = relay(&ts, vec![source(&base, &["patients"], Paging::Pages, 100)]);
    assert_eq!(poll(&ts, &mut r).await, ["a"]);
    records.lock().unwrap().push(("b".into(), 6));
    assert_eq!(
        poll(&ts, &mut r).await,
        ["a", "b"],
        "the cursor stayed reachable"
    );
    let t = Table::new("sim", "patients");
    let rejects = ts.store.rejects(&t, 10).await.unwrap();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert!(
        format!("{rejects:?}").contains("above 9007199254740991"),
        "{rejects:?}"
    );
}

async fn a_stamp_past_max_stamp_jump_is_rejected(ts: TestStore) {
    let records = Arc::new(Mutex::new(vec![("a".to_string(), 5)]));
    let base = upstream_of(records.clone()).await;
    let mut src = source(&base, &["patients"], Paging::Pages, 100);
    src.max_stamp_jump = Some(1000);
    let mut r = relay(&ts, vec![src]);
    assert_eq!(poll(&ts, &mut r).await, ["a"]);
    records
        .lock()
        .unwrap()
        .extend([("far".to_string(), 100_000), ("near".to_string(), 7)]);
    assert_eq!(poll(&ts, &mut r).await, ["a", "near"]);
    let t = Table::new("sim", "patients");
    let rejects = format!("{:?}", ts.store.rejects(&t, 10).await.unwrap());
    assert!(rejects.contains("max_stamp_jump (1000)"), "{rejects}");
    records.lock().unwrap().push(("next".into(), 8));
    assert_eq!(poll(&ts, &mut r).await, ["a", "near", "next"]);
}
