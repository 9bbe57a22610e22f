//! The gateway's test helpers on top of [`dispatch_testkit`]: settings for a gateway alone, its
//! requests and what its records carry. A gateway starts with [`Gateway::spawn`] (no wait for
//! readiness: several tests start it with Kafka down); the keys are [`dispatch_testkit::auth`]'s.

use dispatch_core::{Envelope, TaskId};
use dispatch_gateway::Settings;
use dispatch_proto::v1 as pb;
pub use dispatch_testkit::auth::{KEY_ACME, KEY_GLOBEX, authed, bad_fields};
pub use dispatch_testkit::stack::Gateway;
use dispatch_testkit::{Record, TestEnv};

/// Settings for a gateway over `env` ([`dispatch_testkit::stack::gateway_settings`]).
pub fn settings(env: &TestEnv) -> Settings {
    dispatch_testkit::stack::gateway_settings(env)
}

/// Settings of a gateway whose Kafka is unreachable (a closed port), failing fast.
pub fn kafka_down(env: &TestEnv) -> Settings {
    let mut s = settings(env);
    s.kafka.brokers = "127.0.0.1:1".into();
    s.kafka.message_timeout_ms = 2_000;
    s.outbox.produce_timeout_ms = 300;
    s.outbox.breaker_failures = 2;
    s.outbox.breaker_open_ms = 60_000;
    s.outbox.breaker_max_open_ms = 60_000;
    s.outbox.relay_enabled = false;
    s
}

/// `s` with its MySQL unreachable (a closed port), failing fast: connect 100 ms, acquire 300 ms,
/// no connection opened at start.
pub fn mysql_down(mut s: Settings) -> Settings {
    s.database.url = "mysql://dispatch:dispatch@127.0.0.1:1/nope"
        .to_string()
        .into();
    s.database.connect_timeout_ms = 100;
    s.database.acquire_timeout_ms = 300;
    s.database.min_connections = 0;
    s
}

/// A valid spec.
pub fn spec(business_key: &str, payload: &[u8]) -> pb::TaskSpec {
    pb::TaskSpec {
        business_key: business_key.into(),
        task_type: "email.send".into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// A SubmitTask request for `spec`.
pub fn submit(spec: pb::TaskSpec, key: &str) -> tonic::Request<pb::SubmitTaskRequest> {
    authed(pb::SubmitTaskRequest { task: Some(spec) }, key)
}

/// The task id a record carries (from the header).
pub fn task_id_of(r: &Record) -> Option<String> {
    r.headers
        .get_str(dispatch_core::envelope::header::TASK_ID)
        .map(str::to_owned)
}

/// The decoded envelope of a record.
pub fn envelope(r: &Record) -> Envelope {
    Envelope::decode(&r.value).expect("record value is an envelope")
}

/// Parses a response's task id.
pub fn id(s: &str) -> TaskId {
    TaskId::parse(s).expect("task id")
}

/// The `accepted` outcome of a batch item.
pub fn accepted(r: &pb::SubmitResult) -> Option<&pb::SubmitTaskResponse> {
    match &r.outcome {
        Some(pb::submit_result::Outcome::Accepted(a)) => Some(a),
        _ => None,
    }
}
