//! The relay's configuration as tests write it: one typed `RawConfig`,
//! validated for relays in the test process and written as TOML for
//! `stamp-relay` subprocesses, so no test spells configuration text (the
//! tests of the text itself, in operations/cli.rs, aside).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use stamp_relay::config::{
    Config, DeliveryConfig, RawConfig, Scope, SourceConfig, StoreConfig, TokenConfig,
};

/// Builds a [`RawConfig`]: `new` starts from the production defaults,
/// `on` from what the harness's in-process relays run with.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    raw: RawConfig,
}

impl ConfigBuilder {
    /// The production defaults, with no source.
    pub fn new() -> Self {
        Self::default()
    }

    /// A test store's settings (its backend, the `test` key prefix, a
    /// short lease) and the test delivery settings ([`delivery`]).
    pub fn on(store: &StoreConfig) -> Self {
        let mut b = Self::new();
        b.raw.store = store.clone();
        b.raw.delivery = delivery();
        // The auth matrix tests send dozens of wrong tokens from one address.
        b.raw.api.max_failed_logins = 10_000;
        b
    }

    /// The embedded store in `dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.raw.store.data_dir = dir.into();
        self
    }

    pub fn store(mut self, tweak: impl FnOnce(&mut StoreConfig)) -> Self {
        tweak(&mut self.raw.store);
        self
    }

    pub fn delivery(mut self, tweak: impl FnOnce(&mut DeliveryConfig)) -> Self {
        tweak(&mut self.raw.delivery);
        self
    }

    pub fn source(mut self, source: SourceConfig) -> Self {
        self.raw.sources.push(source);
        self
    }

    pub fn sources(mut self, sources: Vec<SourceConfig>) -> Self {
        self.raw.sources.extend(sources);
        self
    }

    /// `api.listen` on a loopback port.
    pub fn listen(mut self, port: u16) -> Self {
        self.raw.api.listen = ([127, 0, 0, 1], port).into();
        self
    }

    /// An admin token named `ops`, read from the variable `var`.
    pub fn admin_token_env(mut self, var: &str) -> Self {
        self.raw
            .api
            .tokens
            .push(TokenConfig::new("ops", Scope::Admin, var));
        self
    }

    /// Validated against the process environment, as `Config::load` does.
    pub fn build(self) -> Config {
        self.named()
            .raw
            .validate(&|k| std::env::var(k).ok())
            .unwrap_or_else(|e| panic!("the test configuration: {e}"))
    }

    /// The configuration file a `stamp-relay` subprocess reads.
    pub fn toml(&self) -> String {
        toml::to_string(&self.clone().named().raw).expect("a RawConfig serializes as TOML")
    }

    /// Each relay a test starts is an instance of its own (in production
    /// the host's name tells them apart): a fresh `instance_id` unless the
    /// test chose one. A file written once keeps its name across restarts.
    fn named(mut self) -> Self {
        if self.raw.store.instance_id.is_empty() {
            let id = uuid::Uuid::new_v4().simple().to_string();
            self.raw.store.instance_id = format!("test-{}", &id[..12]);
        }
        self
    }

    /// Writes the file to `path` and answers the path.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.toml()).unwrap();
        path.to_path_buf()
    }
}

/// An upstream source with the production defaults, as a file naming only
/// these three keys would give.
pub fn upstream(name: &str, base_url: &str, resources: &[&str]) -> SourceConfig {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "base_url": base_url,
        "resources": resources,
    }))
    .unwrap()
}

/// Test delivery settings: loopback receivers allowed, a millisecond retry
/// schedule, and a request timeout below the test lease time.
pub fn delivery() -> DeliveryConfig {
    DeliveryConfig {
        allow_private_targets: true,
        retry_schedule: [10, 20, 40, 80, 100, 100, 100, 100]
            .map(Duration::from_millis)
            .to_vec(),
        request_timeout: Duration::from_millis(300),
        ..DeliveryConfig::default()
    }
}
