//! The JSON log lines every service writes ([`telemetry::json_layer`]), read back as a log
//! pipeline reads them.
//!
//! Its own test binary, because it installs the process-wide subscriber: the services install
//! theirs globally, and the trace ids on a line come from the global dispatcher (a scoped one,
//! `with_default`, is not visible while an event is being formatted).

use dispatch_runtime::telemetry;
use dispatch_testkit::LogCapture;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[test]
fn json_lines_have_rfc3339_timestamps_fields_spans_and_trace_ids() {
    let buffer = LogCapture::default();
    let sink = buffer.clone();
    // What `telemetry::init` installs, with every root trace sampled and the lines captured.
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(telemetry::json_layer(move || sink.clone()))
        .try_init()
        .expect("the only subscriber of this binary");

    tracing::info!(attempt = 1, "outside any span");
    {
        let outer = tracing::info_span!("record", task_id = "t-1");
        let _outer = outer.enter();
        let inner = tracing::info_span!("handler", task_type = "noop");
        let _inner = inner.enter();
        tracing::warn!(latency_ms = 12, "task ran");
    }

    let lines = buffer.json_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let ts = line["timestamp"].as_str().expect("a timestamp string");
        chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap_or_else(|e| panic!("timestamp {ts:?} is not RFC 3339: {e}"));
        assert!(line["target"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let (plain, traced) = (&lines[0], &lines[1]);
    assert_eq!(plain["level"], "INFO");
    assert_eq!(plain["fields"]["attempt"], 1);
    assert!(plain.get("trace_id").is_none(), "no trace, no id: {plain}");

    assert_eq!(traced["level"], "WARN");
    assert_eq!(traced["fields"]["message"], "task ran");
    assert_eq!(traced["fields"]["latency_ms"], 12);
    assert_eq!(traced["span"]["name"], "handler");
    assert_eq!(traced["spans"][0]["task_id"], "t-1", "{traced}");
    let hex = |v: &Value, len: usize| {
        v.as_str()
            .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(hex(&traced["trace_id"], 32), "{traced}");
    assert!(hex(&traced["span_id"], 16), "{traced}");
}
