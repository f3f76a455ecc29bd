//! The spans of one poll (or sweep) and the time its events say they were
//! observed: the poll's start, one value for every chunk, from which the
//! trace ids derive (`trace.rs`, docs/tracing.md).

use std::{future::Future, sync::OnceLock};

use tracing::Instrument;

use super::Poller;
use crate::{events::now_ms, telemetry, trace::PollTrace};

pub(super) struct PollSpans {
    /// Unix ms at the start: every event appended says `observed` = this.
    pub observed: u64,
    trace: PollTrace,
    poll: tracing::Span,
    /// Opened at the first append, so a poll that appends nothing has none.
    append: OnceLock<tracing::Span>,
}

impl PollSpans {
    /// The span appends run in: the parent of their delivery attempts.
    pub fn append(&self) -> tracing::Span {
        self.append
            .get_or_init(|| {
                let span = tracing::info_span!(parent: &self.poll, "append");
                telemetry::open_with_ids(&span, self.trace.trace_id, self.trace.append_span);
                span
            })
            .clone()
    }

    /// Runs the poll inside its span, upstream requests sending its
    /// `traceparent`.
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        telemetry::scoped(self.trace.poll_parent(), work)
            .instrument(self.poll.clone())
            .await
    }
}

impl Poller {
    /// Begins the trace of a poll (or a reconcile sweep) starting now: a
    /// root span, never the child of another, since its ids are derived.
    pub(super) fn begin_trace(&mut self, sweep: bool) -> std::sync::Arc<PollSpans> {
        let observed = now_ms();
        let trace = PollTrace::of(&self.table.source, &self.table.resource, observed);
        let (source, resource) = (&self.table.source, &self.table.resource);
        // Field values are built only when the span is on (not at `warn`).
        let poll = if sweep {
            tracing::info_span!(parent: None, "reconcile", %source, %resource, trace_id = %trace.trace_hex())
        } else {
            tracing::info_span!(parent: None, "poll", %source, %resource, trace_id = %trace.trace_hex())
        };
        telemetry::open_with_ids(&poll, trace.trace_id, trace.poll_span);
        let spans = std::sync::Arc::new(PollSpans {
            observed,
            trace,
            poll,
            append: OnceLock::new(),
        });
        self.spans = Some(spans.clone());
        spans
    }
}
