//! The processor's settings: the shared runtime sections plus `[consumer]`, `[writer]`, `[gate]`,
//! `[scheduler]`, `[handlers]`, `[retention]` and `[health]`.
//!
//! Over 400 lines because every processor-only section is defined here with its defaults and
//! documented fields, and the tests start near line 605; `[handlers]` with its HTTP endpoint and
//! host settings would move to a module of its own first.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use dispatch_runtime::SettingsError;
use dispatch_runtime::server::auth::AuthSettings;
use dispatch_runtime::settings::{
    AdminSettings, DbSettings, GrpcSettings, KafkaSettings, ShutdownSettings, TelemetrySettings,
};
use serde::{Deserialize, Serialize};

/// Everything the processor is configured with (see `dispatch_runtime::settings` for layering).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The AdminService gRPC server (default 127.0.0.1:50053), with grpc.health.v1 and
    /// reflection; optional TLS. `request_timeout_ms` defaults to 10 minutes here: a redrive
    /// answers when its last batch is marked (its size over its rate); past the timeout the call
    /// ends, the redrive itself runs to the end on its own task.
    pub grpc: GrpcSettings,
    /// The admin HTTP server: `/metrics`, `/healthz`, `/readyz` (default 127.0.0.1:9603).
    pub admin: AdminSettings,
    /// Who may call AdminService (`admin_key_sha256`).
    pub auth: AuthSettings,
    /// MySQL (tasks, attempts, dead letters).
    pub database: DbSettings,
    /// Kafka brokers, topic prefix and client tuning.
    pub kafka: KafkaSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// Shutdown bounds.
    pub shutdown: ShutdownSettings,
    /// Consumption: group, priorities, concurrency, backpressure.
    pub consumer: ConsumerSettings,
    /// The batch writer.
    pub writer: WriterSettings,
    /// The gate: batched lookups of stored states before a record runs.
    pub gate: GateSettings,
    /// The scheduler of future `run_at` tasks.
    pub scheduler: SchedulerSettings,
    /// The schedule loop (ScheduleService's schedules).
    pub schedules: SchedulesSettings,
    /// The workflow advancer (SubmitWorkflow's dependencies).
    pub workflows: WorkflowsSettings,
    /// Handlers by task type.
    pub handlers: HandlersSettings,
    /// Purging finished tasks after a per-tenant retention.
    pub retention: RetentionSettings,
    /// Readiness from run-time TLS failures of MySQL and Kafka.
    pub health: HealthSettings,
}

/// The processor's default `grpc.request_timeout_ms` (10 minutes: see [`Settings::grpc`]).
pub const REQUEST_TIMEOUT_MS: u64 = 600_000;

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
                request_timeout_ms: REQUEST_TIMEOUT_MS,
                ..GrpcSettings::default()
            },
            admin: AdminSettings::on_port(9603),
            auth: AuthSettings::default(),
            database: DbSettings::default(),
            kafka: KafkaSettings::default(),
            telemetry: TelemetrySettings::default(),
            shutdown: ShutdownSettings::default(),
            consumer: ConsumerSettings::default(),
            writer: WriterSettings::default(),
            gate: GateSettings::default(),
            scheduler: SchedulerSettings::default(),
            schedules: SchedulesSettings::default(),
            workflows: WorkflowsSettings::default(),
            handlers: HandlersSettings::default(),
            retention: RetentionSettings::default(),
            health: HealthSettings::default(),
        }
    }
}

