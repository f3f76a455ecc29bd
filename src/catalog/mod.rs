//! The event catalog behind `GET /v1/event-types` (docs/tracing.md): every
//! event type of every table with a JSON Schema, the CloudEvent envelope
//! around the record's schema. A record schema is declared in the
//! configuration (`[sources] schemas`), or inferred from the records in
//! the stream: read once at the first ask, then only the events appended
//! since, at each append this instance makes and at each ask.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    cloudevents::EventSource,
    events::StreamId,
    metrics::{Metrics, table_labels},
    store::{Store, StoreResult, Table},
    topology::Topology,
};

mod infer;
pub use infer::Inferred;

/// The ops of every table, in the order the catalog lists them.
const OPS: [&str; 4] = ["created", "updated", "deleted", "restored"];
/// Events read from the stream per call while inferring.
const PAGE: usize = 1000;

pub struct Catalog {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    topology: Arc<Topology>,
    /// What inference has seen, per table of the topology it was asked of.
    tables: std::sync::Mutex<BTreeMap<Table, Arc<Inference>>>,
}

struct Inference {
    source: Arc<EventSource>,
    declared: Option<Value>,
    inferred: Mutex<Progress>,
}

/// What inference has seen of one table: every event up to `through`.
#[derive(Default)]
struct Progress {
    seeded: bool,
    through: StreamId,
    schema: Inferred,
}

impl Catalog {
    /// The catalog of the topology's tables; a table's record schema is
    /// its source's declared one (`schemas`), or inferred.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, topology: Arc<Topology>) -> Catalog {
        Catalog {
            store,
            metrics,
            topology,
            tables: Default::default(),
        }
    }

    /// The catalog's tables now: one per table of a source in the
    /// topology, in order. The relay's own `_relay/health` has event types
    /// of its own (docs/events.md), not `<resource>.<op>`.
    fn tables(&self) -> Vec<Arc<Inference>> {
        let now = self.topology.snapshot();
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables.retain(|t, _| now.tables.contains_key(t));
        now.tables
            .iter()
            .filter(|(_, table)| table.source.is_some())
            .map(|(t, table)| {
                let entry = tables.entry(t.clone()).or_insert_with(|| {
                    let declared = table.source.as_ref().and_then(|s| {
                        // Checked when the configuration loaded.
                        s.config.settings.schemas.get(&t.resource)?.load().ok()
                    });
                    Arc::new(Inference {
                        source: table.event_source.clone(),
                        declared,
                        inferred: Mutex::default(),
                    })
                });
                entry.clone()
            })
            .collect()
    }

    /// Folds in each table's appends as they land, once inference of it
    /// has begun: one task per table of the topology, started as tables
    /// are added and ended as they go.
    pub fn follow(self: &Arc<Self>, cancel: &CancellationToken) {
        let (catalog, cancel) = (self.clone(), cancel.clone());
        let mut changes = self.topology.subscribe();
        tokio::spawn(async move {
            let mut following = std::collections::HashSet::new();
            loop {
                let now = catalog.topology.snapshot();
                following.retain(|t| now.tables.contains_key(t));
                for (t, table) in &now.tables {
                    if following.insert(t.clone()) {
                        let stop = table.gone.clone();
                        let wake = table.wake().clone();
                        tokio::spawn(catalog.clone().follow_table(
                            t.clone(),
                            wake,
                            stop,
                            cancel.clone(),
                        ));
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    changed = changes.changed() => if changed.is_err() { break },
                }
            }
        });
    }

    async fn follow_table(
        self: Arc<Self>,
        t: Table,
        wake: Arc<Notify>,
        gone: CancellationToken,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = gone.cancelled() => break,
                _ = wake.notified() => {}
            }
            let table = self
                .tables
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&t)
                .cloned();
            if let Some(table) = table {
                let mut p = table.inferred.lock().await;
                if p.seeded
                    && let Err(e) = self.catch_up(&table, &mut p).await
                {
                    tracing::debug!(table = %t, error = %e, "event catalog: catching up later");
                }
            }
        }
    }

    /// Every event type of every table, each with its JSON Schema.
    pub async fn event_types(&self) -> StoreResult<Vec<Value>> {
        let mut out = Vec::new();
        for table in self.tables() {
            let (record, origin) = match &table.declared {
                Some(s) => (s.clone(), "declared"),
                None => {
                    let mut p = table.inferred.lock().await;
                    self.catch_up(&table, &mut p).await?;
                    p.seeded = true;
                    (p.schema.schema(), "inferred")
                }
            };
            let t = &table.source.table;
            for op in OPS {
                let ty = format!("{}.{}.{op}", table.source.type_prefix, t.resource);
                out.push(json!({
                    "type": ty,
                    "source": t.source,
                    "resource": t.resource,
                    "op": op,
                    "record_schema": origin,
                    "schema": envelope(&ty, &record),
                }));
            }
        }
        Ok(out)
    }

    /// Reads the events appended after what `p` has seen.
    async fn catch_up(&self, table: &Inference, p: &mut Progress) -> StoreResult<()> {
        let t = &table.source.table;
        loop {
            let events = self.store.read(t, p.through, PAGE).await?;
            let Some(last) = events.last() else {
                return Ok(());
            };
            p.through = last.id;
            for e in &events {
                let Ok(record) = serde_json::from_str::<Value>(&e.data) else {
                    continue;
                };
                let new = p.schema.observe(&record);
                if p.seeded {
                    for field in new {
                        tracing::info!(table = %t, %field, event = %e.id,
                            "the upstream sent a field this table's records did not have before");
                        self.metrics
                            .schema_new_fields
                            .get_or_create(&table_labels(t))
                            .inc();
                    }
                }
            }
        }
    }
}

/// The CloudEvent envelope of one event type around its record's schema.
fn envelope(ty: &str, record: &Value) -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": ty,
        "type": "object",
        "required": ["specversion", "id", "source", "type", "subject", "time",
                     "updatestamp", "snapshot", "streamid", "traceparent"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"const": ty},
            "subject": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "updatestamp": {"type": "integer", "minimum": 1},
            "snapshot": {"type": "boolean"},
            "streamid": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
            "traceparent": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-01$"},
            "data": record,
        },
    })
}
