//! The relay as production runs it: the store, the topology (one upstream
//! client per source, one entry per table), the scheduler that polls it,
//! and the HTTP server, started together and stopped by one cancellation
//! token. Tests start exactly this.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api::{self, ApiState, Shared, auth::ApiToken},
    catalog::Catalog,
    cloudevents::EventSource,
    config::Config,
    declared::{self, Declared},
    delivery::{Schedule, Supervisor, sender::WebhookClient},
    metrics::Metrics,
    poller::{
        HealthLog, HealthWriter, PollError, PollReport, Poller, ReconcileReport, TableStatus,
        health_table,
    },
    scheduler::Scheduler,
    sources::{SourceKey, sync::SourceSync},
    store::{self, Store, Table},
    tail::Tails,
    topology::Topology,
};

/// How long shutdown waits for pollers to finish their current chunk.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

pub struct Relay {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// What exists at run time: every part reads it, and a source added
    /// to it is polled, served and delivered without a restart.
    pub topology: Arc<Topology>,
    /// The pollers of the configuration's tables, for `sync --once` and
    /// tests; `run` hands them to the scheduler.
    pub pollers: Vec<Poller>,
    pub holder: String,
    pub sender: Arc<WebhookClient>,
    pub metrics: Arc<Metrics>,
    /// The `[[subscriptions]]` of the configuration file, checked.
    pub declared: Arc<Vec<Declared>>,
    /// The `_relay/health` table's live facts (its append signal), and the
    /// task appending the pollers' health transitions to it.
    pub health_status: Arc<TableStatus>,
    health_log: HealthLog,
    health_writer: Option<HealthWriter>,
    /// Keeps the topology equal to the sources made through the API.
    pub source_sync: Arc<SourceSync>,
}

/// The name this process holds leases under: `store.instance_id`, or the
/// host's name when that is empty. Stable across restarts, so a restarted
/// instance takes its own leases back at once.
pub fn instance_id(configured: &str) -> String {
    if configured.is_empty() {
        hostname()
    } else {
        configured.to_string()
    }
}