/// `[consumer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerSettings {
    /// Kafka consumer group.
    pub group: String,
    /// Dispatch weights of the critical, default and low topics when all have work.
    pub priority_weights: [u32; 3],
    /// Records executing (or waiting on their key's lane) at once, across all partitions.
    pub max_concurrency: usize,
    /// Records consumed but not yet persisted before partitions pause (backpressure). The window
    /// is shared by priority (`consumer/poller.rs`): a priority with work is owed its weighted
    /// share, and reaching this bound pauses the priorities at or above their share and the
    /// retry topics, so the records held can exceed it by up to the shares of the others (at
    /// most twice it). Pausing makes librdkafka drop what it prefetched for those partitions, and every resume
    /// fetches it again: a bound near the throughput of a fraction of a second starves the
    /// pipeline at each pause. `max_in_flight_kbytes` bounds the memory this may take.
    pub max_in_flight: usize,
    /// Bytes of consumed, unpersisted records (payload, key and a fixed overhead each) before
    /// every partition is paused, whatever their count.
    pub max_in_flight_kbytes: usize,
    /// Partitions resume once in-flight records fall to this fraction of `max_in_flight`.
    pub resume_ratio: f64,
    /// Records waiting for their key's lane, an operator pause of their type or their type's
    /// concurrency permit are *parked*: outside the in-flight window, up to this many (0: never),
    /// so a hot key, a paused type or a limited type cannot pause every partition. Beyond it they
    /// count against the window again.
    pub max_parked: usize,
    /// Bytes parked records may hold (their payloads: they wait in memory).
    pub max_parked_kbytes: usize,
    /// On a revoke, how long running records of the revoked partitions may take to finish before
    /// their offsets are committed and the rest is dropped.
    pub rebalance_drain_ms: u64,
    /// How often consumer lag metrics are refreshed.
    pub lag_interval_ms: u64,
    /// librdkafka prefetch bound in KiB (`queued.max.messages.kbytes`, also the fetch size
    /// bound). It counts records as fetched, compressed, while each fetched batch is held
    /// decompressed: with well-compressing payloads the resident prefetch is many times this.
    /// At 8 MiB a 400k-task backlog drain peaked at 278 MiB RSS (heaptrack: 115 MiB of
    /// decompression buffers); at 2 MiB, 166 MiB, at the same drain rate.
    pub prefetch_kbytes: u32,
    /// How long the broker may hold a fetch for `fetch_min_kbytes` to arrive
    /// (`fetch.wait.max.ms`): the most a record waits for its fetch under light load, and how
    /// soon a resumed partition (a retry come due, a priority back under its share) is fetched.
    pub fetch_wait_ms: u32,
    /// A fetch returns once this much is ready (`fetch.min.bytes`), or after `fetch_wait_ms`.
    /// At 1 byte every small produce answers a fetch of its own, and each fetch names every
    /// partition this instance consumes (librdkafka sends no incremental fetch sessions): at 1k
    /// tasks/s that cost the broker and the processor more CPU than the tasks themselves
    /// (docs/benchmarks.md, "Fetches under light load").
    pub fetch_min_kbytes: u32,
    /// How long a cancel is remembered, so a submit behind it is never run.
    pub cancelled_ttl_ms: u64,
    /// How often the operator pauses shared by all instances are re-read from MySQL: a pause
    /// made through another instance takes effect here within this bound.
    pub pause_sync_ms: u64,
    /// Retry delays up to this go through the retry topics (held in memory until due); longer
    /// ones wait in MySQL and the scheduler publishes them when due. A retry topic partition
    /// holds its records in order, so this bounds how long a short retry can wait behind a long
    /// one (docs/scheduling.md).
    pub retry_topic_max_delay_ms: u64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            group: "dispatch-processor".into(),
            priority_weights: [6, 3, 1],
            max_concurrency: 256,
            max_in_flight: 20_000,
            max_in_flight_kbytes: 64 * 1024,
            resume_ratio: 0.75,
            max_parked: 100_000,
            max_parked_kbytes: 64 * 1024,
            rebalance_drain_ms: 5_000,
            lag_interval_ms: 5_000,
            prefetch_kbytes: 2_048,
            fetch_wait_ms: 5,
            fetch_min_kbytes: 64,
            cancelled_ttl_ms: 600_000,
            pause_sync_ms: 1_000,
            retry_topic_max_delay_ms: 1_000,
        }
    }
}

/// `[writer]`: the batch writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterSettings {
    /// Flush a batch at this many distinct tasks.
    pub max_rows: usize,
    /// Flush a batch this long after its first write.
    pub max_delay_ms: u64,
    /// Batch transactions in flight at once (the next batch commits while one waits on MySQL;
    /// events are still published in batch order).
    pub max_concurrent_batches: usize,
    /// A write of a task that a batch in flight also writes waits for that batch's commit
    /// outside the transaction, joining the next batch (default), instead of waiting on the row
    /// lock inside its own batch while holding the locks of the rows written before it.
    pub hold_uncommitted: bool,
    /// The producer (events, retry and DLQ records, the scheduler's tasks) is rebuilt when it
    /// has had work but no delivery report for this long while the cluster answers a new
    /// client (`dispatch_runtime::producer::watchdog`; the gateway's is `outbox.producer_wedge_ms`).
    /// 5 s: after most broker restarts librdkafka 2.12.1 left the processors' clients without
    /// a delivery while the broker served others (docs/reliability.md), and unlike the
    /// gateway, which has its outbox, every attempt waiting on an event holds its key.
    pub producer_wedge_ms: u64,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            max_rows: 500,
            max_delay_ms: 5,
            max_concurrent_batches: 3,
            hold_uncommitted: true,
            producer_wedge_ms: 5_000,
        }
    }
}

