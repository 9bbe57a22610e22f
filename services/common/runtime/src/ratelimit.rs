//! Rate limits shared by every replica of a service: a GCRA (generic cell rate algorithm) per
//! tenant (and optionally one global) kept in Redis and decided by one Lua script, so a tenant's
//! quota is the configured one however many replicas serve it.
//!
//! Each decision is one `EVALSHA` of [`SCRIPT`]: it reads the theoretical arrival time (TAT) of
//! every bucket the request spends from, admits the request only if all of them have room (all or
//! nothing; a batch of `n` spends `n` cells), writes the new TATs with a TTL that ends when the
//! bucket is full again, and otherwise answers how long until it would fit. The clock is Redis'
//! `TIME`, the same for every replica (a test may pass its own clock instead).
//!
//! Redis is on the request path, so it gets a small budget (`redis_timeout`) behind a
//! [`Breaker`]: when Redis is not connected, the breaker is open, or the call fails or runs past
//! the budget, the decision is made locally by a governor bucket of the configured rate and burst
//! divided by `replicas` (so the cluster as a whole stays near the quota), and that fallback is
//! exported: `dispatch_rate_limit_backend{service, backend}` (1 for the backend of the last
//! decision) and `dispatch_rate_limit_fallback_total{service, reason}`. Rejections are counted in
//! `dispatch_rate_limit_rejected_total{service, scope, backend}`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use redis::aio::ConnectionManager;

use crate::breaker::{Breaker, BreakerSettings};
use crate::settings::RedisSettings;

/// The GCRA over every key in `KEYS` at once.
///
/// `ARGV[1]` = cells the request spends (`n`), `ARGV[2]` = the clock in microseconds, or empty
/// for Redis `TIME`; then per key `i`: `ARGV[1 + 2i]` = emission interval in microseconds
/// (`1e6 / rate`), `ARGV[2 + 2i]` = burst in cells.
///
/// Answers `{1, 0, 0}` when admitted (every TAT advanced by `n` intervals), `{0, i, wait_us}` when
/// key `i` (1-based; the one that needs the longest wait) has no room for `n` cells yet, and
/// `{-1, i, 0}` when `n` exceeds key `i`'s burst (it never fits). Nothing is written unless the
/// request is admitted. A key's TTL ends when its bucket is full again, so idle tenants cost no
/// memory; a missing key is a full bucket.
pub const SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tats = {}
local worst, worst_i = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  if n > burst then
    return {-1, i, 0}
  end
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if tat < now then
    tat = now
  end
  local new_tat = tat + n * interval
  local wait = new_tat - burst * interval - now
  if wait >= 1 and wait > worst then
    worst = wait
    worst_i = i
  end
  tats[i] = new_tat
end
if worst_i > 0 then
  return {0, worst_i, math.ceil(worst)}
end
for i = 1, #KEYS do
  local ttl_ms = math.ceil((tats[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl_ms)
end
return {1, 0, 0}
";

/// `dispatch_rate_limit_backend{service, backend}`.
static BACKEND: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntGaugeVec::new(
            Opts::new(
                "dispatch_rate_limit_backend",
                "1 for the backend that made the last rate-limit decision: redis (shared by \
                 every replica) or local (fallback: the limit divided by the replica count).",
            ),
            &["service", "backend"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// `dispatch_rate_limit_fallback_total{service, reason}`.
static FALLBACK: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "dispatch_rate_limit_fallback_total",
                "Rate-limit decisions made locally because Redis could not decide (reason: \
                 unconnected, breaker_open, timeout, error).",
            ),
            &["service", "reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// `dispatch_rate_limit_rejected_total{service, scope, backend}`.
static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "dispatch_rate_limit_rejected_total",
                "Requests refused by a rate limit (scope: tenant, global; backend: redis, local).",
            ),
            &["service", "scope", "backend"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Why a decision fell back to the local bucket.
const FALLBACK_REASONS: [&str; 4] = ["unconnected", "breaker_open", "timeout", "error"];

/// A rate: `per_second` cells per second, at most `burst` at once (a rate of 0 disables it; a
/// burst of 0 means one second's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Cells per second.
    pub per_second: u32,
    /// Cells that may be spent at once.
    pub burst: u32,
}

impl Rate {
    /// `None` when `per_second` is 0 (the limit is off).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        (per_second > 0).then_some(Self {
            per_second,
            burst: if burst == 0 { per_second } else { burst },
        })
    }

    /// The emission interval in microseconds (one cell every `1e6 / per_second` µs).
    pub fn interval_us(&self) -> f64 {
        1e6 / f64::from(self.per_second)
    }

    /// This rate's share on one of `replicas` instances: rate and burst divided, rounded down,
    /// at least 1, so the instances together never exceed it.
    pub fn share(&self, replicas: u32) -> Self {
        let r = replicas.max(1);
        Self {
            per_second: (self.per_second / r).max(1),
            burst: (self.burst / r).max(1),
        }
    }

    fn quota(&self) -> governor::Quota {
        let rate = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        governor::Quota::per_second(rate).allow_burst(burst)
    }
}

