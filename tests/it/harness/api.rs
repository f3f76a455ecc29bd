//! Requests to a relay under test, the same whether it runs in the test
//! process ([`super::App`]) or as a `stamp-relay serve` subprocess
//! ([`serve`]): a base URL, a token, and the requests tests make with it.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;

use super::{bin, eventually};

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    token: String,
}

impl Api {
    /// A relay at `base` (`http://host:port`), asked with `token`. The
    /// client reads no proxy from the environment: the relay is local.
    pub fn new(base: String, token: &str) -> Api {
        Api {
            base,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            token: token.into(),
        }
    }

    /// A relay listening on a loopback port.
    pub fn local(port: u16, token: &str) -> Api {
        Self::new(format!("http://127.0.0.1:{port}"), token)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// GET with the token, expecting a JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    /// What `GET /metrics` answers.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The line of `GET /metrics` for the counter `stamp_relay_<name>_total`
    /// of the table sim/patients; fails the test naming it when absent.
    pub async fn table_counter(&self, name: &str) -> String {
        let text = self.metrics_text().await;
        let line = format!(r#"stamp_relay_{name}_total{{source="sim",resource="patients"}}"#);
        text.lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_else(|| panic!("no {line} in {text}"))
            .to_string()
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
    }

    /// POST with the token, expecting a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Value {
        self.post(path, body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn patch(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Enables or disables a subscription.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> reqwest::Response {
        let body = serde_json::json!({ "enabled": enabled });
        let path = format!("/v1/subscriptions/{id}");
        self.patch(&path, &body).send().await.unwrap()
    }

    /// Waits until `/healthz` answers 200: a subprocess is listening.
    pub async fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.base);
        eventually(
            &format!("{url} to answer"),
            Duration::from_secs(30),
            async || {
                let r = self.http.get(&url).send().await;
                r.is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
    }
}

/// `stamp-relay serve --config <cfg>`, its output discarded; callers add
/// variables (and their own output) and spawn it.
pub fn serve(cfg: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}