/// `[gate]`: every record asks for its task's stored state and version before it runs
/// (`crate::gate`); lookups of concurrent records are gathered into one `IN (...)` query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    /// Send a lookup once this many ids are gathered...
    pub max_ids: usize,
    /// ...or this long after the first.
    pub max_delay_us: u64,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            max_ids: 256,
            max_delay_us: 250,
        }
    }
}

/// `[health]`: the probe that turns run-time TLS failures of MySQL and Kafka into readiness
/// (`crate::readiness`; shared with the gateway).
pub use dispatch_runtime::settings::HealthSettings;

/// `[scheduler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// Run the scheduler loop in this instance.
    pub enabled: bool,
    /// Pause between claims.
    pub interval_ms: u64,
    /// Rows claimed per transaction.
    pub batch_size: u32,
    /// A claimed row still `pending` after this long (its task never reached a consumer: the
    /// claimer died or Kafka failed before it was produced) is published again. Also the
    /// backstop of retries on the retry topics: a task still RETRYING this long after its next
    /// attempt was due has its next attempt published again from MySQL.
    pub republish_after_ms: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 500,
            batch_size: 500,
            republish_after_ms: 30_000,
        }
    }
}

/// `[schedules]`: the loop that fires due schedules as `scheduled` tasks (the scheduler of some
/// instance then publishes them: keep `scheduler.enabled` on somewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulesSettings {
    /// Run the schedule loop in this instance (any number of instances may).
    pub enabled: bool,
    /// Pause between passes.
    pub interval_ms: u64,
    /// Schedules claimed per transaction.
    pub batch_size: u32,
    /// A due fire time at most this old when a pass looks at it fires; an older one was missed
    /// and the schedule's catch-up policy decides (docs/scheduling.md#schedules).
    pub misfire_grace_ms: u64,
}

impl Default for SchedulesSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 250,
            batch_size: 100,
            misfire_grace_ms: 5_000,
        }
    }
}

/// `[workflows]`: the advancer that releases workflow nodes once their dependencies finish and
/// cancels them when one fails (`crate::workflows`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowsSettings {
    /// Run the advancer in this instance (any number of instances may).
    pub enabled: bool,
    /// Pause between passes over every WAITING node (which also carry out CancelWorkflow
    /// requests and catch what no wake reported: a node cancelled through the gateway, an
    /// instance that died after a commit). A pass over one workflow runs whenever this instance
    /// commits a state of one of its nodes. The sweep's cost grows with the WAITING nodes, about
    /// 7 µs of MariaDB each (docs/workflows.md).
    pub interval_ms: u64,
    /// Nodes decided per round.
    pub batch_size: u32,
    /// A node still WAITING this long after its CANCEL was produced gets another one; each
    /// further resend waits twice as long as the one before, up to 16 times this.
    pub resend_after_ms: u64,
}

impl Default for WorkflowsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 2_000,
            batch_size: 500,
            resend_after_ms: 30_000,
        }
    }
}

/// `[handlers]`: which handler runs each task type, with what bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlersSettings {
    /// Timeout of a type without its own `timeout_ms`.
    pub default_timeout_ms: u64,
    /// Concurrency of a type without its own `concurrency` (0 = bounded only by
    /// `consumer.max_concurrency`).
    pub default_concurrency: usize,
    /// Task type -> handler. `noop` and `simulate` are registered for the types of the same name
    /// unless configured otherwise.
    pub types: BTreeMap<String, TypeSettings>,
    /// Endpoints of `http` handlers, by task type.
    pub http: BTreeMap<String, HttpEndpointSettings>,
    /// Per-host protection of `http` handlers.
    pub http_host: HttpHostSettings,
}

impl Default for HandlersSettings {
    fn default() -> Self {
        Self {
            default_timeout_ms: 30_000,
            default_concurrency: 0,
            types: BTreeMap::new(),
            http: BTreeMap::new(),
            http_host: HttpHostSettings::default(),
        }
    }
}