/// What one limiter enforces and how it reaches Redis.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// The `service` label of its metrics (`gateway`, `reader`).
    pub service: &'static str,
    /// Namespace of its Redis keys (`submit`, `read`): `{key_prefix}rl:{<name>}:<scope>[:<tenant>]`.
    pub name: &'static str,
    /// Per-tenant rate (cluster-wide), if any.
    pub tenant: Option<Rate>,
    /// Rate across all tenants (cluster-wide), if any.
    pub global: Option<Rate>,
    /// Replicas sharing the quota: the local fallback allows `rate / replicas`.
    pub replicas: u32,
    /// Decide in Redis (false: always the local fallback bucket, e.g. a single instance without
    /// Redis).
    pub shared: bool,
    /// Budget of one Redis decision; past it the decision is made locally.
    pub redis_timeout: Duration,
    /// The breaker in front of Redis (`dispatch_circuit_breaker_open{service, breaker="ratelimit"}`).
    pub breaker: BreakerSettings,
}

impl LimiterConfig {
    /// Whether any limit is on.
    pub fn enabled(&self) -> bool {
        self.tenant.is_some() || self.global.is_some()
    }
}

/// A refused request: which limit, and when it is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `tenant` or `global`.
    pub scope: &'static str,
    /// Suggested wait (the `retry-after-ms` metadata).
    pub retry_after: Duration,
    /// The request can never fit (larger than the burst).
    pub too_large: bool,
}

/// The metadata key of the retry hint in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

impl Limited {
    /// RESOURCE_EXHAUSTED naming the limit, with the retry hint in `retry-after-ms` metadata
    /// (whole milliseconds, rounded up, at least 1).
    pub fn to_status(&self) -> tonic::Status {
        let msg = if self.too_large {
            format!(
                "request larger than the {} rate limit burst; split it",
                self.scope
            )
        } else {
            format!("{} rate limit exceeded; retry later", self.scope)
        };
        let mut s = tonic::Status::resource_exhausted(msg);
        let ms = self
            .retry_after
            .as_micros()
            .div_ceil(1000)
            .max(1)
            .to_string();
        if let Ok(v) = ms.parse() {
            s.metadata_mut().insert(RETRY_AFTER_MS, v);
        }
        s
    }
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The shared GCRA in Redis.
    Redis,
    /// The local fallback (the limit divided by the replica count).
    Local,
}

impl Backend {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Local => "local",
        }
    }
}

/// Per-instance decision counts (tests, benchmarks).
#[derive(Debug, Default)]
pub struct LimiterStats {
    /// Decisions made by Redis.
    pub redis: AtomicU64,
    /// Decisions made locally because Redis could not decide.
    pub fallback: AtomicU64,
}

/// The Redis side: a connection made lazily in the background, the script and the breaker.
struct Shared {
    settings: RedisSettings,
    conn: RwLock<Option<ConnectionManager>>,
    connecting: AtomicBool,
    last_attempt: Mutex<Option<Instant>>,
    retry_every: Duration,
    script: redis::Script,
    breaker: Breaker,
    tenant_key: String,
    global_key: String,
}

