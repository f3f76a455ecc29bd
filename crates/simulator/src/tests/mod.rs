//! The simulator over real HTTP: each test serves it on port 0 and talks to
//! it with reqwest, as the relay does.

mod admin;
mod faults;
mod listing;

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{SimConfig, Simulator};

/// A served simulator; dropping it stops the server.
struct TestSim {
    sim: Arc<Simulator>,
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn spawn(config: SimConfig) -> TestSim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sim = Simulator::new(config);
    let shutdown = CancellationToken::new();
    tokio::spawn(Arc::clone(&sim).serve(listener, shutdown.clone()));
    TestSim {
        sim,
        base,
        client: reqwest::Client::new(),
        shutdown,
    }
}

/// A config with these initial counts and everything else at its default.
fn with_tables(tables: &[(&str, usize)]) -> SimConfig {
    SimConfig {
        initial: tables.iter().map(|&(t, n)| (t.to_owned(), n)).collect(),
        ..SimConfig::default()
    }
}

impl TestSim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET a path; the status and the body parsed as JSON (Null if it is not JSON).
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GET a list page that must succeed.
    async fn page(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// The `update_stamp`s of a page's results, in order.
fn stamps(page: &Value) -> Vec<u64> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["update_stamp"].as_u64().unwrap())
        .collect()
}

fn text<'a>(record: &'a Value, field: &str) -> &'a str {
    record[field].as_str().unwrap_or_default()
}