/// `[handlers.types.<task_type>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeSettings {
    /// `noop`, `simulate`, `http`, or `custom` (a handler registered in code; this entry then
    /// only sets its bounds).
    pub kind: String,
    /// Handler timeout (a timeout is a retryable failure).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// At most this many executions of the type at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// `[handlers.http.<task_type>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEndpointSettings {
    /// URL the payload is POSTed to.
    pub url: String,
    /// Request timeout.
    #[serde(default = "default_http_timeout_ms")]
    pub timeout_ms: u64,
    /// PEM CA bundle an `https://` URL's certificate may also chain to (the system roots are
    /// always trusted).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_http_timeout_ms() -> u64 {
    10_000
}

/// `[handlers.http_host]`: circuit breaker and rate limit applied per endpoint host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpHostSettings {
    /// Consecutive failures that open a host's breaker.
    pub breaker_failures: u32,
    /// First open period (doubles up to `breaker_max_open_ms`).
    pub breaker_open_ms: u64,
    /// Longest open period.
    pub breaker_max_open_ms: u64,
    /// Requests per second per host (0 = unlimited).
    pub rate_per_second: u32,
    /// Burst above the rate.
    pub burst: u32,
}

impl Default for HttpHostSettings {
    fn default() -> Self {
        Self {
            breaker_failures: 5,
            breaker_open_ms: 1_000,
            breaker_max_open_ms: 30_000,
            rate_per_second: 0,
            burst: 50,
        }
    }
}

/// `[retention]`: how long finished work is kept (docs/reliability.md, "Retention").
///
/// Terminal tasks (SUCCEEDED, DEAD, CANCELLED), their attempts and ledger rows are deleted once
/// they finished longer ago than their tenant's retention; dead-letter index rows once they died
/// longer ago than that, and never later than the DLQ topic deletes their payloads. One processor
/// instance purges at a time (a MySQL named lock), a bounded batch per short transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Run the purge in this instance (it still purges only while it holds the leader lock).
    pub enabled: bool,
    /// Retention of a tenant without its own entry in `tenants` (0 keeps tasks forever).
    pub default_retention_ms: u64,
    /// Tenant -> retention in milliseconds (0 keeps that tenant's tasks forever). At least an
    /// hour otherwise: a replayed record of a purged task would run it again.
    pub tenants: BTreeMap<String, u64>,
    /// Pause between purge rounds, and between tries to become the leader.
    pub interval_ms: u64,
    /// Rows per batch (one short transaction each).
    pub batch_size: u32,
    /// Shortest pause between two batches.
    pub batch_pause_ms: u64,
    /// The pause after a batch is at least this many times as long as the batch took, so the
    /// purge holds at most about `1 / (1 + factor)` of its time in transactions and slows down
    /// by itself when MySQL does (0: only `batch_pause_ms`).
    pub batch_pause_factor: f64,
    /// How long the DLQ topic keeps records; unset: read the topic's `retention.ms` from Kafka at
    /// every round (the topics are created with 30 days). Dead-letter index rows are deleted
    /// `dlq_margin_ms` before that, whatever the tenant's retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_topic_retention_ms: Option<u64>,
    /// How much earlier than the DLQ topic's retention its index rows go (covers the interval
    /// between rounds and clock skew between Kafka and MySQL).
    pub dlq_margin_ms: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            default_retention_ms: 7 * 86_400_000,
            tenants: BTreeMap::new(),
            interval_ms: 60_000,
            batch_size: 100,
            batch_pause_ms: 20,
            batch_pause_factor: 1.0,
            dlq_topic_retention_ms: None,
            dlq_margin_ms: 3_600_000,
        }
    }
}

impl RetentionSettings {
    /// The retention of `tenant`'s tasks (`None`: kept forever).
    pub fn retention_of(&self, tenant: &str) -> Option<std::time::Duration> {
        let ms = self
            .tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.default_retention_ms);
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }

    /// The shortest retention allowed (0 excepted).
    pub const MIN_RETENTION_MS: u64 = 3_600_000;

    /// The pause after a batch that took `took`: `batch_pause_ms`, or `batch_pause_factor` times
    /// `took` when that is longer.
    pub fn pause_after(&self, took: std::time::Duration) -> std::time::Duration {
        std::time::Duration::from_millis(self.batch_pause_ms)
            .max(took.mul_f64(self.batch_pause_factor))
    }
}

