//! Logs and traces.
//!
//! Logs are JSON lines (`timestamp`, `level`, `target`, `message`, the event's fields, `span`, and
//! `trace_id`/`span_id` when a trace is active). A tracer provider is always installed, with a
//! parent-based ratio sampler, so trace context flows gRPC metadata -> Kafka headers -> processor ->
//! events even when nothing is exported; spans are exported over OTLP/gRPC only when
//! `telemetry.otlp_endpoint` is set.

use std::fmt;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

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
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
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
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
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
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    };
    // Already initialised (tests build several apps in one process): keep the first.
    let _ = result;
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The JSON line format.
struct JsonLines;

#[derive(Default)]
struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::from(chrono_now()));
        line.insert(
            "level".into(),
            Value::from(meta.level().as_str().to_ascii_lowercase()),
        );
        line.insert("target".into(), Value::from(meta.target()));
        if let Some(msg) = fields.0.remove("message") {
            line.insert("message".into(), msg);
        }
        if !fields.0.is_empty() {
            line.insert("fields".into(), Value::Object(fields.0));
        }
        if let Some(scope) = ctx.event_scope() {
            let names: Vec<&str> = scope.from_root().map(|s| s.name()).collect();
            if let Some(last) = names.last() {
                line.insert("span".into(), Value::from(*last));
            }
        }
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            line.insert("trace_id".into(), Value::from(sc.trace_id().to_string()));
            line.insert("span_id".into(), Value::from(sc.span_id().to_string()));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

fn chrono_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", now.as_secs(), now.subsec_micros())
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

/// The context carried by gRPC request metadata.
pub fn context_from_metadata(md: &tonic::metadata::MetadataMap) -> Context {
    let pairs: Vec<(String, String)> = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| {
            md.get(*k)
                .and_then(|v| v.to_str().ok())
                .map(|v| ((*k).to_owned(), v.to_owned()))
        })
        .collect();
    context_from_pairs(&pairs)
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
