//! The live stream of one table's events (SSE on
//! `GET /v1/resources/{source}/{resource}/events` with
//! `Accept: text/event-stream`): the store's backlog after the cursor
//! first, then the shared tail; a lagging client catches up from the store
//! again, so no client slows another and none misses an event.

use std::{collections::VecDeque, convert::Infallible, pin::Pin, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::header,
    response::{IntoResponse, Response},
};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{
    ApiState,
    positions::read_checked,
    principal::Credential,
    problem::{ApiResult, Problem},
};
use crate::{
    cloudevents::{EventSource, Writer},
    config::LIVE_KEEP_ALIVE,
    events::StreamId,
    filter::Selection,
    store::Table,
    tail::LiveBatch,
};

/// What a live stream's client asked for.
pub(super) struct Reading {
    /// `filter` and `fields`.
    pub sel: Selection,
    /// Events carry previous values (src/previous.rs).
    pub previous: bool,
    /// A stream from 0 may start at the oldest event kept (positions.rs).
    pub oldest_kept: bool,
    /// When the caller's access ends (unix s, a portal link's expiry): the
    /// stream ends then.
    pub until: Option<u64>,
    /// The credential to check again every [`ACCESS_RECHECK`] (none for an
    /// admin token): the stream ends once it no longer sees the table.
    pub recheck: Option<Credential>,
}

/// How often a live stream checks that its caller still sees its table:
/// a revoked token or portal link, a deleted consumer or an allow-list
/// that no longer allows the table ends the stream within this.
pub const ACCESS_RECHECK: Duration = Duration::from_secs(1);

/// How often a live stream checks its access in full even though no
/// consumer changed (a source removed, a table gone).
const ACCESS_FULL_RECHECK: Duration = Duration::from_secs(30);

/// The state of one live stream between items.
struct Live {
    s: ApiState,
    t: Table,
    src: Arc<EventSource>,
    cursor: StreamId,
    read: Reading,
    rx: broadcast::Receiver<Arc<LiveBatch>>,
    pending: VecDeque<Arc<LiveBatch>>,
    catching_up: bool,
    done: bool,
    waits: Waits,
    /// One of `api.max_sse_clients`, given back when the stream ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Sends what is after the cursor from the store, then follows the shared
/// tail; after a lag it catches up from the store again, so a client sees
/// every event once, in order, however slow it is.
pub(super) async fn live(
    s: ApiState,
    t: Table,
    src: Arc<EventSource>,
    after: Option<StreamId>,
    read: Reading,
) -> ApiResult<Response> {
    let slot = s.live_slots.clone().try_acquire_owned().map_err(|_| {
        Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "api.max_sse_clients live streams are open; try again later or page with limit",
        )
    })?;
    let rx = s
        .tails
        .subscribe(&t)
        .await?
        .ok_or_else(|| Problem::not_found(format!("{t} has no live tail")))?;
    let cursor = match after {
        Some(c) => c,
        None => s.shared.store.last_id(&t).await?,
    };
    let expires = read.until.map(|at| {
        let left = at.saturating_sub(crate::events::now_ms() / 1000);
        tokio::time::Instant::now() + Duration::from_secs(left)
    });
    let lost = read
        .recheck
        .clone()
        .map(|c| access_lost(s.clone(), c, t.clone()));
    let state = Live {
        waits: Waits::new(&s.cancel),
        s,
        t,
        src,
        cursor,
        read,
        rx,
        pending: VecDeque::new(),
        catching_up: true,
        done: false,
        _slot: slot,
    };
    let ends = async move {
        let expired = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let lost = async move {
            match lost {
                Some(lost) => lost.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expired => {}
            _ = lost => {}
        }
    };
    let body = Body::from_stream(live_stream(state).take_until(ends));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// Ends once `credential` no longer sees `t`: refused (revoked, expired,
/// its consumer deleted) or no longer allowed. A store that does not
/// answer ends nothing; the next check asks again.
async fn access_lost(s: ApiState, credential: Credential, t: Table) {
    // The consumers' version when access was last confirmed: while it
    // stands, nothing that could end access changed, and the full check
    // runs only every ACCESS_FULL_RECHECK (it also covers the topology).
    let mut confirmed: Option<(u64, tokio::time::Instant)> = None;
    loop {
        tokio::time::sleep(ACCESS_RECHECK).await;
        let version = s.consumers.version().await.ok();
        if let (Some(v), Some((seen, at))) = (version, confirmed)
            && v == seen
            && at.elapsed() < ACCESS_FULL_RECHECK
        {
            continue;
        }
        match super::auth::resolve(&s, &credential.0).await {
            Ok(who) if who.sees(&t) => {
                confirmed = version.map(|v| (v, tokio::time::Instant::now()));
            }
            Ok(_) => return,
            Err(p) if p.status == axum::http::StatusCode::UNAUTHORIZED => return,
            Err(_) => {}
        }
    }
}

/// The SSE comment sent after `LIVE_KEEP_ALIVE` without an event.
const KEEP_ALIVE: &[u8] = b":\n\n";
/// Frames past which a chunk takes no further batch (a batch, a tail's
/// or a catch-up page, goes whole into one chunk).
const CHUNK: usize = 256;

/// The stream's body: the frames the tail rendered, shared by every client
/// that takes every event, several to a chunk when they are ready at once.
fn live_stream(state: Live) -> impl Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(chunk) = st.next_chunk() {
                st.waits.sent();
                return Some((Ok(chunk), st));
            }
            if st.catching_up {
                if let Some(ev) = st.catch_up().await {
                    st.waits.sent();
                    return Some((Ok(ev), st));
                }
                continue;
            }
            tokio::select! {
                _ = st.waits.stop.as_mut() => return None,
                _ = st.waits.quiet.as_mut() => {
                    if st.waits.quiet_until() {
                        return Some((Ok(Bytes::from_static(KEEP_ALIVE)), st));
                    }
                }
                r = st.rx.recv() => st.received(r).await,
            }
        }
    })
}

