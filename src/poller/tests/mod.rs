//! The fast tier of the poller's walk rules (issue 22): a [`Poller`] over
//! the in-memory store, paging through a model upstream (`model.rs`) on
//! tokio's paused clock. Everything but the upstream's HTTP client is
//! production code: the `pages` walks and their settle, the `keyset` cap
//! and shared stamps, the overlap window, classification against the
//! record index and the atomic appends. A test changes the model between
//! polls, or during one through the model's rule, and reads the stream;
//! `tests/it/sync` runs the same rules end to end, over the simulator.

use std::{collections::HashSet, sync::Arc, time::Duration};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{PollError, PollReport, PollSettings, Poller};
use crate::{
    config::{Paging, SourceConfig},
    events::{Event, StreamId},
    store::{Store, Table, sqlite::SqliteStore},
};

mod failures;
mod model;
mod order;
mod walks;

use model::{Model, Order};

/// Records per page, in the model and the poller's settings.
const PAGE_SIZE: usize = 4;

/// One table of an in-memory store, its poller, and the model upstream the
/// poller pages through.
struct Rig {
    store: Arc<dyn Store>,
    table: Table,
    model: Arc<Model>,
    settings: PollSettings,
    poller: Poller,
}

impl Rig {
    /// A rig polling with `paging` (and `overlap`) a model in `order`.
    fn new(paging: Paging, order: Order, overlap: u64) -> Rig {
        let paging = match paging {
            Paging::Keyset => "keyset",
            Paging::Pages => "pages",
        };
        // The source's defaults, but the sweep after a load: the walk rules
        // alone are under test.
        let source: SourceConfig = serde_json::from_value(json!({
            "name": "sim", "base_url": "https://upstream.example/api/",
            "resources": ["patients"], "page_size": PAGE_SIZE, "paging": paging,
            "overlap": overlap, "reconcile_after_load": false, "poll_interval": "30s"
        }))
        .unwrap();
        let settings = PollSettings::new(&source, Duration::from_secs(30));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let table = Table::new("sim", "patients");
        let model = Arc::new(Model::new(order, PAGE_SIZE));
        let poller = Self::poller_of(&store, &table, &model, &settings);
        Rig {
            store,
            table,
            model,
            settings,
            poller,
        }
    }

    fn poller_of(
        store: &Arc<dyn Store>,
        table: &Table,
        model: &Arc<Model>,
        settings: &PollSettings,
    ) -> Poller {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (store, model) = (store.clone(), model.clone());
        Poller::new(
            table.clone(),
            store,
            model,
            "relay-1",
            settings.clone(),
            metrics,
        )
    }

    /// A new poller in place of the rig's, as after a restart: it knows
    /// nothing but what the store holds.
    fn restart(&mut self) {
        self.poller = Self::poller_of(&self.store, &self.table, &self.model, &self.settings);
    }

    /// One poll.
    async fn poll(&mut self) -> Result<PollReport, PollError> {
        self.poller.poll_once(&CancellationToken::new()).await
    }

    /// One poll that succeeds.
    async fn polled(&mut self) -> PollReport {
        let report = self.poll().await;
        report.unwrap_or_else(|e| panic!("the poll failed: {e}"))
    }

    /// Every event of the stream, checked: no version twice, and stamps
    /// ascending but for late events (`<top>-<seq>`, below the top).
    async fn stream(&self) -> Vec<Event> {
        let events = self.store.read(&self.table, StreamId::ZERO, 10_000);
        let events = events.await.unwrap();
        let mut seen = HashSet::new();
        let mut top = 0;
        for e in &events {
            let version = format!("{}@{}", e.record, e.stamp);
            assert!(
                seen.insert(version.clone()),
                "{version} twice in the stream"
            );
            if e.id.stamp == e.stamp {
                assert!(e.stamp >= top, "{version} after stamp {top}");
                top = e.stamp;
            }
        }
        events
    }

    /// `record@stamp` of every event of the stream, in stream order.
    async fn versions(&self) -> Vec<String> {
        let events = self.stream().await;
        events
            .iter()
            .map(|e| format!("{}@{}", e.record, e.stamp))
            .collect()
    }

    /// The stamp of the stream's last entry: the cursor of the next poll.
    async fn cursor(&self) -> u64 {
        self.store.last_id(&self.table).await.unwrap().stamp
    }
}

/// `ids` (`"a b c"`) with the stamps 1, 2, 3, ... as versions.
fn numbered(ids: &str) -> Vec<String> {
    let ids = ids.split_whitespace().enumerate();
    ids.map(|(i, id)| format!("{id}@{}", i + 1)).collect()
}
