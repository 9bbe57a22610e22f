//! Logs and traces.
//!
//! Logs are JSON lines from tracing-subscriber's JSON format ([`json_layer`]: an RFC 3339
//! `timestamp`, `level`, `target`, `fields` with the `message`, `span` and `spans`, and
//! `trace_id`/`span_id` when a trace is active). A tracer provider is always installed, with a
//! parent-based ratio sampler, so trace context flows gRPC metadata -> Kafka headers -> processor ->
//! events even when nothing is exported; spans are exported over OTLP/gRPC only when
//! `telemetry.otlp_endpoint` is set (over TLS for `https://`, verified against
//! `telemetry.otlp_ca_file` or the system roots).

use std::fmt;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::ChronoUtc;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::TelemetrySettings;

/// Flushes and shuts the tracer provider down when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber (once per process; later calls only return a guard).
///
/// # Errors
/// An invalid log filter or OTLP exporter configuration.
pub fn init(service: &str, s: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        s.sampling_ratio.clamp(0.0, 1.0),
    )));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource);
    if let Some(endpoint) = s.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        use opentelemetry_otlp::WithExportConfig;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint);
        if endpoint.starts_with("https://") {
            use opentelemetry_otlp::WithTonicConfig;
            crate::tls::install_crypto_provider();
            let tls = match &s.otlp_ca_file {
                Some(ca) => {
                    crate::tls::read_certs("telemetry.otlp_ca_file", ca)?;
                    let pem = std::fs::read(ca).map_err(|e| {
                        anyhow::anyhow!("telemetry.otlp_ca_file ({}): {e}", ca.display())
                    })?;
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tonic::transport::ClientTlsConfig::new().with_native_roots(),
            };
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter
            .build()
            .map_err(|e| anyhow::anyhow!("otlp exporter: {e}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service.to_owned());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(&s.log_level)
            .map_err(|e| anyhow::anyhow!("telemetry.log_level: {e}"))?,
    };
    // Each layer has its own filter: turning logs down to `warn` must not stop the `info` spans
    // that carry trace context from record to record (and into events, retries and the DLQ).
    // Without busy/idle tracking: it reads the clock and locks the span's extensions on every
    // enter and exit, which for a task's span (entered on every poll of its future) was 5-6% of
    // the processor's CPU in a drain; nothing reads the `busy_ns`/`idle_ns` attributes it adds.
    // Without context activation: it attaches the span's OpenTelemetry context to a thread-local
    // stack on every enter (5.5% of the processor's samples in a drain at 115b666), for
    // instrumentation that reads `opentelemetry::Context::current()`; ours reads the context from
    // the tracing span (`OpenTelemetrySpanExt::context`), and no library we use reads it.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel);
    let result = if s.log_format == "pretty" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(json_layer(std::io::stderr).with_filter(filter))
            .try_init()
    };
    // Already initialised (tests build several apps in one process): keep the first.
    let _ = result;
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The JSON log layer every service writes with: tracing-subscriber's own JSON format, one
/// object per line with an RFC 3339 `timestamp` (which Loki, Elasticsearch and Cloud Logging
/// parse natively), `level`, `target`, the event's `fields` (with `message`), the current `span`
/// and every span it is in (`spans`, root first, so a `task_id` recorded on an outer span reaches
/// every line), plus `trace_id`/`span_id` when a trace is active.
pub fn json_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_timer(ChronoUtc::rfc_3339())
        .with_current_span(true)
        .with_span_list(true)
        .map_event_format(WithTraceIds)
        .with_writer(writer)
}

/// Adds `trace_id` and `span_id` to the lines of a JSON event format: tracing-subscriber's JSON
/// format knows nothing of OpenTelemetry, and a log pipeline needs the ids to join a line to
/// its trace.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The inner format writes one object and a newline: reopen the object to append the ids.
        match line.trim_end().strip_suffix('}') {
            Some(open) => writeln!(
                writer,
                "{open},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                sc.trace_id(),
                sc.span_id()
            ),
            None => writer.write_str(&line),
        }
    }
}

struct VecInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for VecInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

struct PairsExtractor<'a>(&'a [(String, String)]);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// W3C `traceparent`/`tracestate` of the current span, as header pairs.
pub fn current_trace_headers() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut out = Vec::new();
    TraceContextPropagator::new().inject_context(&cx, &mut VecInjector(&mut out));
    out
}

/// The context carried by `pairs` (`traceparent`, `tracestate`), or an empty context.
pub fn context_from_pairs(pairs: &[(String, String)]) -> Context {
    TraceContextPropagator::new().extract(&PairsExtractor(pairs))
}

/// The trace context pairs (`traceparent`, `tracestate`) of gRPC request metadata, as received.
pub fn pairs_from_metadata(md: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| {
            md.get(*k)
                .and_then(|v| v.to_str().ok())
                .map(|v| ((*k).to_owned(), v.to_owned()))
        })
        .collect()
}

/// The context carried by gRPC request metadata.
pub fn context_from_metadata(md: &tonic::metadata::MetadataMap) -> Context {
    context_from_pairs(&pairs_from_metadata(md))
}

/// Makes `span` a child of `parent` (a remote context from gRPC metadata or Kafka headers).
pub fn set_parent(span: &tracing::Span, parent: Context) {
    let _ = span.set_parent(parent);
}

/// The trace id of the current span, if a trace is active (for tests and log correlation).
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
