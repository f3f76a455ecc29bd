//! The relay as production runs it: the store, one upstream client per
//! source, one poller per target, and the HTTP server, started together and
//! stopped by one cancellation token. Tests start exactly this.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    api,
    config::Config,
    poller::{PollError, PollReport, Poller, TargetStatus},
    store::{self, Store, Target},
    upstream::Upstream,
};

/// How long shutdown waits for pollers to finish their current chunk.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

pub struct Relay {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub pollers: Vec<Poller>,
    pub holder: String,
}

/// What the HTTP layer and status surfaces can see.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub targets: Arc<Vec<(Target, Arc<TargetStatus>)>>,
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
        let mut pollers = Vec::new();
        for source in &config.sources {
            let upstream = Arc::new(Upstream::new(source.clone())?);
            for resource in &source.settings.resources {
                let target = Target::new(source.name(), resource);
                pollers.push(Poller::new(
                    target,
                    store.clone(),
                    upstream.clone(),
                    &holder,
                    config.store.lease_ttl,
                ));
            }
        }
        Ok(Relay {
            config,
            store,
            pollers,
            holder,
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

    /// One poll of every target, concurrently; used by `sync --once`.
    pub async fn sync_once(
        &mut self,
        cancel: &CancellationToken,
    ) -> Vec<(Target, Result<PollReport, PollError>)> {
        let polls = self.pollers.iter_mut().map(|p| async {
            let r = p.poll_once(cancel).await;
            let _ = self.store.release(&p.target, &self.holder).await;
            (p.target.clone(), r)
        });
        futures_util::future::join_all(polls).await
    }

    /// Runs pollers and the HTTP server until `cancel`, then drains them
    /// within [`SHUTDOWN_DEADLINE`].
    pub async fn run(self, listener: TcpListener, cancel: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let shared = self.shared();
        for poller in self.pollers {
            tracker.spawn(poller.run(cancel.clone()));
        }
        let server = tracker.spawn(api::serve(listener, shared, cancel.clone()));
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