impl Settings {
    /// Checks cross-field rules that types cannot express, naming the bad key.
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, why: &str| Err(SettingsError(format!("{key}: {why}")));
        dispatch_runtime::server::validate(&self.grpc)?;
        let c = &self.consumer;
        if c.group.is_empty() {
            return bad("consumer.group", "must not be empty");
        }
        if c.priority_weights.contains(&0) {
            return bad(
                "consumer.priority_weights",
                "every weight must be at least 1",
            );
        }
        if c.max_concurrency == 0 {
            return bad("consumer.max_concurrency", "must be at least 1");
        }
        if c.max_in_flight < c.max_concurrency {
            return bad(
                "consumer.max_in_flight",
                "must be at least consumer.max_concurrency",
            );
        }
        if c.max_in_flight_kbytes == 0 {
            return bad("consumer.max_in_flight_kbytes", "must be at least 1");
        }
        if !(0.0..1.0).contains(&c.resume_ratio) {
            return bad("consumer.resume_ratio", "must be in [0, 1)");
        }
        if !(1..=1_000).contains(&c.fetch_wait_ms) {
            return bad("consumer.fetch_wait_ms", "must be between 1 and 1000");
        }
        if c.fetch_min_kbytes == 0 || c.fetch_min_kbytes > c.prefetch_kbytes {
            return bad(
                "consumer.fetch_min_kbytes",
                "must be at least 1 and at most consumer.prefetch_kbytes",
            );
        }
        if c.pause_sync_ms < 10 {
            return bad("consumer.pause_sync_ms", "must be at least 10");
        }
        if self.writer.max_concurrent_batches == 0 {
            return bad("writer.max_concurrent_batches", "must be at least 1");
        }
        if self.writer.max_rows == 0 {
            return bad("writer.max_rows", "must be at least 1");
        }
        if self.gate.max_ids == 0 {
            return bad("gate.max_ids", "must be at least 1");
        }
        if self.scheduler.batch_size == 0 {
            return bad("scheduler.batch_size", "must be at least 1");
        }
        if !(1..=1_000).contains(&self.schedules.batch_size) {
            return bad("schedules.batch_size", "must be between 1 and 1000");
        }
        if self.schedules.interval_ms < 10 {
            return bad("schedules.interval_ms", "must be at least 10");
        }
        if self.schedules.misfire_grace_ms < self.schedules.interval_ms {
            return bad(
                "schedules.misfire_grace_ms",
                "must be at least schedules.interval_ms (else every fire would count as missed)",
            );
        }
        let r = &self.retention;
        if !(1..=10_000).contains(&r.batch_size) {
            return bad("retention.batch_size", "must be between 1 and 10000");
        }
        if r.interval_ms < 100 {
            return bad("retention.interval_ms", "must be at least 100");
        }
        if !(0.0..=100.0).contains(&r.batch_pause_factor) {
            return bad("retention.batch_pause_factor", "must be between 0 and 100");
        }
        if self.health.probe_interval_ms < 10 {
            return bad("health.probe_interval_ms", "must be at least 10");
        }
        if self.health.probe_timeout_ms == 0 {
            return bad("health.probe_timeout_ms", "must be at least 1");
        }
        let short = |ms: u64| ms != 0 && ms < RetentionSettings::MIN_RETENTION_MS;
        if short(r.default_retention_ms) {
            return bad(
                "retention.default_retention_ms",
                "must be 0 (keep forever) or at least 3600000 (an hour)",
            );
        }
        for (tenant, &ms) in &r.tenants {
            if short(ms) {
                return bad(
                    &format!("retention.tenants.{tenant}"),
                    "must be 0 (keep forever) or at least 3600000 (an hour)",
                );
            }
        }
        for (ty, t) in &self.handlers.types {
            if !["noop", "simulate", "http", "custom"].contains(&t.kind.as_str()) {
                return bad(
                    &format!("handlers.types.{ty}.kind"),
                    "must be noop, simulate, http or custom (registered in code)",
                );
            }
            if t.kind == "http" && !self.handlers.http.contains_key(ty) {
                return bad(
                    &format!("handlers.http.{ty}"),
                    "an http handler needs its endpoint (url)",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_the_fixed_ports() {
        let s = Settings::default();
        s.validate().expect("valid");
        assert_eq!(s.grpc.listen.port(), 50053);
        assert_eq!(s.admin.listen.port(), 9603);
        assert_eq!(s.consumer.priority_weights, [6, 3, 1]);
    }

    #[test]
    fn env_and_validation_name_keys() {
        let s: Settings = dispatch_runtime::settings::load_from(
            None,
            vec![(
                "DISPATCH_CONSUMER__MAX_CONCURRENCY".to_string(),
                "8".to_string(),
            )],
        )
        .expect("load");
        assert_eq!(s.consumer.max_concurrency, 8);
        // The processor has no Redis: a Redis setting is a mistake in its environment.
        let err = dispatch_runtime::settings::load_from::<Settings>(
            None,
            vec![(
                "DISPATCH_REDIS__URL".to_string(),
                "redis://x:6379/0".to_string(),
            )],
        )
        .expect_err("no [redis] section");
        assert!(err.to_string().contains("redis"), "{err}");
        let mut bad = Settings::default();
        bad.consumer.priority_weights = [1, 0, 1];
        let err = bad.validate().expect_err("zero weight");
        assert!(
            err.to_string().contains("consumer.priority_weights"),
            "{err}"
        );
        for (wait, min_kbytes, key) in [
            (0, 64, "consumer.fetch_wait_ms"),
            (1_001, 64, "consumer.fetch_wait_ms"),
            (5, 0, "consumer.fetch_min_kbytes"),
            (5, 4_096, "consumer.fetch_min_kbytes"),
        ] {
            let mut bad = Settings::default();
            bad.consumer.fetch_wait_ms = wait;
            bad.consumer.fetch_min_kbytes = min_kbytes;
            let err = bad.validate().expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
        let mut bad = Settings::default();
        bad.handlers.types.insert(
            "x".into(),
            TypeSettings {
                kind: "http".into(),
                timeout_ms: None,
                concurrency: None,
            },
        );
        assert!(
            bad.validate()
                .expect_err("no url")
                .to_string()
                .contains("handlers.http.x")
        );
    }

    #[test]
    fn retention_is_per_tenant_with_a_default_and_refuses_short_ones() {
        let s: Settings = dispatch_runtime::settings::load_from(
            None,
            vec![
                (
                    "DISPATCH_RETENTION__TENANTS__ACME".to_string(),
                    "86400000".to_string(),
                ),
                (
                    "DISPATCH_RETENTION__TENANTS__GLOBEX".to_string(),
                    "0".to_string(),
                ),
            ],
        )
        .expect("load");
        s.validate().expect("valid");
        let r = &s.retention;
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(r.retention_of("acme"), Some(day));
        assert_eq!(r.retention_of("globex"), None, "0 keeps forever");
        assert_eq!(r.retention_of("initech"), Some(day * 7), "the default");
        let mut bad = Settings::default();
        bad.retention.tenants.insert("acme".into(), 60_000);
        let err = bad.validate().expect_err("a minute is too short");
        assert!(err.to_string().contains("retention.tenants.acme"), "{err}");
        let mut bad = Settings::default();
        bad.retention.batch_size = 0;
        assert!(
            bad.validate()
                .expect_err("empty batches")
                .to_string()
                .contains("retention.batch_size")
        );
        for f in [-1.0, 101.0, f64::NAN] {
            let mut bad = Settings::default();
            bad.retention.batch_pause_factor = f;
            assert!(
                bad.validate()
                    .expect_err("factor out of range")
                    .to_string()
                    .contains("retention.batch_pause_factor"),
                "{f}"
            );
        }
    }

    #[test]
    fn the_pause_after_a_batch_grows_with_the_batch() {
        let ms = std::time::Duration::from_millis;
        let r = RetentionSettings::default();
        assert_eq!(r.pause_after(ms(5)), ms(20), "the shortest pause");
        assert_eq!(r.pause_after(ms(300)), ms(300), "as long as the batch took");
        let r = RetentionSettings {
            batch_pause_factor: 3.0,
            ..RetentionSettings::default()
        };
        assert_eq!(r.pause_after(ms(300)), ms(900));
        let r = RetentionSettings {
            batch_pause_factor: 0.0,
            ..RetentionSettings::default()
        };
        assert_eq!(r.pause_after(ms(300)), ms(20), "0: the fixed pause only");
    }
}
