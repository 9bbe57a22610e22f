//! The trace scenario of `it::trace`, under the real `dispatch_runtime::telemetry::init` with a
//! quiet log level (`warn`), the way an operator who turns logging down would run the services.
//! Its own binary, because `init` installs the process-wide subscriber.
//!
//! A log level must not decide whether trace context propagates: the W3C context is part of the
//! data path (gRPC metadata -> record headers -> events), not a log line.

#[path = "it/support.rs"]
#[allow(dead_code)]
mod support;
#[path = "it/trace_flow.rs"]
#[allow(dead_code)]
mod trace_flow;

#[tokio::test]
async fn trace_id_flows_with_logs_at_warn() -> anyhow::Result<()> {
    let telemetry = dispatch_runtime::settings::TelemetrySettings {
        log_level: "warn".into(),
        // The caller's sampled flag decides (parent-based), whatever the ratio.
        sampling_ratio: 0.0,
        ..Default::default()
    };
    let _guard = dispatch_runtime::telemetry::init("dispatch-e2e", &telemetry)?;
    trace_flow::trace_id_flows_to_every_record().await
}