/// A name for a one-off run (`sync --once`, `sync --reconcile`): unique
/// per start, so it never shares the leases of an instance serving on the
/// same host.
pub fn one_off_id(configured: &str) -> String {
    format!(
        "{}-once-{}-{}",
        instance_id(configured),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".into())
}

impl Relay {
    pub async fn build(config: Config) -> anyhow::Result<Relay> {
        let store = store::open(&config.store).await?;
        Self::with_store(config, store)
    }

    pub fn with_store(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Relay> {
        let holder = instance_id(&config.store.instance_id);
        let metrics = Arc::new(Metrics::new());
        let topology = Topology::from_config(&config, store.clone())?;
        let (health_status, health_log, writer) = health(&config, &store, &topology, &holder)?;
        let declared = Arc::new(declared::of(&config)?);
        let policy = Supervisor::policy(&config);
        let refused = policy.declared_problems(&config);
        if !refused.is_empty() {
            return Err(crate::config::ConfigError { problems: refused }.into());
        }
        let (timeout, ca) = (
            config.delivery.request_timeout,
            &config.delivery.tls_ca_file,
        );
        let sender = Arc::new(WebhookClient::new(policy, timeout, ca.as_deref())?);
        let key = SourceKey::from_config(&config.source_keys).map_err(anyhow::Error::msg)?;
        let source_sync = Arc::new(SourceSync::new(store.clone(), topology.clone(), key));
        let mut relay = Relay {
            config,
            store,
            topology,
            pollers: Vec::new(),
            holder,
            sender,
            metrics,
            declared,
            health_status,
            health_log,
            health_writer: Some(writer),
            source_sync,
        };
        let scheduler = relay.scheduler();
        let tables = relay.topology.entries();
        relay.pollers = tables
            .iter()
            .filter_map(|t| scheduler.poller_of(t))
            .collect();
        Ok(relay)
    }

    pub fn shared(&self) -> Shared {
        Shared {
            store: self.store.clone(),
            topology: self.topology.clone(),
        }
    }

    /// How each table's events look to downstream systems, as the topology
    /// has them now.
    pub fn event_sources(&self) -> HashMap<Table, Arc<EventSource>> {
        let now = self.topology.snapshot();
        now.tables
            .iter()
            .map(|(t, table)| (t.clone(), table.event_source.clone()))
            .collect()
    }

    /// Polls the topology's tables (`poll.max_concurrent` at once).
    pub fn scheduler(&self) -> Scheduler {
        Scheduler {
            topology: self.topology.clone(),
            store: self.store.clone(),
            holder: self.holder.clone(),
            lease_ttl: self.config.store.lease_ttl,
            metrics: self.metrics.clone(),
            max_concurrent: self.config.poll.max_concurrent,
            health_log: Some(self.health_log.clone()),
        }
    }

    /// Webhook delivery for every subscription.
    pub fn supervisor(&self) -> Supervisor {
        Supervisor {
            store: self.store.clone(),
            sender: self.sender.clone(),
            schedule: Arc::new(Schedule::from_config(&self.config.delivery)),
            topology: self.topology.clone(),
            holder: self.holder.clone(),
            lease_ttl: self.config.store.lease_ttl,
            metrics: self.metrics.clone(),
            declared: self.declared.clone(),
            apply_first: false,
            secret_grace: self.config.delivery.secret_grace,
            consumers: Arc::new(self.consumer_book()),
        }
    }

    /// The consumers: the file's over the store's.
    fn consumer_book(&self) -> crate::consumer::Book {
        crate::consumer::Book::new(
            self.store.clone(),
            self.config.consumers.clone(),
            self.source_sync.key().cloned(),
        )
    }

    /// The HTTP layer's view of this relay; starts the live tails.
    pub fn api_state(&self, cancel: &CancellationToken) -> ApiState {
        let shared = self.shared();
        let tokens: Vec<ApiToken> = self
            .config
            .api_tokens
            .iter()
            .map(|(t, secret)| ApiToken::from_config(t, secret.expose()))
            .collect();
        if tokens.is_empty() {
            tracing::warn!("no api.tokens configured: every /v1 route answers 401");
        }
        ApiState {
            tails: Tails::new(self.store.clone(), self.topology.clone(), cancel),
            shared,
            tokens: Arc::new(api::auth::Tokens::new(
                tokens,
                self.config.api.max_failed_logins,
            )),
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
            compat: api::compat::Tables::new(self.topology.clone(), &self.config),
            catalog: self.catalog(cancel),
            source_admin: Arc::new(api::sources::SourceAdmin::new(self.source_sync.clone())),
            consumers: Arc::new(self.consumer_book()),
            read_ahead: Arc::default(),
        }
    }

    /// The event catalog, following this instance's appends.
    fn catalog(&self, cancel: &CancellationToken) -> Arc<Catalog> {
        let catalog = Arc::new(Catalog::new(
            self.store.clone(),
            self.metrics.clone(),
            self.topology.clone(),
        ));
        catalog.follow(cancel);
        catalog
    }

    /// One poll of every table, concurrently; used by `sync --once`.
    pub async fn sync_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Vec<(Table, Result<PollReport, PollError>)> {
        self.each_table(cancel, |p, c| Box::pin(p.poll_once(c)))
            .await
    }

    /// One reconcile sweep of every table, concurrently; used by
    /// `sync --reconcile`.
    pub async fn reconcile_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Vec<(Table, Result<ReconcileReport, PollError>)> {
        self.each_table(cancel, |p, c| Box::pin(p.reconcile_once(c)))
            .await
    }

    /// Runs `step` on every poller concurrently, then releases each lease,
    /// so the next relay on this store (or a serving one) goes on at once.
    async fn each_table<R>(
        &mut self,
        cancel: &CancellationToken,
        step: for<'a> fn(
            &'a mut Poller,
            &'a CancellationToken,
        ) -> BoxFuture<'a, Result<R, PollError>>,
    ) -> Vec<(Table, Result<R, PollError>)> {
        let (store, holder) = (&self.store, &self.holder);
        let runs = self.pollers.iter_mut().map(|p| async move {
            let r = step(p, cancel).await;
            let _ = store.release(&p.table, holder).await;
            (p.table.clone(), r)
        });
        futures_util::future::join_all(runs).await
    }

    /// Retention's task: trims the tables this instance polls under lease.
    fn retention(&self, cancel: CancellationToken) -> impl Future<Output = ()> + use<> {
        crate::retention::run(
            self.store.clone(),
            self.topology.clone(),
            self.config.store.retention.clone(),
            self.metrics.clone(),
            cancel,
        )
    }

    /// Runs the scheduler and the HTTP server until `cancel`, then drains them
    /// within [`SHUTDOWN_DEADLINE`].
    pub async fn run(
        mut self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let grace = self.config.delivery.secret_grace;
        let mut supervisor = self.supervisor();
        // Before the API serves, so it shows the file's subscriptions; if
        // the store does not answer yet, delivery's supervisor tries again.
        if let Err(e) = self.topology.ready_records().await {
            tracing::warn!(error = %e, "cannot ready the record stores yet; each table's first append does");
        }
        let tables = self.topology.snapshot().tables();
        let applied = declared::apply(self.store.as_ref(), &self.declared, &tables, grace);
        if let Err(e) = applied.await {
            tracing::warn!(error = %e, "cannot write the [[subscriptions]] of the configuration file yet; delivery tries again");
            supervisor.apply_first = true;
        }
        let tracker = TaskTracker::new();
        let state = self.api_state(&cancel);
        tracker.spawn(supervisor.run(cancel.clone()));
        tracker.spawn(self.retention(cancel.clone()));
        if let Some(writer) = self.health_writer.take() {
            tracker.spawn(writer.run(cancel.clone()));
        }
        // The sources made through the API, now and as they change.
        tracker.spawn(self.source_sync.clone().run(cancel.clone()));
        tracker.spawn(self.scheduler().run(self.pollers, cancel.clone()));
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

/// The `_relay/health` table in the topology, and the log the pollers send
/// their transitions to with the task that appends them.
fn health(
    config: &Config,
    store: &Arc<dyn Store>,
    topology: &Arc<Topology>,
    holder: &str,
) -> anyhow::Result<(Arc<TableStatus>, HealthLog, HealthWriter)> {
    let table = EventSource {
        table: health_table(),
        source_url: "urn:stamp-relay:health".into(),
        type_prefix: config.api.event_type_prefix.clone(),
        fields: Default::default(),
    };
    let status = topology.add_internal(table, false)?.status.clone();
    let topology = topology.clone();
    // A source's tables as the topology has them when a transition is written.
    let tables_of = Arc::new(move |source: &str| {
        let now = topology.snapshot();
        now.tables
            .keys()
            .filter(|t| t.source == source)
            .cloned()
            .collect()
    });
    let (log, writer) = HealthLog::new(
        store.clone(),
        holder,
        config.store.lease_ttl,
        tables_of,
        status.wake.clone(),
    );
    Ok((status, log, writer))
}