/// The local fallback buckets (already divided by the replica count).
struct Local {
    tenant: Option<DefaultKeyedRateLimiter<String>>,
    global: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

/// A per-tenant (and global) rate limiter shared through Redis, with a local fallback. Cheap to
/// share behind an `Arc`.
pub struct SharedLimiter {
    cfg: LimiterConfig,
    redis: Option<Arc<Shared>>,
    local: Local,
    last: AtomicU8,
    stats: LimiterStats,
}

const LAST_NONE: u8 = 0;
const LAST_REDIS: u8 = 1;
const LAST_LOCAL: u8 = 2;

impl SharedLimiter {
    /// A limiter deciding in the Redis of `redis` (when `cfg.shared` and `redis` is given; it
    /// connects in the background on first use and reconnects by itself), else locally.
    pub fn new(cfg: LimiterConfig, redis: Option<&RedisSettings>) -> Self {
        let local = Local {
            tenant: cfg
                .tenant
                .map(|r| RateLimiter::keyed(r.share(cfg.replicas).quota())),
            global: cfg
                .global
                .map(|r| RateLimiter::direct(r.share(cfg.replicas).quota())),
            clock: DefaultClock::default(),
        };
        let redis = redis.filter(|_| cfg.shared && cfg.enabled()).map(|s| {
            let base = format!("{}rl:{{{}}}:", s.key_prefix, cfg.name);
            Arc::new(Shared {
                settings: s.clone(),
                conn: RwLock::new(None),
                connecting: AtomicBool::new(false),
                last_attempt: Mutex::new(None),
                retry_every: cfg.breaker.open,
                script: redis::Script::new(SCRIPT),
                breaker: Breaker::new(cfg.service, "ratelimit", cfg.breaker),
                tenant_key: format!("{base}tenant:"),
                global_key: format!("{base}global"),
            })
        });
        for b in ["redis", "local"] {
            BACKEND.with_label_values(&[cfg.service, b]).set(0);
        }
        for r in FALLBACK_REASONS {
            let _ = FALLBACK.with_label_values(&[cfg.service, r]);
        }
        let scopes = [("tenant", cfg.tenant), ("global", cfg.global)];
        for scope in scopes.iter().filter(|(_, r)| r.is_some()).map(|(s, _)| *s) {
            for b in ["redis", "local"] {
                let _ = REJECTED.with_label_values(&[cfg.service, scope, b]);
            }
        }
        Self {
            cfg,
            redis,
            local,
            last: AtomicU8::new(LAST_NONE),
            stats: LimiterStats::default(),
        }
    }

