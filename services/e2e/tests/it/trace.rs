//! One trace id flows submit -> process -> event, with the tracer the services install.

use std::sync::OnceLock;

/// Installs, once per process, what `dispatch_runtime::telemetry::init` installs for traces: an
/// OpenTelemetry tracer provider with a parent-based ratio sampler (ratio 1.0 here) behind the
/// `tracing` subscriber. Logs go to the test output only when `RUST_LOG` is set, so this binary's
/// output stays readable (`init` would write every info line to stderr).
fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
        use tracing_subscriber::filter::{EnvFilter, LevelFilter};
        use tracing_subscriber::prelude::*;

        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                1.0,
            ))))
            .build();
        let tracer = provider.tracer("dispatch-e2e");
        opentelemetry::global::set_tracer_provider(provider);
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(LevelFilter::INFO);
        let logs = std::env::var("RUST_LOG").ok().map(|f| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(EnvFilter::new(f))
        });
        let _ = tracing_subscriber::registry()
            .with(otel)
            .with(logs)
            .try_init();
    });
}

#[tokio::test]
async fn one_trace_id_flows_from_submit_through_retries_and_dlq_to_events() -> anyhow::Result<()> {
    init_tracing();
    crate::trace_flow::trace_id_flows_to_every_record().await
}

#[tokio::test]
async fn a_scheduled_task_keeps_its_trace_through_the_scheduler() -> anyhow::Result<()> {
    init_tracing();
    crate::trace_flow::scheduled_task_keeps_its_trace().await
}
