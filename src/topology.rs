//! The Topology: the one run-time registry of sources and tables that every
//! part of the relay reads (the scheduler, the API, delivery, live tails,
//! the compatible API, retention). Adding or removing a source is one
//! change here; readers take a cheap [`Snapshot`] and follow changes
//! through [`Topology::subscribe`], a version that moves on every change.
//!
//! A table keeps its [`TableStatus`] (with its append wake) for as long as
//! it is in the topology, so a source paused and resumed keeps its
//! counters; a table removed is dropped here, its `gone` token cancelled so
//! what served it stops, while its stream stays in the store.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    cloudevents::EventSource,
    config::{self, Config, PollConfig, join},
    poller::TableStatus,
    store::{Store, Table},
    upstream::{Upstream, budget::Budgets},
};

/// Who manages a source: the configuration file or the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Api,
}

/// Tables whose record stores [`Topology::ready_records`] readies at once.
const READY_AT_ONCE: usize = 32;

/// One upstream environment and its client.
pub struct Source {
    pub config: Arc<config::Source>,
    pub upstream: Arc<Upstream>,
    /// A paused source is not polled; its tables stay readable.
    pub paused: bool,
    pub origin: Origin,
}

impl Source {
    pub fn name(&self) -> &str {
        self.config.name()
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name())
            .field("paused", &self.paused)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// One table: a resource of a source, or an internal table the relay
/// appends to itself (no source, never polled).
#[derive(Debug)]
pub struct TableEntry {
    pub table: Table,
    /// None for an internal table.
    pub source: Option<Arc<Source>>,
    pub status: Arc<TableStatus>,
    /// How the table's events look downstream.
    pub event_source: Arc<EventSource>,
    /// Keeps each record's latest version (record lookups, `/compat`).
    pub keep_records: bool,
    /// Cancelled when the table leaves the topology.
    pub gone: CancellationToken,
}

impl TableEntry {
    /// Whether the scheduler polls this table: it has a source, not paused.
    pub fn polled(&self) -> bool {
        self.source.as_ref().is_some_and(|s| !s.paused)
    }

    /// The wake poked after every append to this table.
    pub fn wake(&self) -> &Arc<Notify> {
        &self.status.wake
    }
}

/// What exists at one version of the topology.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub sources: BTreeMap<String, Arc<Source>>,
    pub tables: BTreeMap<Table, Arc<TableEntry>>,
}

impl Snapshot {
    /// Every table's key, in order.
    pub fn tables(&self) -> Vec<Table> {
        self.tables.keys().cloned().collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("a source named {0:?} exists already")]
    Exists(String),
    #[error("no source is named {0:?}")]
    NotFound(String),
    #[error("a table {0} exists already")]
    TableExists(Table),
    #[error("cannot make the upstream client of source {0:?}: {1}")]
    Client(String, String),
}

pub struct Topology {
    store: Arc<dyn Store>,
    /// The request budgets the sources' clients share (`[poll]`).
    budgets: Budgets,
    /// `api.event_type_prefix`, for the event sources of added tables.
    type_prefix: String,
    current: RwLock<Arc<Snapshot>>,
    /// Serialises writers, so each change builds on the last.
    writing: Mutex<()>,
    version: watch::Sender<u64>,
    /// Sources asked to be polled now (`nudge`), taken by the scheduler.
    nudged: Mutex<Vec<String>>,
    nudge: Notify,
}

impl Topology {
    /// An empty topology; `poll` sets the upstream budgets.
    pub fn new(
        store: Arc<dyn Store>,
        type_prefix: impl Into<String>,
        poll: &PollConfig,
    ) -> Topology {
        Topology {
            store,
            budgets: Budgets::new(poll),
            type_prefix: type_prefix.into(),
            current: RwLock::default(),
            writing: Mutex::default(),
            version: watch::channel(0).0,
            nudged: Mutex::default(),
            nudge: Notify::new(),
        }
    }

    /// The sources of the configuration file.
    pub fn from_config(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Arc<Topology>> {
        let topology = Topology::new(store, &config.api.event_type_prefix, &config.poll);
        for source in &config.sources {
            topology.add_source(source.clone(), Origin::Config)?;
        }
        Ok(Arc::new(topology))
    }

    /// Opens every table's record store for its setting
    /// (`RecordStore::ready_records`): the relay runs it before it serves,
    /// and the source sync after it added sources, so no read finds a
    /// table not yet filled. A table already ready costs nothing; new
    /// ones are readied [`READY_AT_ONCE`] at a time (a few round trips
    /// each), so thousands of tables do not wait for each other in turn.
    pub async fn ready_records(&self) -> crate::store::StoreResult<()> {
        use futures_util::{StreamExt, TryStreamExt};
        let store = &self.store;
        futures_util::stream::iter(self.snapshot().tables())
            .map(Ok)
            .try_for_each_concurrent(
                READY_AT_ONCE,
                |t| async move { store.ready_records(&t).await },
            )
            .await
    }

    /// What exists now; cheap (one `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The version now and every change after it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn source(&self, name: &str) -> Option<Arc<Source>> {
        self.snapshot().sources.get(name).cloned()
    }

    pub fn sources(&self) -> Vec<Arc<Source>> {
        self.snapshot().sources.values().cloned().collect()
    }

    /// Every table's entry, in order.
    pub fn entries(&self) -> Vec<Arc<TableEntry>> {
        self.snapshot().tables.values().cloned().collect()
    }

    pub fn table(&self, t: &Table) -> Option<Arc<TableEntry>> {
        self.snapshot().tables.get(t).cloned()
    }