/// What a live stream waits on besides its tail, made once per stream
/// rather than at every wait: the relay's end, and the keep-alive timer,
/// moved on only when it fires after a chunk went out since it was set.
struct Waits {
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    quiet: Pin<Box<tokio::time::Sleep>>,
    /// When the last chunk went out.
    sent: tokio::time::Instant,
}

impl Waits {
    fn new(cancel: &tokio_util::sync::CancellationToken) -> Waits {
        let now = tokio::time::Instant::now();
        Waits {
            stop: Box::pin(cancel.clone().cancelled_owned()),
            quiet: Box::pin(tokio::time::sleep_until(now + LIVE_KEEP_ALIVE)),
            sent: now,
        }
    }

    /// A chunk went out now.
    fn sent(&mut self) {
        self.sent = tokio::time::Instant::now();
    }

    /// The keep-alive timer fired: whether the stream has been quiet for
    /// `LIVE_KEEP_ALIVE` (a keep-alive goes out and the timer starts
    /// again), else the timer is set for that long after the last chunk.
    fn quiet_until(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let due = self.sent + LIVE_KEEP_ALIVE;
        if due > now {
            self.quiet.as_mut().reset(due);
            return false;
        }
        self.sent = now;
        self.quiet.as_mut().reset(now + LIVE_KEEP_ALIVE);
        true
    }
}

