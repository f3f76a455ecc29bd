//! The live tail: one reader per table fans new events out to every live
//! client (SSE), instead of one store reader per client.
//!
//! A table's tail starts when its first listener subscribes and stops once
//! the last has left, so a table nobody listens to costs no store reads.
//! While it runs it wakes on a local append notification or every `TICK`,
//! reads what is new once for all listeners, renders each event once into
//! the SSE frame every client sends (the same shared bytes), and
//! broadcasts them in stream order, several events to a message so a
//! client wakes once for what a round read. A receiver that falls more than
//! `BUFFER` events behind is told so and catches up from the store itself,
//! so a slow client never slows the tail or the other clients.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::body::Bytes;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{
    cloudevents::{EventSource, Writer},
    events::{Event, StreamId},
    store::{Store, StoreResult, Table},
    topology::Topology,
};

/// How often a tail looks for events appended by other instances.
pub const TICK: Duration = Duration::from_millis(200);
/// Events a receiver may fall behind, at most, before it must catch up from
/// the store: the channel holds `BUFFER / BATCH` batches of up to `BATCH`
/// events each (fewer events when rounds read fewer).
pub const BUFFER: usize = 4096;
/// Events one broadcast batch carries at most.
const BATCH: usize = 64;
/// Events one store read of a round asks for.
const PAGE: usize = 1000;

/// An event with its SSE frame, made once for every client.
pub struct LiveEvent {
    pub event: Event,
    /// `id: <stream id>\ndata: <CloudEvents JSON>\n\n`, a slice of its
    /// batch's frames.
    pub frame: Bytes,
}

/// Appends `e`'s SSE frame to `out`.
fn render(w: &mut Writer<'_>, out: &mut Vec<u8>, e: &Event) {
    use std::io::Write;
    let _ = write!(out, "id: {}\ndata: ", e.id);
    w.write(out, e, &e.data, None);
    out.extend_from_slice(b"\n\n");
}

/// Events in stream order with their frames rendered into one buffer:
/// what the tail broadcasts (one wake-up per client for all of them), and
/// what a client sends as one chunk when it takes every event.
pub struct LiveBatch {
    pub events: Vec<LiveEvent>,
    /// Every event's frame, in order; each event's `frame` is a slice of it.
    pub frames: Bytes,
}

impl LiveBatch {
    /// Renders `events` once into one buffer.
    pub fn new(w: &mut Writer<'_>, events: Vec<Event>) -> LiveBatch {
        let size: usize = events.iter().map(|e| e.data.len() + 480).sum();
        let mut out = Vec::with_capacity(size);
        let spans: Vec<_> = events
            .iter()
            .map(|e| {
                let at = out.len();
                render(w, &mut out, e);
                (at, out.len())
            })
            .collect();
        let frames = Bytes::from(out);
        let events = events
            .into_iter()
            .zip(spans)
            .map(|(event, (at, end))| LiveEvent {
                event,
                frame: frames.slice(at..end),
            })
            .collect();
        LiveBatch { events, frames }
    }

    /// The stream ID of the batch's last event.
    pub fn last_id(&self) -> Option<StreamId> {
        self.events.last().map(|e| e.event.id)
    }
}

type Sender = broadcast::Sender<Arc<LiveBatch>>;

/// The live tails of this instance's tables, each running only while
/// someone listens.
#[derive(Clone)]
pub struct Tails {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// The tables there are now: what each tail renders with, its append
    /// notifier, and the token that ends it when its table goes.
    topology: Arc<Topology>,
    /// The tails running now.
    running: Mutex<HashMap<Table, Sender>>,
    cancel: CancellationToken,
}

impl Tails {
    /// Tails for the topology's tables, none running yet; those started stop
    /// with `cancel`, or when their table leaves the topology.
    pub fn new(
        store: Arc<dyn Store>,
        topology: Arc<Topology>,
        cancel: &CancellationToken,
    ) -> Tails {
        Tails {
            inner: Arc::new(Inner {
                store,
                topology,
                running: Mutex::new(HashMap::new()),
                cancel: cancel.clone(),
            }),
        }
    }