    /// Connects to Redis now (start-up), so the first decisions are already shared; on failure
    /// decisions are local and the connection is retried in the background on use.
    pub async fn connect(&self) {
        let Some(shared) = &self.redis else {
            return;
        };
        if shared.conn.read().is_some() {
            return;
        }
        *shared.last_attempt.lock() = Some(Instant::now());
        match crate::redis_client::connect(&shared.settings).await {
            Ok(c) => *shared.conn.write() = Some(c),
            Err(e) => tracing::warn!(
                error = %e,
                limiter = self.cfg.name,
                "rate limiter cannot reach redis; limits are local (limit / replicas) until it can"
            ),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LimiterConfig {
        &self.cfg
    }

    /// Per-instance decision counts.
    pub fn stats(&self) -> &LimiterStats {
        &self.stats
    }

    /// The backend of the last decision (`None` before the first).
    pub fn last_backend(&self) -> Option<Backend> {
        match self.last.load(Ordering::Relaxed) {
            LAST_REDIS => Some(Backend::Redis),
            LAST_LOCAL => Some(Backend::Local),
            _ => None,
        }
    }

    /// The Redis key of `tenant`'s bucket (tests).
    pub fn tenant_key(&self, tenant: &str) -> Option<String> {
        self.redis
            .as_ref()
            .map(|s| format!("{}{tenant}", s.tenant_key))
    }

    /// Spends `n` cells of `tenant`'s bucket and of the global one, all or nothing in Redis (in
    /// the local fallback the tenant's cells are spent before the global bucket is asked).
    ///
    /// # Errors
    /// [`Limited`] naming the limit that has no room.
    pub async fn check(&self, tenant: &str, n: u32) -> Result<Backend, Limited> {
        if n == 0 || !self.cfg.enabled() {
            return Ok(Backend::Local);
        }
        let (backend, outcome) = match self.redis.as_ref() {
            Some(shared) => match self.decide_in_redis(shared, tenant, n).await {
                Ok(outcome) => (Backend::Redis, outcome),
                Err(reason) => {
                    FALLBACK
                        .with_label_values(&[self.cfg.service, reason])
                        .inc();
                    self.stats.fallback.fetch_add(1, Ordering::Relaxed);
                    (Backend::Local, self.decide_locally(tenant, n))
                }
            },
            None => (Backend::Local, self.decide_locally(tenant, n)),
        };
        self.mark(backend);
        match outcome {
            Ok(()) => Ok(backend),
            Err(l) => {
                REJECTED
                    .with_label_values(&[self.cfg.service, l.scope, backend.label()])
                    .inc();
                Err(l)
            }
        }
    }

    fn mark(&self, backend: Backend) {
        let now = match backend {
            Backend::Redis => LAST_REDIS,
            Backend::Local => LAST_LOCAL,
        };
        if self.last.swap(now, Ordering::Relaxed) != now {
            let (on, off) = match backend {
                Backend::Redis => ("redis", "local"),
                Backend::Local => ("local", "redis"),
            };
            if backend == Backend::Local && self.redis.is_some() {
                tracing::warn!(
                    limiter = self.cfg.name,
                    replicas = self.cfg.replicas,
                    "rate limits fall back to local buckets (limit / replicas)"
                );
            } else if backend == Backend::Redis {
                tracing::info!(limiter = self.cfg.name, "rate limits decided in redis");
            }
            BACKEND.with_label_values(&[self.cfg.service, on]).set(1);
            BACKEND.with_label_values(&[self.cfg.service, off]).set(0);
        }
    }

    /// One script call; `Err(reason)` when Redis could not decide.
    async fn decide_in_redis(
        &self,
        shared: &Arc<Shared>,
        tenant: &str,
        n: u32,
    ) -> Result<Result<(), Limited>, &'static str> {
        let Some(mut conn) = shared.conn.read().clone() else {
            Self::connect_in_background(shared);
            return Err("unconnected");
        };
        if !shared.breaker.permits() {
            return Err("breaker_open");
        }
        let mut scopes: Vec<(&'static str, Rate)> = Vec::with_capacity(2);
        let mut inv = shared.script.prepare_invoke();
        if let Some(r) = self.cfg.tenant {
            inv.key(format!("{}{tenant}", shared.tenant_key));
            scopes.push(("tenant", r));
        }
        if let Some(r) = self.cfg.global {
            inv.key(&shared.global_key);
            scopes.push(("global", r));
        }
        inv.arg(n).arg("");
        for (_, r) in &scopes {
            inv.arg(r.interval_us()).arg(r.burst);
        }
        let call = inv.invoke_async::<(i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.cfg.redis_timeout, call).await {
            Ok(Ok(answer)) => {
                shared.breaker.success();
                self.stats.redis.fetch_add(1, Ordering::Relaxed);
                Ok(interpret(answer, &scopes))
            }
            Ok(Err(e)) => {
                shared.breaker.failure();
                tracing::debug!(error = %e, "rate limit script failed");
                Err("error")
            }
            Err(_) => {
                shared.breaker.failure();
                Err("timeout")
            }
        }
    }

    /// Starts one connection attempt unless one is running or the last began less than the
    /// breaker's open period ago.
    fn connect_in_background(shared: &Arc<Shared>) {
        {
            let mut last = shared.last_attempt.lock();
            if last.is_some_and(|t| t.elapsed() < shared.retry_every) {
                return;
            }
            if shared.connecting.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            shared.connecting.store(false, Ordering::Release);
            return;
        };
        let settings = shared.settings.clone();
        // The task holds only what it fills in, through a weak reference: a dropped limiter
        // drops its connection.
        let weak = Arc::downgrade(shared);
        handle.spawn(async move {
            let result = crate::redis_client::connect(&settings).await;
            if let Some(shared) = weak.upgrade() {
                match result {
                    Ok(c) => {
                        *shared.conn.write() = Some(c);
                        tracing::info!("rate limiter connected to redis");
                    }
                    Err(e) => tracing::debug!(error = %e, "rate limiter cannot reach redis"),
                }
                shared.connecting.store(false, Ordering::Release);
            }
        });
    }

    fn decide_locally(&self, tenant: &str, n: u32) -> Result<(), Limited> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        let now = self.local.clock.now();
        if let Some(l) = &self.local.tenant {
            match l.check_key_n(&tenant.to_owned(), n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(limited("tenant", not_until.wait_time_from(now), false));
                }
                Err(_) => return Err(limited("tenant", Duration::from_secs(1), true)),
            }
        }
        if let Some(l) = &self.local.global {
            match l.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(limited("global", not_until.wait_time_from(now), false));
                }
                Err(_) => return Err(limited("global", Duration::from_secs(1), true)),
            }
        }
        Ok(())
    }
}

fn limited(scope: &'static str, retry_after: Duration, too_large: bool) -> Limited {
    Limited {
        scope,
        retry_after,
        too_large,
    }
}

