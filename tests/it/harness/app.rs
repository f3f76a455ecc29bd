//! The relay as production runs it, in the test process.

use std::time::Duration;

use serde_json::{Value, json};
use stamp_relay::{
    app::Relay,
    config::{Config, Paging, SourceConfig},
};
use stamp_relay_simulator::SimConfig;
use tokio_util::sync::CancellationToken;

use super::{Api, Sim, TestStore, config, source};

/// Adds the test's admin and read tokens to a configuration.
pub fn with_tokens(config: &mut Config) {
    use stamp_relay::config::{Scope, Secret, TokenConfig};
    for (name, scope, secret) in [
        ("ops", Scope::Admin, ADMIN_TOKEN),
        ("dash", Scope::Read, READ_TOKEN),
    ] {
        let t = TokenConfig::new(name, scope, "UNUSED");
        config.api_tokens.push((t, Secret::new(secret)));
    }
}

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const READ_TOKEN: &str = "test-read-token";

/// The relay as production runs it (pollers + HTTP on port 0), with an
/// admin and a read token; its requests ([`Api`]) go with the admin token.
pub struct App {
    api: Api,
    pub cancel: CancellationToken,
    /// The running relay's topology: tests add and remove sources on it.
    pub topology: std::sync::Arc<stamp_relay::topology::Topology>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl std::ops::Deref for App {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl App {
    pub async fn spawn(ts: &TestStore, sources: Vec<SourceConfig>) -> App {
        Self::spawn_with(ts, sources, |_| {}).await
    }

    /// Like `spawn`, with a chance to change the validated configuration.
    pub async fn spawn_with(
        ts: &TestStore,
        sources: Vec<SourceConfig>,
        tweak: impl FnOnce(&mut Config),
    ) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = config(&ts.config, sources);
        // As a deployment sets it: the compatible API's links are absolute.
        config.api.public_url = Some(format!("http://{}", listener.local_addr().unwrap()));
        tweak(&mut config);
        with_tokens(&mut config);
        let relay = Relay::with_store(config, ts.store.clone()).unwrap();
        Self::serve(relay, listener).await
    }

    async fn serve(relay: Relay, listener: tokio::net::TcpListener) -> App {
        init_logs();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        let topology = relay.topology.clone();
        let task = tokio::spawn(relay.run(listener, cancel.clone()));
        App {
            api: Api::new(base, ADMIN_TOKEN),
            cancel,
            topology,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("the relay did not stop within 30 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The relay's warnings and errors in the output of a failing test (the
/// test writer keeps them out of passing ones): what a flaky answer was.
/// `RUST_LOG` overrides the level.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A relay over a simulated `sim/patients` with one subscription: the
/// simulator (keep it), the app, and the creation answer.
pub async fn app_with_subscription(ts: &TestStore) -> (Sim, App, Value) {
    let sim = Sim::start(SimConfig::default()).await;
    let app = App::spawn(
        ts,
        vec![source(&sim.base_url, &["patients"], Paging::Pages, 100)],
    )
    .await;
    let created = app
        .post_json(
            "/v1/subscriptions",
            &json!({"url": "https://hooks.example.com/h", "resources": ["*"]}),
        )
        .await;
    (sim, app, created)
}