    /// A receiver of `t`'s new events, starting its tail on the first
    /// listener; `None` for a table this instance does not serve. The tail
    /// broadcasts every event after the top it read before this returns,
    /// so a client that catches up from the store afterwards misses none.
    pub async fn subscribe(
        &self,
        t: &Table,
    ) -> StoreResult<Option<broadcast::Receiver<Arc<LiveBatch>>>> {
        let Some(table) = self.inner.topology.table(t) else {
            return Ok(None);
        };
        if let Some(sender) = self.running().get(t) {
            return Ok(Some(sender.subscribe()));
        }
        let top = self.inner.store.last_id(t).await?;
        let mut running = self.running();
        if let Some(sender) = running.get(t) {
            return Ok(Some(sender.subscribe()));
        }
        let (sender, rx) = broadcast::channel(BUFFER / BATCH);
        running.insert(t.clone(), sender.clone());
        let (src, wake) = (table.event_source.clone(), table.wake().clone());
        tokio::spawn(run(
            self.clone(),
            src,
            wake,
            table.gone.clone(),
            sender,
            top,
        ));
        Ok(Some(rx))
    }

    /// Live clients over every table.
    pub fn clients(&self) -> usize {
        self.running().values().map(|s| s.receiver_count()).sum()
    }

    /// Tables whose tail runs now.
    pub fn running_tails(&self) -> usize {
        self.running().len()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Table, Sender>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes `t`'s tail when nobody listens; false when someone does.
    /// Under the lock `subscribe` takes, so no one joins a stopping tail.
    fn stop_if_unheard(&self, t: &Table, sender: &Sender) -> bool {
        let mut running = self.running();
        if sender.receiver_count() > 0 {
            return false;
        }
        if running.get(t).is_some_and(|s| s.same_channel(sender)) {
            running.remove(t);
        }
        true
    }
}

async fn run(
    tails: Tails,
    src: Arc<EventSource>,
    wake: Arc<Notify>,
    gone: CancellationToken,
    sender: Sender,
    mut after: StreamId,
) {
    let store = tails.inner.store.clone();
    let cancel = tails.inner.cancel.clone();
    // Ends with the relay, when nobody listens, or when the table leaves
    // the topology (its listeners' streams end then).
    while !cancel.is_cancelled()
        && !gone.is_cancelled()
        && !tails.stop_if_unheard(&src.table, &sender)
    {
        // Listening for the append notification before the round reads,
        // so an append during the read is not waited out for a tick.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        after = round(store.as_ref(), &src, &sender, after).await;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = gone.cancelled() => break,
            _ = woken => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    if gone.is_cancelled() {
        // The table left: its listeners' streams end with this sender. A
        // tail of the same name started since (the table added again) stays.
        let mut running = tails.running();
        if running
            .get(&src.table)
            .is_some_and(|s| s.same_channel(&sender))
        {
            running.remove(&src.table);
        }
    } else {
        tails.stop_if_unheard(&src.table, &sender);
    }
}

/// One look at the store: broadcasts every event after `after`, read once
/// for all listeners, each rendered once; returns the new position. With
/// nobody listening it only notes the top (a tail stops then; a client
/// joining later catches up from the store past that top itself).
pub async fn round(
    store: &dyn Store,
    src: &EventSource,
    sender: &Sender,
    mut after: StreamId,
) -> StreamId {
    let t = &src.table;
    if sender.receiver_count() == 0 {
        return match store.last_id(t).await {
            Ok(top) => top,
            Err(e) => {
                tracing::warn!(table = %t, error = %e, "live tail cannot read the store; retrying");
                after
            }
        };
    }
    let mut w = Writer::new(src);
    loop {
        match store.read(t, after, PAGE).await {
            Ok(events) => {
                let full = events.len() == PAGE;
                let mut events = events.into_iter().peekable();
                while events.peek().is_some() {
                    let batch = LiveBatch::new(&mut w, events.by_ref().take(BATCH).collect());
                    after = batch.last_id().unwrap_or(after);
                    let _ = sender.send(Arc::new(batch));
                }
                if !full {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(table = %t, error = %e, "live tail cannot read the store; retrying");
                break;
            }
        }
    }
    after
}
