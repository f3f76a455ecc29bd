//! The live stream of one target's events (SSE on
//! `GET /v1/resources/{source}/{resource}/events` with
//! `Accept: text/event-stream`): the store's backlog after the cursor
//! first, then the shared tail; a lagging client catches up from the store
//! again, so no client slows another and none misses an event.

use std::{collections::VecDeque, convert::Infallible, sync::Arc};

use axum::response::{
    IntoResponse, Response,
    sse::{Event as SseEvent, KeepAlive, Sse},
};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{
    ApiState,
    positions::read_checked,
    problem::{ApiResult, Problem},
};
use crate::{
    cloudevents::EventSource,
    events::StreamId,
    filter::{EventView, Selection},
    store::Target,
    tail::LiveEvent,
};

/// What a live stream's client asked for.
pub(super) struct Reading {
    /// `filter` and `fields`.
    pub sel: Selection,
    /// Events carry previous values (src/previous.rs).
    pub previous: bool,
    /// A stream from 0 may start at the oldest event kept (positions.rs).
    pub oldest_kept: bool,
}

/// The state of one live stream between items.
struct Live {
    s: ApiState,
    t: Target,
    src: Arc<EventSource>,
    cursor: StreamId,
    read: Reading,
    rx: broadcast::Receiver<Arc<LiveEvent>>,
    pending: VecDeque<Arc<LiveEvent>>,
    catching_up: bool,
    done: bool,
    /// One of `api.max_sse_clients`, given back when the stream ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Sends what is after the cursor from the store, then follows the shared
/// tail; after a lag it catches up from the store again, so a client sees
/// every event once, in order, however slow it is.
pub(super) async fn live(
    s: ApiState,
    t: Target,
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
        .ok_or_else(|| Problem::not_found(format!("{t} has no live tail")))?;
    let cursor = match after {
        Some(c) => c,
        None => s.shared.store.last_id(&t).await?,
    };
    let state = Live {
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
    let stream = live_stream(state);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(crate::config::LIVE_KEEP_ALIVE))
        .into_response())
}

fn live_stream(state: Live) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(ev) = st.next_pending() {
                return Some((Ok(ev), st));
            }
            if st.catching_up {
                if let Some(ev) = st.catch_up().await {
                    return Some((Ok(ev), st));
                }
                continue;
            }
            tokio::select! {
                _ = st.s.cancel.cancelled() => return None,
                r = st.rx.recv() => match r {
                    Ok(e) => match st.with_previous(e).await {
                        Some(e) => st.pending.push_back(e),
                        None => continue,
                    },
                    Err(RecvError::Lagged(_)) => st.catching_up = true,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    })
}

impl Live {
    /// The next pending event past the cursor that the client's selection
    /// lets through, moving the cursor over those it skips.
    fn next_pending(&mut self) -> Option<SseEvent> {
        while let Some(live) = self.pending.pop_front() {
            let e = &live.event;
            if e.id <= self.cursor {
                continue;
            }
            self.cursor = e.id;
            let json = if self.read.previous {
                if !self.read.sel.matches(&EventView::new(&self.src, e)) {
                    continue;
                }
                std::borrow::Cow::Owned(crate::previous::to_json(&self.src, e))
            } else {
                match self.read.sel.render_live(&self.src, &live) {
                    Some(json) => json,
                    None => continue,
                }
            };
            return Some(SseEvent::default().id(e.id.to_string()).data(json));
        }
        None
    }

    /// Reads the next page after the cursor into `pending`, or ends catching
    /// up when there is none. An `error` event, ending the stream, when the
    /// store fails or retention trimmed past the cursor.
    async fn catch_up(&mut self) -> Option<SseEvent> {
        let store = self.s.shared.store.as_ref();
        match read_checked(store, &self.t, self.cursor, 500, self.read.oldest_kept).await {
            Ok((_, Some(through))) => {
                // Fell behind what retention keeps: say so and stop,
                // rather than skip events.
                self.done = true;
                let keeps = self.s.compat.keeps(&self.t);
                let p = Problem::trimmed("Last-Event-ID", &self.t, self.cursor, through, keeps);
                let msg = serde_json::json!({"code": p.code, "detail": p.detail, "resume_after": through.to_string(), "snapshot": p.extra.get("snapshot")});
                Some(SseEvent::default().event("error").data(msg.to_string()))
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
                self.pending.extend(page.into_iter().map(|event| {
                    let json = self.src.to_json(&event);
                    Arc::new(LiveEvent { event, json })
                }));
                None
            }
            Err(e) => Some(self.store_failed(e)),
        }
    }

    /// The `error` event ending a stream whose store read failed. The
    /// store's own words (its address among them) go to the log, not to
    /// a reader with a read token.
    fn store_failed(&mut self, e: crate::store::StoreError) -> SseEvent {
        self.done = true;
        tracing::error!(target = %self.t, error = %e, "a live stream's store read failed");
        let msg = serde_json::json!({"code": "store_unavailable",
            "detail": "the store did not answer; reconnect with Last-Event-ID",
            "resume_after": self.cursor.to_string()});
        SseEvent::default().event("error").data(msg.to_string())
    }

    /// A tail event as this client sends it: with the version it replaced
    /// when the client asked for previous values. None when that lookup
    /// failed: the client catches up from the store instead.
    async fn with_previous(&mut self, live: Arc<LiveEvent>) -> Option<Arc<LiveEvent>> {
        if !self.read.previous || crate::store::records::replaced(&live.event).is_none() {
            return Some(live);
        }
        let mut events = [live.event.clone()];
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
        let [event] = events;
        Some(Arc::new(LiveEvent {
            event,
            json: live.json.clone(),
        }))
    }
}
