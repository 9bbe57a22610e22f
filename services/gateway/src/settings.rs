//! Gateway settings: the shared runtime sections plus the gateway's own (`[limits]`, `[outbox]`,
//! `[idempotency]`, `[cancel]`, `[health]`). Loaded by `dispatch_runtime::settings::load`
//! (defaults < TOML file < `DISPATCH_<SECTION>__<KEY>`).
//!
//! Over 400 lines because every gateway-only section is defined here with its defaults and
//! documented fields, and the tests start near line 351; `[outbox]`, the largest section, would
//! move to a module of its own first.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use dispatch_runtime::server::auth::AuthSettings;
use dispatch_runtime::settings::{
    AdminSettings, DbSettings, GrpcSettings, KafkaSettings, RedisSettings, SettingsError,
    ShutdownSettings, TelemetrySettings,
};
use serde::{Deserialize, Serialize};

/// Everything the gateway reads at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The TaskService gRPC server (default 127.0.0.1:50051).
    pub grpc: GrpcSettings,
    /// `/metrics`, `/healthz`, `/readyz` (default 127.0.0.1:9601).
    pub admin: AdminSettings,
    /// Brokers, topic prefix, producer tuning.
    pub kafka: KafkaSettings,
    /// MySQL: the outbox and the idempotency fallback.
    pub database: DbSettings,
    /// Redis: the idempotency fast path.
    pub redis: RedisSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// API keys (hashed) mapped to tenants.
    pub auth: AuthSettings,
    /// Drain bound after SIGTERM.
    pub shutdown: ShutdownSettings,
    /// Rate limits.
    pub limits: LimitSettings,
    /// Kafka produce timeout, circuit breaker and the outbox relay.
    pub outbox: OutboxSettings,
    /// Idempotency fast path.
    pub idempotency: IdempotencySettings,
    /// Cancel routing for tasks not yet in the store.
    pub cancel: CancelSettings,
    /// Dependency probes.
    pub health: HealthSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
                ..GrpcSettings::default()
            },
            admin: AdminSettings::on_port(9601),
            kafka: KafkaSettings::default(),
            database: DbSettings::default(),
            redis: RedisSettings::default(),
            telemetry: TelemetrySettings::default(),
            auth: AuthSettings::default(),
            shutdown: ShutdownSettings::default(),
            limits: LimitSettings::default(),
            outbox: OutboxSettings::default(),
            idempotency: IdempotencySettings::default(),
            cancel: CancelSettings::default(),
            health: HealthSettings::default(),
        }
    }
}

impl Settings {
    /// Checks cross-field rules that serde cannot express.
    ///
    /// # Errors
    /// A message naming the bad key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |m: &str| Err(SettingsError(m.to_owned()));
        if self.outbox.produce_timeout_ms == 0 {
            return bad("outbox.produce_timeout_ms must be > 0");
        }
        if self.outbox.relay_batch_size == 0 {
            return bad("outbox.relay_batch_size must be > 0");
        }
        if self.outbox.max_attempts == 0 {
            return bad("outbox.max_attempts must be > 0");
        }
        if self.outbox.relay_fence_ms >= self.outbox.relay_lease_ms {
            return bad("outbox.relay_fence_ms must be below outbox.relay_lease_ms");
        }
        if self.outbox.breaker_failures == 0 {
            return bad("outbox.breaker_failures must be > 0");
        }
        dispatch_runtime::server::validate(&self.grpc)?;
        if self.kafka.partitions <= 0 {
            return bad("kafka.partitions must be > 0");
        }
        if self.limits.replicas == 0 {
            return bad("limits.replicas must be > 0");
        }
        if self.limits.shared && self.limits.redis_timeout_ms == 0 {
            return bad("limits.redis_timeout_ms must be > 0");
        }
        if self.limits.max_schedule_horizon_secs == 0 {
            return bad("limits.max_schedule_horizon_secs must be > 0");
        }
        if self.limits.max_workflow_nodes == 0 {
            return bad("limits.max_workflow_nodes must be > 0");
        }
        if self.limits.max_workflow_edges == 0 {
            return bad("limits.max_workflow_edges must be > 0");
        }
        if self.limits.max_task_timeout_ms == 0 {
            return bad("limits.max_task_timeout_ms must be > 0");
        }
        for (ty, max) in &self.limits.task_type_max_timeout_ms {
            if let Err(e) = dispatch_core::TaskType::parse(ty) {
                return Err(SettingsError(format!(
                    "limits.task_type_max_timeout_ms.{ty}: the task type {e}"
                )));
            }
            if *max == 0 {
                return Err(SettingsError(format!(
                    "limits.task_type_max_timeout_ms.{ty} must be > 0"
                )));
            }
        }
        Ok(())
    }
}

