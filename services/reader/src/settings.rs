//! The reader's settings: the shared runtime sections plus `[cache]`, `[query]`, `[limits]` and
//! `[health]`.

use std::net::SocketAddr;

use dispatch_runtime::SettingsError;
use dispatch_runtime::server::auth::AuthSettings;
use dispatch_runtime::settings::{
    AdminSettings, DbSettings, GrpcSettings, KafkaSettings, RedisSettings, ShutdownSettings,
    TelemetrySettings,
};
use serde::{Deserialize, Serialize};

/// Everything the reader is configured with (see `dispatch_runtime::settings` for layering).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The TaskQueryService gRPC server (default 127.0.0.1:50052).
    pub grpc: GrpcSettings,
    /// The admin HTTP server (default 127.0.0.1:9602).
    pub admin: AdminSettings,
    /// Who may call.
    pub auth: AuthSettings,
    /// MySQL; lookups use `replica_url` when it is set.
    pub database: DbSettings,
    /// Redis (the L2 cache).
    pub redis: RedisSettings,
    /// Kafka (the events topic that invalidates the caches).
    pub kafka: KafkaSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// Shutdown bounds.
    pub shutdown: ShutdownSettings,
    /// Cache tiers, read-your-writes and degradation.
    pub cache: CacheSettings,
    /// Bounds of query answers.
    pub query: QuerySettings,
    /// Per-tenant read rate limits, shared by every reader replica.
    pub limits: ReadLimitSettings,
    /// Readiness from run-time TLS failures of MySQL, Redis and Kafka.
    pub health: HealthSettings,
}

/// `[health]`: how run-time TLS failures of the dependencies turn into readiness (see
/// `app`'s probe, which runs every `cache.probe_interval_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// How long a TLS failure of a dependency (a certificate that does not verify, a refused
    /// handshake, a wrong SASL password) keeps its readiness component `<dependency>_tls` failing
    /// at least, besides until the dependency has worked again (as the gateway's
    /// `health.tls_hold_ms`; see `dispatch_runtime::tls_failures`).
    pub tls_hold_ms: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            tls_hold_ms: dispatch_runtime::tls_failures::DEFAULT_HOLD_MS,
        }
    }
}

/// `[limits]`: per-tenant read rate limits (GetTask, BatchGetTasks, ListTasks, WatchTask),
/// cluster-wide: every replica decides in one Redis GCRA per tenant, falling back to the rate
/// divided by `replicas` while Redis cannot decide. Refused reads answer RESOURCE_EXHAUSTED with
/// `retry-after-ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadLimitSettings {
    /// Reads per second one tenant may make across all replicas (0 disables the limit). A
    /// BatchGetTasks costs one per id; GetTask, ListTasks (per page) and opening a WatchTask
    /// stream one each.
    pub tenant_rps: u32,
    /// Reads a tenant may make at once (at least the largest BatchGetTasks, 1000, also once
    /// divided by `replicas` for the fallback).
    pub tenant_burst: u32,
    /// Reader replicas sharing the limit: while Redis cannot decide, each replica allows the
    /// rate and burst divided by this (rounded down, at least 1).
    pub replicas: u32,
    /// Decide in Redis, shared by every replica (false: local buckets of rate / `replicas` only).
    pub shared: bool,
    /// Budget of one Redis decision; past it this read is decided locally and counts as a Redis
    /// failure.
    pub redis_timeout_ms: u64,
    /// How long a replica may spend cells leased from Redis: one Redis call leases up to
    /// `rate x lease_ms` cells (bounded by the burst) for this tenant, and requests spend them
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
}

impl Default for ReadLimitSettings {
    fn default() -> Self {
        Self {
            tenant_rps: 50_000,
            tenant_burst: 50_000,
            replicas: 1,
            shared: true,
            redis_timeout_ms: 5,
            lease_ms: 20,
            breaker_failures: 5,
            breaker_open_ms: 1_000,
            breaker_max_open_ms: 30_000,
        }
    }
}

/// `[query]`: bounds of BatchGetTasks and ListTasks answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuerySettings {
    /// Largest encoded answer of BatchGetTasks or ListTasks in the FULL view (payloads and
    /// results): a ListTasks page ends early, BatchGetTasks lists the rest in `omitted`. The
    /// default stays under the 4 MiB a gRPC client accepts by default.
    pub max_response_bytes: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            max_response_bytes: 4 * 1024 * 1024 - 64 * 1024,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
                ..GrpcSettings::default()
            },
            admin: AdminSettings::on_port(9602),
            auth: AuthSettings::default(),
            database: DbSettings::default(),
            redis: RedisSettings::default(),
            kafka: KafkaSettings::default(),
            telemetry: TelemetrySettings::default(),
            shutdown: ShutdownSettings::default(),
            cache: CacheSettings::default(),
            query: QuerySettings::default(),
            limits: ReadLimitSettings::default(),
            health: HealthSettings::default(),
        }
    }
}

