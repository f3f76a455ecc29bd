//! The live tail: one reader per stream fans new events out to every live
//! client (SSE today, delivery workers later), instead of one blocking
//! store connection per client.
//!
//! Each target's tail task reads the store only while someone listens,
//! wakes on a local append notification or every `TICK`, and broadcasts
//! events in stream order. A receiver that lags behind the channel's buffer
//! is told so and catches up from the store itself, so a slow client never
//! slows the tail or the other clients.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{
    cloudevents::EventSource,
    events::{Event, StreamId},
    store::{Store, Target},
    topology::Topology,
};

/// How often a tail looks for events appended by other instances.
pub const TICK: Duration = Duration::from_millis(200);
/// Events a receiver may fall behind before it must catch up from the store.
pub const BUFFER: usize = 4096;

/// An event with its CloudEvents JSON, made once for every client.
pub struct LiveEvent {
    pub event: Event,
    pub json: String,
}

pub struct Tail {
    pub sender: broadcast::Sender<Arc<LiveEvent>>,
    /// Poked after a local append so live clients see it at once.
    pub wake: Arc<Notify>,
}

#[derive(Clone, Default)]
pub struct Tails {
    tails: Arc<RwLock<HashMap<Target, Arc<Tail>>>>,
}

impl Tails {
    /// Keeps one tail task per table of the topology, started as tables
    /// are added and stopped as they go; all stop with `cancel`.
    pub fn start(
        store: Arc<dyn Store>,
        topology: Arc<Topology>,
        cancel: &CancellationToken,
    ) -> Tails {
        let tails = Tails::default();
        let mut changes = topology.subscribe();
        tails.follow(&store, &topology, cancel);
        let (this, cancel) = (tails.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    changed = changes.changed() => if changed.is_err() { break },
                }
                this.follow(&store, &topology, &cancel);
            }
        });
        tails
    }

    /// Starts the tails of new tables and forgets those of removed ones
    /// (their tasks end with the table's `gone` token).
    fn follow(&self, store: &Arc<dyn Store>, topology: &Topology, cancel: &CancellationToken) {
        let now = topology.snapshot();
        let mut tails = self.tails.write().unwrap_or_else(|p| p.into_inner());
        tails.retain(|t, _| now.tables.contains_key(t));
        for (t, table) in &now.tables {
            if tails.contains_key(t) {
                continue;
            }
            let (sender, _) = broadcast::channel(BUFFER);
            let tail = Arc::new(Tail {
                sender,
                wake: table.wake().clone(),
            });
            let stop = cancel.child_token();
            let gone = table.gone.clone();
            let run = run(
                store.clone(),
                table.event_source.clone(),
                tail.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                tokio::select! {
                    _ = gone.cancelled() => stop.cancel(),
                    _ = run => {}
                }
            });
            tails.insert(t.clone(), tail);
        }
    }

    pub fn subscribe(&self, t: &Target) -> Option<broadcast::Receiver<Arc<LiveEvent>>> {
        let tails = self.tails.read().unwrap_or_else(|p| p.into_inner());
        tails.get(t).map(|tail| tail.sender.subscribe())
    }

    pub fn clients(&self) -> usize {
        let tails = self.tails.read().unwrap_or_else(|p| p.into_inner());
        tails.values().map(|t| t.sender.receiver_count()).sum()
    }
}

async fn run(
    store: Arc<dyn Store>,
    src: Arc<EventSource>,
    tail: Arc<Tail>,
    cancel: CancellationToken,
) {
    let mut after = store.last_id(&src.target).await.unwrap_or(StreamId::ZERO);
    while !cancel.is_cancelled() {
        after = round(store.as_ref(), &src, &tail.sender, after).await;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tail.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One look at the store: broadcasts every event after `after` while
/// someone listens; returns the new position.
///
/// Invariant: the top of the stream is read before the listeners are
/// counted. A client that subscribes later catches up from the store past
/// that top itself; had the count come first, a client subscribing (and
/// catching up) while the top was read would miss the events appended in
/// between, as the tail would skip them unsent.
pub async fn round(
    store: &dyn Store,
    src: &EventSource,
    sender: &broadcast::Sender<Arc<LiveEvent>>,
    mut after: StreamId,
) -> StreamId {
    let t = &src.target;
    let top = match store.last_id(t).await {
        Ok(top) => top,
        Err(e) => {
            tracing::warn!(target = %t, error = %e, "live tail cannot read the store; retrying");
            return after;
        }
    };
    if sender.receiver_count() == 0 {
        return top;
    }
    while after < top {
        match store.read(t, after, 1000).await {
            Ok(events) if events.is_empty() => break,
            Ok(events) => {
                for e in events {
                    after = e.id;
                    let json = src.to_json(&e);
                    let _ = sender.send(Arc::new(LiveEvent { event: e, json }));
                }
            }
            Err(e) => {
                tracing::warn!(target = %t, error = %e, "live tail cannot read the store; retrying");
                break;
            }
        }
    }
    after
}
