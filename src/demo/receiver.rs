//! The demo's built-in webhook receiver: it verifies each request's
//! signature and prints one line per event, so a newcomer sees delivery too.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::delivery::signing;

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    /// The subscription's secret, known once it is created.
    pub secret: Arc<Mutex<Option<String>>>,
}

pub async fn start(cancel: CancellationToken) -> anyhow::Result<Receiver> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let r = Receiver {
        url,
        secret: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(r)
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ts: i64 = h("webhook-timestamp").parse().unwrap_or(0);
    let secret = r.secret.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let verified = secret
        .is_some_and(|s| signing::verify(&s, h("webhook-id"), ts, &body, h("webhook-signature")));
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    println!(
        "{}  webhook   {:<28}  {}  stamp {:<5} signature {}",
        &now[11..23],
        event["type"].as_str().unwrap_or("?"),
        event["subject"].as_str().unwrap_or("?"),
        event["updatestamp"],
        if verified { "verified" } else { "INVALID" }
    );
    StatusCode::NO_CONTENT
}
