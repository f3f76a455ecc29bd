//! The relay as production runs it: the store, one upstream client per
//! source, one poller per target, and the HTTP server, started together and
//! stopped by one cancellation token. Tests start exactly this.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api::{self, ApiState, Shared, auth::ApiToken},
    catalog::Catalog,
    cloudevents::EventSource,
    config::{Config, join},
    declared::{self, Declared},
    delivery::{Deliverer, Schedule, sender::Sender},
    metrics::Metrics,
    poller::{PollError, PollReport, PollSettings, Poller, ReconcileReport},
    store::{self, Store, Target},
    tail::Tails,
    upstream::Upstream,
};

/// How long shutdown waits for pollers to finish their current chunk.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

pub struct Relay {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub pollers: Vec<Poller>,
    pub holder: String,
    pub sender: Arc<Sender>,
    pub metrics: Arc<Metrics>,
    /// The `[[subscriptions]]` of the configuration file, checked.
    pub declared: Arc<Vec<Declared>>,
}

/// A name for this process in leases: unique per start.
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl Relay {
    pub async fn build(config: Config) -> anyhow::Result<Relay> {
        let store = store::open(&config.store).await?;
        Self::with_store(config, store)
    }

    pub fn with_store(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Relay> {
        let holder = instance_id();
        let metrics = Arc::new(Metrics::new());
        let mut pollers = Vec::new();
        for source in &config.sources {
            let upstream = Arc::new(Upstream::new(source.clone())?);
            for resource in &source.settings.resources {
                let target = Target::new(source.name(), resource);
                store.keep_records(&target, source.settings.keep_records);
                pollers.push(Poller::new(
                    target,
                    store.clone(),
                    upstream.clone(),
                    &holder,
                    PollSettings::new(&source.settings, config.store.lease_ttl),
                    metrics.clone(),
                ));
            }
        }
        let declared = Arc::new(declared::of(&config)?);
        let policy = Deliverer::policy(&config);
        let refused = policy.declared_problems(&config);
        if !refused.is_empty() {
            return Err(crate::config::ConfigError { problems: refused }.into());
        }
        let (timeout, ca) = (
            config.delivery.request_timeout,
            &config.delivery.tls_ca_file,
        );
        let sender = Arc::new(Sender::new(policy, timeout, ca.as_deref())?);
        Ok(Relay {
            config,
            store,
            pollers,
            holder,
            sender,
            metrics,
            declared,
        })
    }

    pub fn shared(&self) -> Shared {
        Shared {
            store: self.store.clone(),
            targets: Arc::new(
                self.pollers
                    .iter()
                    .map(|p| (p.target.clone(), p.status.clone()))
                    .collect(),
            ),
        }
    }

    /// How each target's events look to downstream systems.
    pub fn event_sources(&self) -> Arc<HashMap<Target, Arc<EventSource>>> {
        let mut sources = HashMap::new();
        for src in &self.config.sources {
            for r in &src.settings.resources {
                let target = Target::new(src.name(), r);
                let event_source = EventSource {
                    target: target.clone(),
                    source_url: join(&src.base_url, r).to_string(),
                    type_prefix: self.config.api.event_type_prefix.clone(),
                    fields: src.settings.fields.clone(),
                };
                sources.insert(target, Arc::new(event_source));
            }
        }
        Arc::new(sources)
    }

    /// Webhook delivery for every subscription.
    pub fn deliverer(&self) -> Deliverer {
        Deliverer {
            store: self.store.clone(),
            sender: self.sender.clone(),
            schedule: Arc::new(Schedule::from_config(&self.config.delivery)),
            sources: self.event_sources(),
            wakes: Arc::new(
                self.pollers
                    .iter()
                    .map(|p| (p.target.clone(), p.status.wake.clone()))
                    .collect(),
            ),
            holder: self.holder.clone(),
            lease_ttl: self.config.store.lease_ttl,
            metrics: self.metrics.clone(),
            declared: self.declared.clone(),
            apply_first: false,
            secret_grace: self.config.delivery.secret_grace,
        }
    }

    /// The targets this relay polls.
    fn targets(&self) -> Vec<Target> {
        self.pollers.iter().map(|p| p.target.clone()).collect()
    }

    /// The HTTP layer's view of this relay; starts the live tails.
    pub fn api_state(&self, cancel: &CancellationToken) -> ApiState {
        let shared = self.shared();
        let tokens: Vec<ApiToken> = self
            .config
            .api_tokens
            .iter()
            .map(|(t, secret)| ApiToken::new(&t.name, t.scope, secret.expose()))
            .collect();
        if tokens.is_empty() {
            tracing::warn!("no api.tokens configured: every /v1 route answers 401");
        }
        let sources = self.event_sources();
        let wakes: Vec<_> = shared
            .targets
            .iter()
            .filter_map(|(t, st)| Some((sources.get(t)?.clone(), st.wake.clone())))
            .collect();
        let sources_for_catalog = sources.clone();
        ApiState {
            tails: Tails::new(self.store.clone(), &wakes, cancel),
            shared,
            tokens: Arc::new(api::auth::Tokens::new(
                tokens,
                self.config.api.max_failed_logins,
            )),
            sources,
            sender: self.sender.clone(),
            metrics: self.metrics.clone(),
            type_prefix: self.config.api.event_type_prefix.clone(),
            secret_grace: self.config.delivery.secret_grace,
            max_waiting_retries: self.config.delivery.max_waiting_retries,
            request_timeout: self.config.api.request_timeout,
            live_slots: Arc::new(tokio::sync::Semaphore::new(self.config.api.max_sse_clients)),
            limits: api::server::Limits {
                header_read_timeout: self.config.api.header_read_timeout,
                max_connections: self.config.api.max_connections,
                write_timeout: self.config.api.write_timeout,
                idle_timeout: self.config.api.idle_timeout,
            },
            cancel: cancel.clone(),
            compat: api::compat::Tables::from_config(&self.config),
            catalog: self.catalog(&sources_for_catalog, &wakes, cancel),
        }
    }

    /// The event catalog, following this instance's appends.
    fn catalog(
        &self,
        sources: &HashMap<Target, Arc<EventSource>>,
        wakes: &[(Arc<EventSource>, Arc<tokio::sync::Notify>)],
        cancel: &CancellationToken,
    ) -> Arc<Catalog> {
        let mut declared = HashMap::new();
        for s in &self.config.sources {
            for (resource, schema) in &s.settings.schemas {
                // Checked when the configuration loaded.
                if let Ok(v) = schema.load() {
                    declared.insert(Target::new(s.name(), resource), v);
                }
            }
        }
        let catalog = Arc::new(Catalog::new(
            self.store.clone(),
            self.metrics.clone(),
            sources,
            &declared,
        ));
        let wakes: Vec<_> = wakes
            .iter()
            .map(|(src, wake)| (src.target.clone(), wake.clone()))
            .collect();
        catalog.follow(&wakes, cancel);
        catalog
    }

    /// One poll of every target, concurrently; used by `sync --once`.
    pub async fn sync_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Vec<(Target, Result<PollReport, PollError>)> {
        self.each_target(cancel, |p, c| Box::pin(p.poll_once(c)))
            .await
    }

    /// One reconcile sweep of every target, concurrently; used by
    /// `sync --reconcile`.
    pub async fn reconcile_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Vec<(Target, Result<ReconcileReport, PollError>)> {
        self.each_target(cancel, |p, c| Box::pin(p.reconcile_once(c)))
            .await
    }

    /// Runs `step` on every poller concurrently, then releases each lease,
    /// so the next relay on this store (or a serving one) goes on at once.
    async fn each_target<R>(
        &mut self,
        cancel: &CancellationToken,
        step: for<'a> fn(
            &'a mut Poller,
            &'a CancellationToken,
        ) -> BoxFuture<'a, Result<R, PollError>>,
    ) -> Vec<(Target, Result<R, PollError>)> {
        let (store, holder) = (&self.store, &self.holder);
        let runs = self.pollers.iter_mut().map(|p| async move {
            let r = step(p, cancel).await;
            let _ = store.release(&p.target, holder).await;
            (p.target.clone(), r)
        });
        futures_util::future::join_all(runs).await
    }

    /// Retention's task: trims the tables this instance polls under lease.
    fn retention(&self, cancel: CancellationToken) -> impl Future<Output = ()> + use<> {
        let tables = self
            .pollers
            .iter()
            .map(|p| (p.target.clone(), p.status.holds_lease.clone()))
            .collect();
        crate::retention::run(
            self.store.clone(),
            tables,
            self.config.store.retention.clone(),
            self.metrics.clone(),
            cancel,
        )
    }

    /// Runs pollers and the HTTP server until `cancel`, then drains them
    /// within [`SHUTDOWN_DEADLINE`].
    pub async fn run(self, listener: TcpListener, cancel: CancellationToken) -> anyhow::Result<()> {
        let grace = self.config.delivery.secret_grace;
        let mut deliverer = self.deliverer();
        // Before the API serves, so it shows the file's subscriptions; if
        // the store does not answer yet, delivery's supervisor tries again.
        let targets = self.targets();
        let applied = declared::apply(self.store.as_ref(), &self.declared, &targets, grace);
        if let Err(e) = applied.await {
            tracing::warn!(error = %e, "cannot write the [[subscriptions]] of the configuration file yet; delivery tries again");
            deliverer.apply_first = true;
        }
        let tracker = TaskTracker::new();
        let state = self.api_state(&cancel);
        tracker.spawn(deliverer.run(cancel.clone()));
        tracker.spawn(self.retention(cancel.clone()));
        for poller in self.pollers {
            // Ready from the start: readiness must not race the task's first step.
            poller
                .status
                .running
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // Every log line of a poll carries its source and resource.
            let span = tracing::info_span!("poll", source = %poller.target.source, resource = %poller.target.resource);
            tracker.spawn(tracing::Instrument::instrument(
                poller.run(cancel.clone()),
                span,
            ));
        }
        let server = tracker.spawn(api::serve(listener, state, cancel.clone()));
        tracker.close();
        cancel.cancelled().await;
        if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline passed with tasks still running");
        }
        if server.is_finished() {
            server.await??;
        }
        Ok(())
    }
}
