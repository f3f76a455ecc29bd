//! Traces end to end (docs/tracing.md): one upstream change is one trace,
//! poll -> append -> delivery attempt, exported over OTLP/HTTP to a
//! collector stand-in in the test, and the receiver sees its trace id in
//! the `traceparent` header and the event's attribute.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};
use stamp_relay::{
    config::{Paging, TelemetryConfig},
    store::Table,
    telemetry::Telemetry,
    trace::PollTrace,
};
use stamp_relay_simulator::{Change, Op, SimConfig};
use tracing_subscriber::layer::SubscriberExt;

use crate::harness::delivery::subscribe_to;
use crate::harness::receiver::TestReceiver;
use crate::harness::{
    App, Backend, Sim, TestStore, all_events, eventually, patients_relay, source, wait_synced,
};

/// An OTLP/HTTP (JSON) collector on port 0: every span it was sent.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    async fn traces(
        State(spans): State<Arc<Mutex<Vec<Value>>>>,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        let mut all = spans.lock().unwrap();
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                all.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
        Json(json!({}))
    }
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn span_named<'a>(spans: &'a [Value], name: &str, trace: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["name"] == name && s["traceId"].as_str() == Some(trace))
}

/// The parts of a `traceparent`: trace id and parent id.
fn parts(tp: &str) -> (String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!((p.len(), p[0], p[3]), (4, "00", "01"), "{tp}");
    (p[1].to_string(), p[2].to_string())
}

// One thread, so the test's subscriber (a thread default) sees the
// relay's spans: the process-wide one belongs to the other tests.
#[tokio::test(flavor = "current_thread")]
async fn one_change_is_one_connected_trace_from_poll_to_receiver() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let (endpoint, exported) = collector().await;
    let config = TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        ..TelemetryConfig::default()
    };
    let telemetry = Arc::new(
        Telemetry::start(&config)
            .unwrap()
            .expect("an endpoint is set"),
    );
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(telemetry.layer()));
    let (sim, app) = patients_relay(&ts, 3).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let rx = TestReceiver::start(1).await;
    subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "now"}),
    )
    .await;

    let id = sim.sim.state("patients")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    sim.sim
        .apply(Change::new("patients", Op::Update).with_id(&id))
        .unwrap();
    eventually(
        "the update reaches the receiver",
        Duration::from_secs(20),
        async || !rx.events().is_empty(),
    )
    .await;
    let (header, event) = {
        let g = rx.inner.lock().unwrap();
        (
            g.received[0].traceparent.clone(),
            g.received[0].events[0].clone(),
        )
    };
    assert_eq!(event["subject"], id.as_str());
    assert_eq!(event["type"], "io.stamp-relay.patients.updated");

    // The event's trace is the one derived from its stream entry.
    let stored = all_events(ts.store.as_ref(), &t).await;
    let e = stored
        .iter()
        .find(|e| e.id.to_string() == event["streamid"])
        .unwrap();
    let trace = PollTrace::of("sim", "patients", e.observed);
    assert_eq!(event["traceparent"], trace.append_parent());
    let (trace_id, _) = parts(event["traceparent"].as_str().unwrap());
    let (header_trace, attempt_span) = parts(&header.expect("a traceparent header"));
    assert_eq!(header_trace, trace_id, "header and body name one trace");
    // The upstream request of that poll carried the poll span's context.
    let polls = sim.sim.requests();
    assert!(
        polls
            .iter()
            .any(|r| r.traceparent.as_deref() == Some(trace.poll_parent().as_str())),
        "no upstream request sent {}",
        trace.poll_parent()
    );

    let flushing = telemetry.clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .unwrap();
    eventually(
        "the spans reach the collector",
        Duration::from_secs(20),
        async || {
            let s = exported.lock().unwrap();
            span_named(&s, "attempt", &trace_id).is_some()
                && span_named(&s, "append", &trace_id).is_some()
        },
    )
    .await;
    let s = exported.lock().unwrap().clone();
    let poll = span_named(&s, "poll", &trace_id).expect("the poll span");
    let append = span_named(&s, "append", &trace_id).unwrap();
    let attempt = span_named(&s, "attempt", &trace_id).unwrap();
    let (_, append_id) = parts(&trace.append_parent());
    let (_, poll_id) = parts(&trace.poll_parent());
    assert_eq!(poll["spanId"], poll_id.as_str());
    assert_eq!(append["spanId"], append_id.as_str());
    assert_eq!(
        append["parentSpanId"],
        poll_id.as_str(),
        "append is a child of the poll"
    );
    assert_eq!(
        attempt["parentSpanId"],
        append_id.as_str(),
        "the attempt follows the append"
    );
    assert_eq!(
        attempt["spanId"],
        attempt_span.as_str(),
        "the header names the attempt span"
    );
    app.stop().await;
}

/// Without an exporter the same trace still travels: the header is the
/// event's own `traceparent`, upstream requests carry the poll's, and
/// every chunk of one poll says the same `observed`, so one trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_derived_trace_still_reaches_receiver_and_upstream() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        initial: vec![("patients".into(), 1200)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 500);
    let app = App::spawn(&ts, vec![src]).await;
    let t = Table::new("sim", "patients");
    wait_synced(ts.store.as_ref(), &t, &sim.sim).await;
    let stored = all_events(ts.store.as_ref(), &t).await;
    assert!(
        stored.iter().all(|e| e.observed == stored[0].observed),
        "the initial load's chunks (500 records each) say one poll's start"
    );
    let trace = PollTrace::of("sim", "patients", stored[0].observed);
    let requests = sim.sim.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.traceparent == Some(trace.poll_parent()))
    );

    let rx = TestReceiver::start(3).await;
    subscribe_to(
        &app,
        &rx,
        json!({"resources": ["sim/patients"], "start": "beginning"}),
    )
    .await;
    eventually("a delivery", Duration::from_secs(20), async || {
        !rx.events().is_empty()
    })
    .await;
    let (header, event) = {
        let g = rx.inner.lock().unwrap();
        (
            g.received[0].traceparent.clone(),
            g.received[0].events[0].clone(),
        )
    };
    assert_eq!(event["traceparent"], trace.append_parent());
    assert_eq!(header, Some(trace.append_parent()));
    app.stop().await;
}