/// `[limits]`: rate limits (a rate of 0 disables that limit), and the largest per-task timeout
/// a submit may ask for. The rates are cluster-wide: every replica decides in one Redis GCRA per
/// tenant (and one global), falling back to the rates divided by `replicas` while Redis cannot
/// decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Tasks per second one tenant may submit across all replicas (a batch costs one token per
    /// item).
    pub tenant_rps: u32,
    /// Tokens a tenant may spend at once (at least the largest batch, 1000, also once divided
    /// by `replicas` for the fallback).
    pub tenant_burst: u32,
    /// Tasks per second across all tenants and replicas.
    pub global_rps: u32,
    /// Global burst.
    pub global_burst: u32,
    /// Gateway replicas sharing these limits: while Redis cannot decide, each replica allows
    /// the rates and bursts divided by this (rounded down, at least 1). Keep it at the
    /// Deployment's replica count (the HPA's maximum errs on the safe side).
    pub replicas: u32,
    /// Decide in Redis, shared by every replica (false: local buckets of rate / `replicas` only).
    pub shared: bool,
    /// Budget of one Redis decision; past it this request is decided locally and counts as a
    /// Redis failure.
    pub redis_timeout_ms: u64,
    /// How long a replica may spend cells leased from Redis: one Redis call leases up to
    /// `rate x lease_ms` cells (bounded by the burst) for a tenant, debited from its bucket and
    /// the global one, and its requests spend them
    /// without a Redis call until they run out or this long has passed (unused cells are then
    /// dropped: slight under-admission, never more than the quota). 0: one Redis call per
    /// request.
    pub lease_ms: u64,
    /// Consecutive Redis failures that open the rate-limit breaker (decisions stay local while
    /// it is open).
    pub breaker_failures: u32,
    /// First open period of the rate-limit breaker (doubles up to `breaker_max_open_ms`).
    pub breaker_open_ms: u64,
    /// Longest open period of the rate-limit breaker.
    pub breaker_max_open_ms: u64,
    /// Largest `TaskSpec.timeout_ms` accepted (default 3_600_000, 1 h); above it a submit is
    /// refused with INVALID_ARGUMENT naming `task.timeout_ms` and this limit.
    pub max_task_timeout_ms: u32,
    /// Task type -> its own largest `timeout_ms`, used instead of `max_task_timeout_ms`
    /// (`[limits.task_type_max_timeout_ms]`, e.g. `"email.send" = 60000`).
    pub task_type_max_timeout_ms: BTreeMap<String, u32>,
    /// How far ahead `TaskSpec.run_at` and `deadline` may be, in seconds (default one year,
    /// 31_536_000); beyond it a submit is refused with INVALID_ARGUMENT naming the field and
    /// this limit.
    pub max_schedule_horizon_secs: u64,
    /// Most nodes one SubmitWorkflow may hold (default 2_000); above it the request is refused
    /// with INVALID_ARGUMENT naming `nodes` and this limit. The rate limits charge one token per
    /// node, so keep `tenant_burst` (divided by `replicas`) at or above it.
    pub max_workflow_nodes: usize,
    /// Most dependencies one SubmitWorkflow may hold, all nodes' together (default 10_000);
    /// above it the request is refused with INVALID_ARGUMENT naming `nodes` and this limit.
    pub max_workflow_edges: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            tenant_rps: 20_000,
            tenant_burst: 20_000,
            global_rps: 100_000,
            global_burst: 100_000,
            replicas: 1,
            shared: true,
            redis_timeout_ms: 5,
            lease_ms: 20,
            breaker_failures: 5,
            breaker_open_ms: 1_000,
            breaker_max_open_ms: 30_000,
            max_task_timeout_ms: dispatch_core::task::limits::TASK_TIMEOUT_MAX_MS,
            task_type_max_timeout_ms: BTreeMap::new(),
            max_schedule_horizon_secs: dispatch_core::validate::DEFAULT_SCHEDULE_HORIZON_SECS,
            max_workflow_nodes: dispatch_core::workflow::DEFAULT_MAX_NODES,
            max_workflow_edges: dispatch_core::workflow::DEFAULT_MAX_EDGES,
        }
    }
}

impl LimitSettings {
    /// What submitted specs are validated under.
    pub fn spec_limits(&self) -> dispatch_core::validate::SpecLimits {
        dispatch_core::validate::SpecLimits {
            max_task_timeout_ms: self.max_task_timeout_ms,
            task_type_max_timeout_ms: self.task_type_max_timeout_ms.clone(),
            max_schedule_horizon_secs: self.max_schedule_horizon_secs,
        }
    }
}