/// `[cache]`: the L1/L2 tiers, freshness and degradation knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Use the in-process L1 (false: every lookup goes to Redis, then MySQL; for benchmarks).
    pub l1_enabled: bool,
    /// Upper bound of the L1's weighted size (approximate encoded bytes of the cached tasks).
    pub l1_max_bytes: u64,
    /// L1 lifetime of a live (non-terminal) task; events keep it fresh in between.
    pub l1_live_ttl_ms: u64,
    /// L1 lifetime of a terminal task (it never changes again, redrives aside).
    pub l1_terminal_ttl_ms: u64,
    /// L1 lifetime of a negative entry (an unknown id).
    pub l1_negative_ttl_ms: u64,
    /// Every TTL is drawn uniformly from `ttl * (1 ± ttl_jitter_ratio)` so entries cached together
    /// do not expire together.
    pub ttl_jitter_ratio: f64,
    /// Upper bound of the "last known" copies kept to answer (flagged stale) when MySQL fails.
    pub stale_max_bytes: u64,
    /// How long a last-known copy may be served after it was cached.
    pub stale_max_age_ms: u64,
    /// Use Redis as L2.
    pub l2_enabled: bool,
    /// Redis lifetime of a live task.
    pub l2_live_ttl_ms: u64,
    /// Redis lifetime of a terminal task.
    pub l2_terminal_ttl_ms: u64,
    /// Redis lifetime of a negative entry.
    pub l2_negative_ttl_ms: u64,
    /// XFetch `beta` (> 1 refreshes earlier, < 1 later; 0 disables early refresh).
    pub xfetch_beta: f64,
    /// How long GetTask with `min_version` waits for that version to become visible.
    pub read_your_writes_wait_ms: u64,
    /// While waiting, re-read MySQL this often (events usually answer first).
    pub read_your_writes_poll_ms: u64,
    /// MySQL lookups in flight at once (the rest queue).
    pub store_max_concurrency: usize,
    /// How long a lookup may queue for a MySQL slot before it counts as a store failure.
    pub store_queue_timeout_ms: u64,
    /// Consecutive Redis failures that open the breaker.
    pub breaker_failures: u32,
    /// First open period of the Redis breaker (doubles up to `breaker_max_open_ms`).
    pub breaker_open_ms: u64,
    /// Longest open period of the Redis breaker.
    pub breaker_max_open_ms: u64,
    /// Interval of the background MySQL/Redis probes that drive health and recovery.
    pub probe_interval_ms: u64,
    /// WatchTask re-reads the task this often in case an event was missed.
    pub watch_poll_ms: u64,
    /// WatchTask streams open at once on this instance; more are refused (RESOURCE_EXHAUSTED).
    pub watch_max_streams: usize,
    /// WatchTask streams one tenant may hold open at once on this instance.
    pub watch_max_streams_per_tenant: usize,
    /// A WatchTask stream ends after this long (UNAVAILABLE: watch again, with `min_version`), so
    /// a task that never finishes cannot hold a stream, its task and its channel forever.
    pub watch_max_duration_ms: u64,
    /// Prefetch bound of the events consumer in KiB (librdkafka `queued.max.messages.kbytes`,
    /// whose default of 64 MiB would count against the reader's memory on top of the caches).
    pub events_prefetch_kbytes: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            l1_enabled: true,
            l1_max_bytes: 64 * 1024 * 1024,
            l1_live_ttl_ms: 2_000,
            l1_terminal_ttl_ms: 600_000,
            l1_negative_ttl_ms: 1_000,
            ttl_jitter_ratio: 0.2,
            stale_max_bytes: 16 * 1024 * 1024,
            stale_max_age_ms: 300_000,
            l2_enabled: true,
            l2_live_ttl_ms: 10_000,
            l2_terminal_ttl_ms: 3_600_000,
            l2_negative_ttl_ms: 2_000,
            xfetch_beta: 1.0,
            read_your_writes_wait_ms: 1_000,
            read_your_writes_poll_ms: 100,
            store_max_concurrency: 16,
            store_queue_timeout_ms: 1_000,
            breaker_failures: 3,
            breaker_open_ms: 1_000,
            breaker_max_open_ms: 30_000,
            probe_interval_ms: 1_000,
            watch_poll_ms: 5_000,
            watch_max_streams: 10_000,
            watch_max_streams_per_tenant: 1_000,
            watch_max_duration_ms: 3_600_000,
            events_prefetch_kbytes: 4_096,
        }
    }
}