    /// Adds a validated source and its tables, polled from the next look
    /// of the scheduler.
    pub fn add_source(
        &self,
        source: config::Source,
        origin: Origin,
    ) -> Result<Arc<Source>, TopologyError> {
        self.add_source_paused(source, origin, false)
    }

    /// Adds a source already paused (or not) in one change, so a source
    /// stored paused is never polled on its way in.
    pub fn add_source_paused(
        &self,
        source: config::Source,
        origin: Origin,
        paused: bool,
    ) -> Result<Arc<Source>, TopologyError> {
        let name = source.name().to_string();
        let upstream = Upstream::with_budget(source.clone(), self.budgets.of(&source))
            .map_err(|e| TopologyError::Client(name.clone(), format!("{e:#}")))?;
        let entry = Arc::new(Source {
            config: Arc::new(source),
            upstream: Arc::new(upstream),
            paused,
            origin,
        });
        self.change(|s| {
            if s.sources.contains_key(&name) {
                return Err(TopologyError::Exists(name.clone()));
            }
            if let Some(t) = entry
                .config
                .settings
                .resources
                .iter()
                .map(|r| Table::new(&name, r))
                .find(|t| s.tables.contains_key(t))
            {
                return Err(TopologyError::TableExists(t));
            }
            for r in &entry.config.settings.resources {
                let table = self.new_table(&entry, r);
                s.tables.insert(table.table.clone(), Arc::new(table));
            }
            s.sources.insert(name.clone(), entry.clone());
            Ok(())
        })?;
        Ok(entry)
    }

    fn new_table(&self, source: &Arc<Source>, resource: &str) -> TableEntry {
        let settings = &source.config.settings;
        let table = Table::new(source.name(), resource);
        self.store.keep_records(&table, settings.keep_records);
        TableEntry {
            event_source: Arc::new(EventSource {
                table: table.clone(),
                source_url: join(&source.config.base_url, resource).to_string(),
                type_prefix: self.type_prefix.clone(),
                fields: settings.fields.clone(),
            }),
            table,
            source: Some(source.clone()),
            status: Arc::default(),
            keep_records: settings.keep_records,
            gone: CancellationToken::new(),
        }
    }

    /// Adds a table the relay appends to itself (never polled), such as
    /// its own health events; readable like any other.
    pub fn add_internal(
        &self,
        event_source: EventSource,
        keep_records: bool,
    ) -> Result<Arc<TableEntry>, TopologyError> {
        let table = event_source.table.clone();
        self.store.keep_records(&table, keep_records);
        let entry = Arc::new(TableEntry {
            table: table.clone(),
            source: None,
            status: Arc::default(),
            event_source: Arc::new(event_source),
            keep_records,
            gone: CancellationToken::new(),
        });
        self.change(|s| {
            if s.tables.contains_key(&table) {
                return Err(TopologyError::TableExists(table.clone()));
            }
            s.tables.insert(table.clone(), entry.clone());
            Ok(())
        })?;
        Ok(entry)
    }

    /// Removes a source: its tables stop polling and whatever serves them
    /// stops; their streams stay in the store.
    pub fn remove_source(&self, name: &str) -> Result<Arc<Source>, TopologyError> {
        let mut removed = None;
        self.change(|s| {
            let source = s
                .sources
                .remove(name)
                .ok_or_else(|| TopologyError::NotFound(name.into()))?;
            s.tables.retain(|t, table| {
                let keep = t.source != name;
                if !keep {
                    table.gone.cancel();
                }
                keep
            });
            removed = Some(source);
            Ok(())
        })?;
        Ok(removed.expect("set by the change"))
    }

    /// Pauses or resumes a source; a no-op when it is so already.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<Arc<Source>, TopologyError> {
        let mut out = None;
        self.change(|s| {
            let old = s
                .sources
                .get(name)
                .ok_or_else(|| TopologyError::NotFound(name.into()))?;
            let source = Arc::new(Source {
                config: old.config.clone(),
                upstream: old.upstream.clone(),
                paused,
                origin: old.origin,
            });
            for table in s.tables.values_mut().filter(|t| t.table.source == name) {
                *table = Arc::new(TableEntry {
                    table: table.table.clone(),
                    source: Some(source.clone()),
                    status: table.status.clone(),
                    event_source: table.event_source.clone(),
                    keep_records: table.keep_records,
                    gone: table.gone.clone(),
                });
            }
            s.sources.insert(name.into(), source.clone());
            out = Some(source);
            Ok(())
        })?;
        Ok(out.expect("set by the change"))
    }

    /// Asks the scheduler to poll the tables of source `name` now instead
    /// of at their due time. The poll walks the delta as usual.
    pub fn nudge(&self, name: &str) -> Result<(), TopologyError> {
        if !self.snapshot().sources.contains_key(name) {
            return Err(TopologyError::NotFound(name.into()));
        }
        self.nudged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.into());
        self.nudge.notify_one();
        Ok(())
    }

    /// The sources nudged since the last call (the scheduler's).
    pub fn take_nudges(&self) -> Vec<String> {
        std::mem::take(&mut *self.nudged.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Completes at the next nudge (or at once if one is waiting).
    pub async fn nudged(&self) {
        self.nudge.notified().await
    }

    /// Applies `edit` to a copy of the current snapshot and publishes it
    /// under the next version; nothing changes when `edit` fails.
    fn change(
        &self,
        edit: impl FnOnce(&mut Snapshot) -> Result<(), TopologyError>,
    ) -> Result<(), TopologyError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.snapshot();
        let mut next = Snapshot {
            version: now.version + 1,
            sources: now.sources.clone(),
            tables: now.tables.clone(),
        };
        edit(&mut next)?;
        let version = next.version;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.version.send_replace(version);
        Ok(())
    }
}