/// `[outbox]`: when Kafka counts as unavailable, and how the relay drains the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// A submit waits this long for its delivery report before it falls back to the outbox.
    /// Keep it well below `kafka.message_timeout_ms`: a record that times out here may still
    /// be delivered later (the processor dedupes that copy by task id).
    pub produce_timeout_ms: u64,
    /// Kafka counts as at risk when records have waited this long without any delivery report
    /// (of any record): submits then go to the outbox at once, and those already waiting give
    /// up and go there too, instead of waiting out `produce_timeout_ms`.
    pub produce_stall_ms: u64,
    /// Time kept back from a caller's deadline for the outbox write: a produce waits at most
    /// until `deadline - write_reserve_ms`, then the submit falls back to the outbox. A deadline
    /// that cannot be met is answered DEADLINE_EXCEEDED, with nothing written.
    pub write_reserve_ms: u64,
    /// A producer that has had work (records waiting or failing) but no delivery report for this
    /// long, while the cluster answers metadata requests, is wedged: the gateway logs
    /// librdkafka's statistics and recent log lines and rebuilds it.
    pub producer_wedge_ms: u64,
    /// librdkafka debug contexts captured (never logged) for the wedge report, e.g.
    /// `"broker,eos"`; empty for none. librdkafka's `debug` in `kafka.librdkafka` wins.
    pub producer_debug: String,
    /// Consecutive produce failures that open the Kafka circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a trial call (doubles up to `breaker_max_open_ms`).
    pub breaker_open_ms: u64,
    /// Upper bound of the breaker's open time.
    pub breaker_max_open_ms: u64,
    /// Run the relay in this instance (one instance at a time relays, by a MySQL named lock).
    pub relay_enabled: bool,
    /// How often the relay (and the sticky-routing check) looks for pending rows when idle.
    pub relay_interval_ms: u64,
    /// Rows claimed per relay transaction.
    pub relay_batch_size: u32,
    /// Publish attempts before a row is marked `dead`.
    pub max_attempts: u32,
    /// First per-row retry delay; doubles per attempt.
    pub relay_backoff_initial_ms: u64,
    /// Upper bound of the per-row retry delay.
    pub relay_backoff_max_ms: u64,
    /// How often a non-leader retries taking the relay lock.
    pub lock_retry_ms: u64,
    /// A new relay leader publishes nothing until this long after it took the lock, so a
    /// predecessor that lost the lock has stopped (it checks at least every `relay_fence_ms`).
    pub relay_lease_ms: u64,
    /// How stale the leader's last "I hold the lock" answer may be when it publishes a record.
    pub relay_fence_ms: u64,
    /// Published rows are deleted this long after publication (0 keeps them). Until the
    /// processor stored the task, its row is how the gateway recognises it without Redis.
    pub published_retention_ms: u64,
    /// How often the relay leader deletes published rows past their retention.
    pub purge_interval_ms: u64,
    /// FAULT SWITCH, for fault tests only; empty (the default) turns it off. While a file exists
    /// at this path, every relay publish fails without reaching Kafka (the row is retried with
    /// backoff and may go `dead`, exactly as if Kafka had refused it). The file's content may be
    /// a share in 0..=1 of publishes to fail (empty or unreadable: all). Checked once per round.
    pub fault_fail_publishes_file: String,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            produce_timeout_ms: 3_000,
            produce_stall_ms: 1_000,
            write_reserve_ms: 250,
            producer_wedge_ms: 15_000,
            producer_debug: "broker,eos".into(),
            breaker_failures: 5,
            breaker_open_ms: 1_000,
            breaker_max_open_ms: 30_000,
            relay_enabled: true,
            relay_interval_ms: 200,
            relay_batch_size: 500,
            max_attempts: 20,
            relay_backoff_initial_ms: 500,
            relay_backoff_max_ms: 60_000,
            lock_retry_ms: 2_000,
            relay_lease_ms: 2_000,
            relay_fence_ms: 100,
            published_retention_ms: 86_400_000,
            purge_interval_ms: 60_000,
            fault_fail_publishes_file: String::new(),
        }
    }
}

/// `[idempotency]`: the Redis fast path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySettings {
    /// How long Redis remembers a (tenant, idempotency key); after that the store fallback and the
    /// processor's dedupe still hold.
    pub ttl_ms: u64,
    /// How long MySQL keeps what a key was first submitted with (`idempotency_keys`); past it a
    /// resubmit still finds its task id (one task, one execution) but parameters are not
    /// compared. 0 keeps them. The relay leader purges.
    pub store_retention_ms: u64,
    /// Bound on the MySQL side of a keyed submit's check (binding the key, looking the task
    /// up); past it MySQL counts as failing for that submit.
    pub store_timeout_ms: u64,
    /// Consecutive Redis failures that open the Redis circuit breaker.
    pub breaker_failures: u32,
    /// How long the Redis breaker stays open before a trial call.
    pub breaker_open_ms: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            ttl_ms: 86_400_000,
            store_retention_ms: 7 * 86_400_000,
            store_timeout_ms: 3_000,
            breaker_failures: 3,
            breaker_open_ms: 2_000,
        }
    }
}

