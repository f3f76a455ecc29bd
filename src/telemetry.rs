//! OpenTelemetry: spans exported over OTLP/HTTP (JSON) when
//! `[telemetry] otlp_endpoint` is set, through `tracing-opentelemetry`, and
//! the `traceparent` of whatever span is running (docs/tracing.md).
//!
//! A poll's ids are not random: they derive from the stream entry
//! (`trace.rs`), so the id generator takes ids handed to it for the span
//! being opened on this thread, and makes random ones otherwise.

use std::{cell::Cell, future::Future, time::Duration};

use opentelemetry::{
    Context,
    trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    },
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

use crate::{config::TelemetryConfig, trace::PollTrace};

/// The exporter of one process; `shutdown` sends what is still buffered.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts the exporter, or `None` when no endpoint is configured. Must
    /// run inside the Tokio runtime: exports are sent on it.
    pub fn start(config: &TelemetryConfig) -> anyhow::Result<Option<Telemetry>> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let client = Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
            runtime: tokio::runtime::Handle::try_current().map_err(|_| {
                anyhow::anyhow!("telemetry.otlp_endpoint: the exporter needs a Tokio runtime")
            })?,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(traces_url(endpoint))
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(DerivedIds(RandomIdGenerator::default()))
            .with_resource(resource)
            .build();
        Ok(Some(Telemetry { provider }))
    }

    /// The layer exporting the relay's own spans (info and above).
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer("stamp-relay");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("stamp_relay", tracing::Level::INFO))
    }

    /// Sends every finished span now (tests; shutdown does it too).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    pub fn shutdown(self) {
        let _ = self.provider.shutdown();
    }
}

/// `http://host:4318` means its `/v1/traces`; a URL with a path is kept.
fn traces_url(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(u) if u.path() == "/" || u.path().is_empty() => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_string(),
    }
}

thread_local! {
    /// The ids for the span being opened on this thread (see `open_with_ids`).
    static NEXT: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

#[derive(Debug)]
struct DerivedIds(RandomIdGenerator);

impl IdGenerator for DerivedIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT.get().map_or_else(|| self.0.new_trace_id(), |(t, _)| t)
    }
    fn new_span_id(&self) -> SpanId {
        NEXT.get().map_or_else(|| self.0.new_span_id(), |(_, s)| s)
    }
}

/// Opens `span` on the OpenTelemetry side now, with these ids (the trace
/// id counts only for a span without a parent). Without the layer, nothing.
pub fn open_with_ids(span: &tracing::Span, trace_id: [u8; 16], span_id: [u8; 8]) {
    NEXT.set(Some((
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
    )));
    // Asking for the context builds the span, on this thread.
    let _ = span.context();
    NEXT.set(None);
}

/// Makes `span` (not yet entered) a child of the append span of the first
/// poll and links it to the others: a delivery attempt of their events.
pub fn follow(span: &tracing::Span, polls: &[PollTrace]) {
    let remote = |t: &PollTrace| {
        SpanContext::new(
            TraceId::from_bytes(t.trace_id),
            SpanId::from_bytes(t.append_span),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    };
    let Some(first) = polls.first() else { return };
    let _ = span.set_parent(Context::new().with_remote_span_context(remote(first)));
    let mut linked = vec![*first];
    for t in polls {
        if !linked.contains(t) {
            span.add_link(remote(t));
            linked.push(*t);
        }
    }
}

tokio::task_local! {
    /// The `traceparent` of the work this task does, for when no
    /// OpenTelemetry span is running (export off).
    static DERIVED: String;
}

/// Runs `work` with `traceparent` as its derived trace context.
pub async fn scoped<F: Future>(traceparent: String, work: F) -> F::Output {
    DERIVED.scope(traceparent, work).await
}

/// The `traceparent` to send now: the running span's when it is exported,
/// else the derived one of this task, else none.
pub fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        return Some(crate::trace::traceparent(
            &sc.trace_id().to_bytes(),
            &sc.span_id().to_bytes(),
        ));
    }
    DERIVED.try_with(Clone::clone).ok()
}

/// OTLP requests over the relay's own reqwest, spawned on the runtime
/// (the batch exporter calls from a thread of its own).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let http = self.http.clone();
        // Even making the request needs the runtime's reactor.
        let answer = self.runtime.spawn(async move {
            let resp = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let (status, headers) = (resp.status(), resp.headers().clone());
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = answer.await??;
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_endpoint_means_its_traces_path() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }
}
