//! Keeps this instance's topology equal to the API-made sources in the
//! store. A change made through this instance's API is applied at once
//! ([`SourceSync::apply_one`]); every instance also reads the kind's
//! write counter once a second and, when it moved, applies every stored
//! source ([`SourceSync::apply_all`]), so a change made on another
//! instance is seen within about a second. Nudges travel the same way
//! (documents of kind [`NUDGES`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{KIND, SourceKey, StoredSource};
use crate::{
    store::{Document, Store, StoreResult},
    topology::{Origin, Topology},
};

/// The document kind of nudges: one per source, rewritten by each nudge.
pub const NUDGES: &str = "nudges";

/// How often every instance reads the two write counters.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What this instance applied: the document version of each API-made
/// source, and the last nudge seen per source.
#[derive(Default)]
struct Seen {
    sources: HashMap<String, u64>,
    nudges: HashMap<String, u64>,
    counters: Option<(u64, u64)>,
}

/// Applies stored sources to the topology; shared by the API and the loop.
pub struct SourceSync {
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    key: Option<SourceKey>,
    seen: Mutex<Seen>,
}

impl SourceSync {
    pub fn new(store: Arc<dyn Store>, topology: Arc<Topology>, key: Option<SourceKey>) -> Self {
        SourceSync {
            store,
            topology,
            key,
            seen: Mutex::default(),
        }
    }

    pub fn key(&self) -> Option<&SourceKey> {
        self.key.as_ref()
    }

    /// Applies the stored document of source `name` (or its absence).
    pub async fn apply_one(&self, name: &str) -> StoreResult<()> {
        let doc = self.store.document(KIND, name).await?;
        let mut seen = self.seen.lock().await;
        self.apply(&mut seen, name, doc.as_ref());
        self.topology.ready_records().await
    }

    /// Applies every stored source, and removes API-made sources that are
    /// no longer stored.
    pub async fn apply_all(&self) -> StoreResult<()> {
        let docs = self.store.documents(KIND).await?;
        let mut seen = self.seen.lock().await;
        let stored: HashMap<&str, &Document> = docs.iter().map(|d| (d.name.as_str(), d)).collect();
        for d in &docs {
            self.apply(&mut seen, &d.name, Some(d));
        }
        for s in self.topology.sources() {
            if s.origin == Origin::Api && !stored.contains_key(s.name()) {
                self.apply(&mut seen, s.name(), None);
            }
        }
        self.topology.ready_records().await
    }

    fn apply(&self, seen: &mut Seen, name: &str, doc: Option<&Document>) {
        let running = self.topology.source(name);
        if running.as_ref().is_some_and(|s| s.origin == Origin::Config) {
            if doc.is_some() {
                tracing::warn!(source = %name, "a stored API-made source has the name of a source of the configuration file; the file's is polled");
            }
            return;
        }
        let Some(doc) = doc else {
            if running.is_some() && self.topology.remove_source(name).is_ok() {
                tracing::info!(source = %name, "source removed; its streams stay until retention or a purge");
            }
            seen.sources.remove(name);
            return;
        };
        if running.is_some() && seen.sources.get(name) == Some(&doc.version) {
            return;
        }
        seen.sources.insert(name.to_string(), doc.version);
        let stored: StoredSource = match serde_json::from_str(&doc.json) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(source = %name, line = e.line(), "a stored source document does not decode; it is not polled until it is fixed or deleted (DELETE /v1/sources/{name})");
                let _ = self.topology.remove_source(name);
                return;
            }
        };
        self.replace(name, &stored, running.is_some());
    }

    /// Puts `stored` in the topology in place of what runs under `name`:
    /// a pause alone only pauses; other changes re-add the source.
    fn replace(&self, name: &str, stored: &StoredSource, running: bool) {
        let source = match stored.to_source(self.key.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(source = %name, error = %e, "a stored source cannot be polled");
                let _ = self.topology.remove_source(name);
                return;
            }
        };
        let same = self.topology.source(name).is_some_and(|s| {
            serde_json::to_value(&s.config.settings).ok()
                == serde_json::to_value(&source.settings).ok()
                && same_auth(&s.config.auth, &source.auth)
        });
        if running && !same {
            let _ = self.topology.remove_source(name);
        }
        if running && same {
            let _ = self.topology.set_paused(name, stored.paused);
            return;
        }
        if let Err(e) = self
            .topology
            .add_source_paused(source, Origin::Api, stored.paused)
        {
            tracing::error!(source = %name, error = %e, "a stored source cannot be added");
            return;
        }
        tracing::info!(source = %name, paused = stored.paused, "source added");
    }

    /// Nudges the sources another instance was asked to nudge since the
    /// last look (the first look only notes where they stand).
    async fn apply_nudges(&self, first: bool) -> StoreResult<()> {
        let docs = self.store.documents(NUDGES).await?;
        let mut seen = self.seen.lock().await;
        for d in docs {
            let before = seen.nudges.insert(d.name.clone(), d.version);
            if !first && before != Some(d.version) {
                let _ = self.topology.nudge(&d.name);
            }
        }
        Ok(())
    }

    /// One look at the counters; applies what moved.
    pub async fn step(&self) -> StoreResult<()> {
        let now = (
            self.store.documents_version(KIND).await?,
            self.store.documents_version(NUDGES).await?,
        );
        let before = self.seen.lock().await.counters;
        if before.map(|b| b.0) != Some(now.0) {
            self.apply_all().await?;
        }
        if before.map(|b| b.1) != Some(now.1) {
            self.apply_nudges(before.is_none()).await?;
        }
        self.seen.lock().await.counters = Some(now);
        Ok(())
    }

    /// Looks every [`SYNC_EVERY`] until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut failing = false;
        loop {
            match self.step().await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the sources made through the API; trying again every second");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SYNC_EVERY) => {}
            }
        }
    }
}

/// Whether two resolved credentials are the same (a rotated secret
/// re-adds the source, so its client logs in again).
fn same_auth(a: &crate::config::Auth, b: &crate::config::Auth) -> bool {
    use crate::config::Auth::*;
    match (a, b) {
        (None, None) => true,
        (Bearer { token: x }, Bearer { token: y }) => x == y,
        (
            Basic {
                username: u1,
                password: p1,
            },
            Basic {
                username: u2,
                password: p2,
            },
        ) => u1 == u2 && p1 == p2,
        (
            OAuth {
                client_id: i1,
                client_secret: s1,
                token_url: t1,
            },
            OAuth {
                client_id: i2,
                client_secret: s2,
                token_url: t2,
            },
        ) => i1 == i2 && s1 == s2 && t1 == t2,
        _ => false,
    }
}