/// `[cancel]`: a small memory of recent submits, so a cancel right after a submit (before the
/// processor stored the task) routes to the submit's partition without the caller's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CancelSettings {
    /// Recent submits remembered, at most (the newest half of them at least).
    pub recent_capacity: u64,
    /// How long one is remembered, at most (half of it at least).
    pub recent_ttl_ms: u64,
}

impl Default for CancelSettings {
    fn default() -> Self {
        Self {
            recent_capacity: 100_000,
            recent_ttl_ms: 600_000,
        }
    }
}

/// `[health]`: dependency probes behind gRPC health and `/readyz` (shared with the processor).
pub use dispatch_runtime::settings::HealthSettings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_env_overrides_apply() {
        Settings::default().validate().expect("defaults valid");
        let s: Settings = dispatch_runtime::settings::load_from(
            None,
            [
                ("DISPATCH_LIMITS__TENANT_RPS".to_string(), "7".to_string()),
                (
                    "DISPATCH_OUTBOX__PRODUCE_TIMEOUT_MS".to_string(),
                    "250".to_string(),
                ),
            ],
        )
        .expect("load");
        assert_eq!(s.limits.tenant_rps, 7);
        assert_eq!(s.outbox.produce_timeout_ms, 250);
        assert_eq!(s.grpc.listen.port(), 50051);
    }

    #[test]
    fn the_workflow_node_bound_loads_and_is_checked() {
        assert_eq!(
            Settings::default().limits.max_workflow_nodes,
            dispatch_core::workflow::DEFAULT_MAX_NODES
        );
        let s: Settings = dispatch_runtime::settings::load_from(
            None,
            [(
                "DISPATCH_LIMITS__MAX_WORKFLOW_NODES".to_string(),
                "50".to_string(),
            )],
        )
        .expect("load");
        assert_eq!(s.limits.max_workflow_nodes, 50);
        let mut bad = Settings::default();
        bad.limits.max_workflow_nodes = 0;
        assert!(
            bad.validate()
                .expect_err("0 nodes")
                .to_string()
                .contains("limits.max_workflow_nodes")
        );
    }

    #[test]
    fn task_timeout_maxima_load_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("gw-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            "[limits]\nmax_task_timeout_ms = 120000\n\n[limits.task_type_max_timeout_ms]\n\"email.send\" = 5000\n",
        )
        .expect("write");
        let s: Settings =
            dispatch_runtime::settings::load_from(Some(file.as_path()), []).expect("load");
        s.validate().expect("valid");
        let l = s.limits.spec_limits();
        assert_eq!(l.max_task_timeout_ms, 120_000);
        assert_eq!(l.task_type_max_timeout_ms.get("email.send"), Some(&5_000));
        assert_eq!(
            Settings::default().limits.max_task_timeout_ms,
            3_600_000,
            "1 h by default"
        );
        let mut bad = Settings::default();
        bad.limits.max_task_timeout_ms = 0;
        assert!(bad.validate().is_err());
        let mut bad = Settings::default();
        bad.limits
            .task_type_max_timeout_ms
            .insert("Not A Type".into(), 1_000);
        let err = bad.validate().expect_err("bad type").to_string();
        assert!(err.contains("limits.task_type_max_timeout_ms"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn shared_rate_limit_settings_load_and_are_checked() {
        let s: Settings = dispatch_runtime::settings::load_from(
            None,
            [
                ("DISPATCH_LIMITS__REPLICAS".to_string(), "4".to_string()),
                (
                    "DISPATCH_LIMITS__REDIS_TIMEOUT_MS".to_string(),
                    "3".to_string(),
                ),
            ],
        )
        .expect("load");
        assert_eq!(s.limits.replicas, 4);
        assert_eq!(s.limits.redis_timeout_ms, 3);
        assert!(s.limits.shared, "shared through redis by default");
        let mut bad = Settings::default();
        bad.limits.replicas = 0;
        assert!(
            bad.validate()
                .expect_err("0 replicas")
                .to_string()
                .contains("limits.replicas")
        );
        let mut bad = Settings::default();
        bad.limits.redis_timeout_ms = 0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = dispatch_runtime::settings::load_from::<Settings>(
            None,
            [("DISPATCH_OUTBOX__NOPE".to_string(), "1".to_string())],
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("nope"), "{err}");
        let bad = Settings {
            outbox: OutboxSettings {
                relay_batch_size: 0,
                ..OutboxSettings::default()
            },
            ..Settings::default()
        };
        assert!(
            bad.validate()
                .expect_err("invalid")
                .to_string()
                .contains("relay_batch_size")
        );
    }
}