impl Live {
    /// Takes a tail batch and those ready behind it into `pending`; after
    /// a lag, catches up from the store instead.
    async fn received(&mut self, first: Result<Arc<LiveBatch>, RecvError>) {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(r) = next.take() {
            match r {
                Ok(b) => {
                    taken += b.events.len();
                    if let Some(b) = self.with_previous(b).await {
                        self.pending.push_back(b);
                    }
                }
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => self.done = true,
            }
            if self.catching_up || self.done || taken >= CHUNK {
                return;
            }
            next = match self.rx.try_recv() {
                Ok(b) => Some(Ok(b)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                Err(_) => None,
            };
        }
    }

    /// The frames of the pending events past the cursor that the client's
    /// selection lets through, as one chunk, moving the cursor over those
    /// it skips; `None` when none is pending. A client that takes every
    /// event sends a batch's shared frames as they are.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let plain = self.read.sel.is_everything() && !self.read.previous;
        let mut frames: Vec<Bytes> = Vec::new();
        let mut w = Writer::new(&self.src);
        while let Some(batch) = self.pending.pop_front() {
            let whole = batch
                .events
                .first()
                .is_some_and(|e| e.event.id > self.cursor);
            if plain && whole {
                self.cursor = batch.last_id().unwrap_or(self.cursor);
                frames.push(batch.frames.clone());
            } else {
                for live in &batch.events {
                    let e = &live.event;
                    if e.id <= self.cursor {
                        continue;
                    }
                    self.cursor = e.id;
                    if plain {
                        frames.push(live.frame.clone());
                        continue;
                    }
                    let mut out = format!("id: {}\ndata: ", e.id).into_bytes();
                    if self.read.sel.write(&mut w, &mut out, e, self.read.previous) {
                        out.extend_from_slice(b"\n\n");
                        frames.push(Bytes::from(out));
                    }
                }
            }
            if frames.len() >= CHUNK || (plain && !frames.is_empty()) {
                break;
            }
        }
        match frames.len() {
            0 => None,
            1 => frames.pop(),
            _ => Some(Bytes::from(frames.concat())),
        }
    }

    /// Reads the next page after the cursor into `pending`, or ends catching
    /// up when there is none. An `error` event, ending the stream, when the
    /// store fails or retention trimmed past the cursor.
    async fn catch_up(&mut self) -> Option<Bytes> {
        let store = self.s.shared.store.as_ref();
        match read_checked(store, &self.t, self.cursor, 500, self.read.oldest_kept).await {
            Ok((_, Some(through))) => {
                // Fell behind what retention keeps: say so and stop,
                // rather than skip events.
                self.done = true;
                let keeps = self.s.compat.keeps(&self.t);
                let p = Problem::trimmed("Last-Event-ID", &self.t, self.cursor, through, keeps);
                let msg = serde_json::json!({"code": p.code, "detail": p.detail, "resume_after": through.to_string(), "snapshot": p.extra.get("snapshot")});
                Some(error_frame(&msg))
            }
            Ok((page, _)) if page.is_empty() => {
                self.catching_up = false;
                None
            }
            Ok((mut page, _)) => {
                if self.read.previous
                    && let Err(e) = self.s.shared.store.fill_previous(&self.t, &mut page).await
                {
                    return Some(self.store_failed(e));
                }
                let batch = LiveBatch::new(&mut Writer::new(&self.src), page);
                self.pending.push_back(Arc::new(batch));
                None
            }
            Err(e) => Some(self.store_failed(e)),
        }
    }

    /// The `error` event ending a stream whose store read failed. The
    /// store's own words (its address among them) go to the log, not to
    /// a reader with a read token.
    fn store_failed(&mut self, e: crate::store::StoreError) -> Bytes {
        self.done = true;
        tracing::error!(table = %self.t, error = %e, "a live stream's store read failed");
        let msg = serde_json::json!({"code": "store_unavailable",
            "detail": "the store did not answer; reconnect with Last-Event-ID",
            "resume_after": self.cursor.to_string()});
        error_frame(&msg)
    }

    /// A tail batch as this client sends it: with the versions its events
    /// replaced when the client asked for previous values (one store
    /// lookup for the batch). None when that lookup failed: the client
    /// catches up from the store instead.
    async fn with_previous(&mut self, batch: Arc<LiveBatch>) -> Option<Arc<LiveBatch>> {
        let replaces = |b: &LiveBatch| {
            b.events
                .iter()
                .any(|l| crate::store::records::replaced(&l.event).is_some())
        };
        if !self.read.previous || !replaces(&batch) {
            return Some(batch);
        }
        let mut events: Vec<_> = batch.events.iter().map(|l| l.event.clone()).collect();
        if self
            .s
            .shared
            .store
            .fill_previous(&self.t, &mut events)
            .await
            .is_err()
        {
            self.catching_up = true;
            return None;
        }
        let batch = LiveBatch::new(&mut Writer::new(&self.src), events);
        Some(Arc::new(batch))
    }
}

/// An `error` event, which ends a stream.
fn error_frame(msg: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: error\ndata: {msg}\n\n"))
}