/// Maps the script's answer to a decision.
fn interpret(
    (code, index, wait_us): (i64, i64, i64),
    scopes: &[(&'static str, Rate)],
) -> Result<(), Limited> {
    let scope = usize::try_from(index - 1)
        .ok()
        .and_then(|i| scopes.get(i))
        .map_or("tenant", |(s, _)| *s);
    match code {
        1 => Ok(()),
        0 => Err(limited(
            scope,
            Duration::from_micros(u64::try_from(wait_us).unwrap_or(0).max(1)),
            false,
        )),
        _ => Err(limited(scope, Duration::from_secs(1), true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tenant: Option<Rate>, global: Option<Rate>, replicas: u32) -> LimiterConfig {
        LimiterConfig {
            service: "test",
            name: "unit",
            tenant,
            global,
            replicas,
            shared: true,
            redis_timeout: Duration::from_millis(5),
            breaker: BreakerSettings::from_ms(1, 1_000, 1_000),
        }
    }

    #[test]
    fn rates_and_replica_shares() {
        assert_eq!(Rate::new(0, 10), None, "a rate of 0 is off");
        let r = Rate::new(10, 0).expect("on");
        assert_eq!(r.burst, 10, "burst 0 is one second's worth");
        assert!((Rate::new(4, 1).expect("on").interval_us() - 250_000.0).abs() < 1e-6);
        let r = Rate::new(10, 25).expect("on");
        assert_eq!(r.share(1), r);
        assert_eq!(
            r.share(3),
            Rate {
                per_second: 3,
                burst: 8
            },
            "rounded down, so three shares stay within the quota"
        );
        assert_eq!(
            r.share(100),
            Rate {
                per_second: 1,
                burst: 1
            },
            "never below one"
        );
        assert_eq!(r.share(0), r, "0 replicas count as one");
    }

    #[test]
    fn refusals_answer_resource_exhausted_with_a_retry_hint() {
        let s = limited("tenant", Duration::from_micros(1_001), false).to_status();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("tenant rate limit"), "{}", s.message());
        assert_eq!(
            s.metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok()),
            Some("2"),
            "rounded up"
        );
        let s = limited("global", Duration::from_secs(1), true).to_status();
        assert!(s.message().contains("split it"), "{}", s.message());
    }

    #[test]
    fn script_answers_map_to_decisions() {
        let scopes = [
            ("tenant", Rate::new(1, 1).expect("on")),
            ("global", Rate::new(1, 1).expect("on")),
        ];
        assert_eq!(interpret((1, 0, 0), &scopes), Ok(()));
        assert_eq!(
            interpret((0, 2, 1_500), &scopes),
            Err(limited("global", Duration::from_micros(1_500), false))
        );
        assert_eq!(
            interpret((0, 1, 0), &scopes),
            Err(limited("tenant", Duration::from_micros(1), false)),
            "a retry hint is never zero"
        );
        assert_eq!(
            interpret((-1, 1, 0), &scopes),
            Err(limited("tenant", Duration::from_secs(1), true))
        );
    }

    #[tokio::test]
    async fn without_redis_the_local_buckets_hold_the_replica_share() {
        let l = SharedLimiter::new(cfg(Rate::new(1, 12), Rate::new(1, 20), 4), None);
        for _ in 0..3 {
            assert_eq!(l.check("a", 1).await, Ok(Backend::Local));
        }
        let e = l.check("a", 1).await.expect_err("12 / 4 replicas");
        assert_eq!(e.scope, "tenant");
        assert!(!e.too_large);
        assert!(l.check("b", 2).await.is_ok(), "b has its own bucket");
        let e = l.check("c", 1).await.expect_err("global: 20 / 4 replicas");
        assert_eq!(e.scope, "global");
        let e = l.check("d", 4).await.expect_err("above the local burst");
        assert!(e.too_large);
        assert_eq!(l.last_backend(), Some(Backend::Local));
        assert_eq!(
            l.stats().fallback.load(Ordering::Relaxed),
            0,
            "no redis configured is not a fallback"
        );
    }

    #[tokio::test]
    async fn disabled_limits_admit_everything_without_redis() {
        let l = SharedLimiter::new(cfg(None, None, 1), Some(&RedisSettings::default()));
        assert!(l.redis.is_none(), "nothing to share");
        for _ in 0..1_000 {
            assert!(l.check("a", 1_000).await.is_ok());
        }
        assert!(l.check("a", 0).await.is_ok());
    }
}