impl Settings {
    /// Checks what serde cannot, naming the bad key.
    ///
    /// # Errors
    /// The first invalid value.
    pub fn validate(&self) -> Result<(), SettingsError> {
        dispatch_runtime::server::validate(&self.grpc)?;
        let c = &self.cache;
        let bad = |m: &str| Err(SettingsError(m.to_owned()));
        if !(0.0..1.0).contains(&c.ttl_jitter_ratio) {
            return bad("cache.ttl_jitter_ratio must be in [0, 1)");
        }
        if !(c.xfetch_beta >= 0.0 && c.xfetch_beta.is_finite()) {
            return bad("cache.xfetch_beta must be a finite number >= 0");
        }
        if c.store_max_concurrency == 0 {
            return bad("cache.store_max_concurrency must be at least 1");
        }
        if c.breaker_failures == 0 {
            return bad("cache.breaker_failures must be at least 1");
        }
        if c.l1_max_bytes == 0 || c.stale_max_bytes == 0 {
            return bad("cache.l1_max_bytes and cache.stale_max_bytes must be positive");
        }
        for (name, v) in [
            ("cache.l1_live_ttl_ms", c.l1_live_ttl_ms),
            ("cache.l1_terminal_ttl_ms", c.l1_terminal_ttl_ms),
            ("cache.l1_negative_ttl_ms", c.l1_negative_ttl_ms),
            ("cache.l2_live_ttl_ms", c.l2_live_ttl_ms),
            ("cache.l2_terminal_ttl_ms", c.l2_terminal_ttl_ms),
            ("cache.l2_negative_ttl_ms", c.l2_negative_ttl_ms),
            ("cache.read_your_writes_poll_ms", c.read_your_writes_poll_ms),
            ("cache.probe_interval_ms", c.probe_interval_ms),
            ("cache.watch_poll_ms", c.watch_poll_ms),
            ("cache.watch_max_duration_ms", c.watch_max_duration_ms),
            ("cache.breaker_open_ms", c.breaker_open_ms),
        ] {
            if v == 0 {
                return Err(SettingsError(format!("{name} must be positive")));
            }
        }
        if c.watch_max_streams == 0 || c.watch_max_streams_per_tenant == 0 {
            return bad(
                "cache.watch_max_streams and cache.watch_max_streams_per_tenant must be positive",
            );
        }
        if c.events_prefetch_kbytes == 0 {
            return bad("cache.events_prefetch_kbytes must be positive");
        }
        if c.breaker_max_open_ms < c.breaker_open_ms {
            return bad("cache.breaker_max_open_ms must be >= cache.breaker_open_ms");
        }
        if self.limits.replicas == 0 {
            return bad("limits.replicas must be at least 1");
        }
        if self.limits.shared && self.limits.redis_timeout_ms == 0 {
            return bad("limits.redis_timeout_ms must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_env_overrides_apply() {
        assert!(Settings::default().validate().is_ok());
        let s: Settings = dispatch_runtime::settings::load_from(
            None,
            vec![
                (
                    "DISPATCH_CACHE__L1_ENABLED".to_string(),
                    "false".to_string(),
                ),
                ("DISPATCH_CACHE__XFETCH_BETA".to_string(), "2.5".to_string()),
            ],
        )
        .expect("load");
        assert!(!s.cache.l1_enabled);
        assert!((s.cache.xfetch_beta - 2.5).abs() < f64::EPSILON);
        assert_eq!(s.grpc.listen.port(), 50052);
    }

    #[test]
    fn read_limits_load_and_are_checked() {
        let s: Settings = dispatch_runtime::settings::load_from(
            None,
            [
                ("DISPATCH_LIMITS__TENANT_RPS".to_string(), "100".to_string()),
                ("DISPATCH_LIMITS__REPLICAS".to_string(), "3".to_string()),
            ],
        )
        .expect("load");
        assert_eq!(s.limits.tenant_rps, 100);
        assert_eq!(s.limits.replicas, 3);
        assert!(s.limits.shared, "shared through redis by default");
        let mut bad = Settings::default();
        bad.limits.replicas = 0;
        let err = bad.validate().expect_err("0 replicas");
        assert!(err.to_string().contains("limits.replicas"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let mut s = Settings::default();
        s.cache.ttl_jitter_ratio = 1.5;
        let err = s.validate().expect_err("jitter");
        assert!(err.to_string().contains("ttl_jitter_ratio"), "{err}");
        let mut s = Settings::default();
        s.cache.store_max_concurrency = 0;
        assert!(
            s.validate()
                .expect_err("concurrency")
                .to_string()
                .contains("store_max_concurrency")
        );
        let err = dispatch_runtime::settings::load_from::<Settings>(
            None,
            vec![("DISPATCH_CACHE__L1_TLL_MS".to_string(), "1".to_string())],
        )
        .expect_err("typo");
        assert!(err.to_string().contains("l1_tll_ms"), "{err}");
    }
}
