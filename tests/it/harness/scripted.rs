//! `Scripted`: a webhook receiver that answers what the test tells it (a
//! status, an optional `Retry-After`, a body) and keeps every request.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::Value;
use stamp_relay::delivery::signing;

#[derive(Clone, Debug)]
pub struct Request {
    pub headers: HeaderMap,
    body: Bytes,
}

impl Request {
    pub fn header(&self, k: &str) -> &str {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Whether `secret` is among the request's signatures.
    pub fn signed_with(&self, secret: &str) -> bool {
        let ts: i64 = self.header("webhook-timestamp").parse().unwrap();
        signing::verify(
            secret,
            self.header("webhook-id"),
            ts,
            &self.body,
            self.header("webhook-signature"),
        )
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the receiver answers: a status, an optional `Retry-After`, a body.
pub type Reply = (u16, Option<&'static str>, String);

#[derive(Clone)]
pub struct Scripted {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    pub reply: Arc<Mutex<Reply>>,
}

impl Scripted {
    pub async fn start(reply: Reply) -> Scripted {
        let s = Scripted {
            url: String::new(),
            requests: Arc::default(),
            reply: Arc::new(Mutex::new(reply)),
        };
        let app = Router::new()
            .route("/hook", post(answer))
            .with_state(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Scripted { url, ..s }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(State(s): State<Scripted>, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.lock().unwrap().push(Request { headers, body });
    let (status, retry_after, body) = s.reply.lock().unwrap().clone();
    let status = StatusCode::from_u16(status).unwrap();
    match retry_after {
        Some(ra) => (status, [("retry-after", ra)], body).into_response(),
        None => (status, body).into_response(),
    }
}
