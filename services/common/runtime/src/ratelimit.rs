//! Rate limits shared by every replica of a service: a GCRA (generic cell rate algorithm) per
//! tenant (and optionally one global) kept in Redis and decided by one Lua script, so a tenant's
//! quota is the configured one however many replicas serve it.
//!
//! Cells are leased: one `EVALSHA` of [`SCRIPT`] reads the theoretical arrival time (TAT) of
//! every bucket a tenant's requests spend from and, when all of them have room for the request's
//! `n` cells (all or nothing; a batch of `n` spends `n` cells), grants up to `want` cells
//! (`rate x lease`, bounded by the burst; at least `n`) that are free in every bucket and debits
//! them all from every bucket in that call (new TATs with a TTL that ends when the bucket is full
//! again); otherwise it answers how long until `n` would fit. The clock is Redis' `TIME`, the same
//! for every replica (a test may pass its own clock instead). The replica keeps the cells left
//! over in a per-key lease and admits later requests from it under a short mutex, without an
//! await, until the cells run out or `lease` has passed since the call was sent; cells unused by
//! then are dropped. Only a request the lease cannot cover goes to Redis, and concurrent such
//! requests for one key share one in-flight refill (singleflight): they wait for it, then spend
//! from the new lease (or decide locally if it could not reach Redis). So a replica makes about
//! one Redis call per key per `lease` at most rates, counted in
//! `dispatch_rate_limit_redis_calls_total{service}`.
//!
//! Why this never admits more than the shared quota: every cell spent from a lease was debited
//! from the shared bucket(s) when it was granted, so the cluster never spends more cells than
//! the GCRA handed out; since a cell is spent within `lease` of its debit, the admissions in any
//! window are at most the GCRA's allowance for that window widened by `lease` (no more than
//! `rate x lease` cells above it, and never above burst + rate x elapsed counted from a
//! tenant's first grant). With a global limit as
//! well, the tenant's lease is debited from the tenant's and the global bucket in the same call
//! (the smaller of their free cells), so each cell spent is one cell of both and a refusal debits
//! neither; leasing the global bucket separately would let a replica hold global cells whose
//! tenant cells it cannot get, and admit half a request. The price of leasing is bounded
//! under-admission: cells unused at expiry are lost (at most one lease per key and replica per
//! `lease`), and, with a global limit, global cells sit in several tenants' leases. To keep that
//! small a lease is sized by demand: a fresh key asks for the cap (`rate x lease`), a lease that
//! ran out asks for twice what it had, one that expired asks for a quarter more than was spent
//! from it (a replica with little traffic for a tenant does not park that tenant's quota), and
//! requests waiting on a refill add theirs. A refusal is remembered until its retry time (other
//! replicas only spend, so `n` or more cells cannot fit sooner) and repeated without a call.
//!
//! Redis is on the request path, so it gets a small budget (`redis_timeout`) behind a
//! [`Breaker`]: when Redis is not connected, the breaker is open, or the call fails or runs past
//! the budget, the decision is made locally by a governor bucket of the configured rate and burst
//! divided by `replicas` (so the cluster as a whole stays near the quota), and that fallback is
//! exported: `dispatch_rate_limit_backend{service, backend}` (1 for the backend of the last
//! decision) and `dispatch_rate_limit_fallback_total{service, reason}`. Rejections are counted in
//! `dispatch_rate_limit_rejected_total{service, scope, backend}`.
//!
//! Over 400 lines because the Lua script, the per-key leases and the local fallback make one
//! decision per request ([`SharedLimiter::check`]), and the module doc above is its specification;
//! the tests start near line 914. The local fallback (buckets at the limit / replicas) would move
//! out first.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use redis::aio::ConnectionManager;

use crate::breaker::{Breaker, BreakerSettings};
use crate::settings::RedisSettings;

/// The GCRA over every key in `KEYS` at once, granting a lease of cells.
///
/// `ARGV[1]` = cells the request needs (`n`), `ARGV[2]` = cells wanted for the lease (`want`,
/// at least `n`), `ARGV[3]` = the clock in microseconds, or empty for Redis `TIME`; then per key
/// `i`: `ARGV[2 + 2i]` = emission interval in microseconds (`1e6 / rate`), `ARGV[3 + 2i]` = burst
/// in cells.
///
/// Answers `{1, 0, 0, granted}` when at least `n` cells are free in every key: `granted` is the
/// smallest of `want` and every key's free cells, and every TAT is advanced by `granted`
/// intervals (the whole lease is debited in this call). `{0, i, wait_us, 0}` when key `i`
/// (1-based; the one that needs the longest wait) has no room for `n` cells yet, and
/// `{-1, i, 0, 0}` when `n` exceeds key `i`'s burst (it never fits). Nothing is written unless
/// cells are granted. A key's TTL ends when its bucket is full again, so idle tenants cost no
/// memory; a missing key is a full bucket.
pub const SCRIPT: &str = r"
local n = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
if want < n then
  want = n
end
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tats = {}
local grant = want
local worst, worst_i = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 + 2 * i])
  local burst = tonumber(ARGV[3 + 2 * i])
  if n > burst then
    return {-1, i, 0, 0}
  end
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if tat < now then
    tat = now
  end
  local free = math.ceil((burst * interval + now - tat + 1) / interval) - 1
  if free > burst then
    free = burst
  end
  if free < grant then
    grant = free
  end
  local wait = tat + n * interval - burst * interval - now
  if wait >= 1 and wait > worst then
    worst = wait
    worst_i = i
  end
  tats[i] = tat
end
if worst_i > 0 then
  return {0, worst_i, math.ceil(worst), 0}
end
if grant < n then
  grant = n
end
for i = 1, #KEYS do
  local new_tat = tats[i] + grant * tonumber(ARGV[2 + 2 * i])
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', ttl_ms)
end
return {1, 0, 0, grant}
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

/// `dispatch_rate_limit_redis_calls_total{service}`.
static CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntCounterVec::new(
            Opts::new(
                "dispatch_rate_limit_redis_calls_total",
                "Lease calls of the shared rate limiter to Redis (one script call each; requests \
                 covered by a replica's lease make none).",
            ),
            &["service"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Registers the rate limiter's metrics (their series come with each limiter's service).
pub(crate) fn init_metrics() {
    LazyLock::force(&BACKEND);
    LazyLock::force(&FALLBACK);
    LazyLock::force(&REJECTED);
    LazyLock::force(&CALLS);
}

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
    /// How long a replica may spend the cells leased from Redis in one call (at most `rate x
    /// lease` cells per lease; zero: every request asks Redis for exactly its own cells).
    pub lease: Duration,
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

/// The `retry-after-ms` hint of a refusal, in milliseconds (`None`: no hint, or not a number).
pub fn retry_after_ms(s: &tonic::Status) -> Option<u64> {
    s.metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

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
    /// Decisions made on the shared quota: by a Redis call or from a lease it granted.
    pub redis: AtomicU64,
    /// Script calls to Redis (`dispatch_rate_limit_redis_calls_total`).
    pub redis_calls: AtomicU64,
    /// Decisions made from a lease (or a remembered refusal) without calling Redis.
    pub leased: AtomicU64,
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

/// What the last refill of a lease came to (read by the requests that waited for it).
#[derive(Debug, Clone, Copy)]
enum Refill {
    Granted,
    Refused,
    Failed(&'static str),
}

/// One key's lease (a tenant's, or the global bucket's when only that limit is on): cells
/// already debited from the shared bucket(s), spendable here until `expires`.
#[derive(Debug, Default)]
struct LeaseState {
    /// Cells left.
    cells: u32,
    /// When the cells left are dropped (`None`: never leased).
    expires: Option<Instant>,
    /// Cells the last lease granted.
    granted: u32,
    /// Cells spent from the last lease.
    used: u32,
    /// Bumped by every refill; a request that waited for one reads its outcome in `last`.
    epoch: u64,
    last: Option<Refill>,
    /// The last refusal: `n` cells do not fit before `until` (other replicas only spend, so
    /// `n` or more cells are refused here until then without asking Redis).
    refused: Option<(u32, Instant, &'static str)>,
}

impl LeaseState {
    /// Spends `n` cells of an unexpired lease, or repeats a refusal still in force.
    fn try_local(&mut self, n: u32, now: Instant, max_n: u32) -> Option<Result<(), Limited>> {
        if self.cells >= n && self.expires.is_some_and(|e| now < e) {
            self.cells -= n;
            self.used = self.used.saturating_add(n);
            return Some(Ok(()));
        }
        match self.refused {
            Some((at_least, until, scope)) if now < until && n >= at_least && n <= max_n => {
                Some(Err(limited(scope, until - now, false)))
            }
            _ => None,
        }
    }
}

/// Counts a request's cells in [`Slot::waiting`] while it waits for the refill, including when
/// the request is dropped while waiting.
struct Waiting<'a>(&'a AtomicU32, u32);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicU32, n: u32) -> Self {
        counter.fetch_add(n, Ordering::AcqRel);
        Self(counter, n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// A key's lease and its single in-flight refill.
#[derive(Default)]
struct Slot {
    state: Mutex<LeaseState>,
    /// Held across the refill's Redis call: concurrent requests that the lease cannot cover
    /// wait for it and then spend from the new lease (singleflight per key).
    refill: tokio::sync::Mutex<()>,
    /// Cells wanted by requests waiting for the refill (added to the lease asked for).
    waiting: AtomicU32,
}

impl Slot {
    fn idle(self: &Arc<Self>, now: Instant) -> bool {
        let st = self.state.lock();
        Arc::strong_count(self) == 1
            && st.expires.is_none_or(|e| now >= e)
            && st.refused.is_none_or(|(_, until, _)| now >= until)
    }
}

/// Slots are pruned (idle ones dropped) when the map grows past this many.
const SLOTS_PRUNE_AT: usize = 1_024;

/// A per-tenant (and global) rate limiter shared through Redis, with a local fallback. Cheap to
/// share behind an `Arc`.
pub struct SharedLimiter {
    cfg: LimiterConfig,
    redis: Option<Arc<Shared>>,
    local: Local,
    last: AtomicU8,
    stats: LimiterStats,
    slots: RwLock<std::collections::HashMap<String, Arc<Slot>>>,
    prune_at: AtomicUsize,
    /// The largest lease asked for: `ceil(rate x lease)` of the smallest such among the limits,
    /// at most their smallest burst, at least 1.
    lease_cap: u32,
    /// The smallest burst among the limits (a larger request never fits).
    max_n: u32,
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
        let _ = CALLS.with_label_values(&[cfg.service]);
        if redis.is_some() {
            crate::tls_failures::init(cfg.service, &[crate::tls_failures::Dependency::Redis]);
        }
        let rates = || cfg.tenant.into_iter().chain(cfg.global);
        let max_n = rates().map(|r| r.burst).min().unwrap_or(u32::MAX);
        let lease_cap = rates()
            .map(|r| {
                let cells = (f64::from(r.per_second) * cfg.lease.as_secs_f64()).ceil();
                // Saturating float-to-int conversion, then bounded by the burst.
                (cells as u32).min(r.burst)
            })
            .min()
            .unwrap_or(1)
            .max(1);
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
            slots: RwLock::new(std::collections::HashMap::new()),
            prune_at: AtomicUsize::new(SLOTS_PRUNE_AT),
            lease_cap,
            max_n,
        }
    }

    /// [`SharedLimiter::new`], then [`SharedLimiter::connect`]: what a service builds at
    /// start-up (connected before this returns, if Redis answers within
    /// `redis.connect_timeout_ms`).
    pub async fn connected(cfg: LimiterConfig, redis: Option<&RedisSettings>) -> Self {
        let limiter = Self::new(cfg, redis);
        limiter.connect().await;
        limiter
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
            Err(e) => {
                crate::tls_failures::count_if_tls(
                    self.cfg.service,
                    crate::tls_failures::Dependency::Redis,
                    &e,
                );
                tracing::warn!(
                error = %e,
                limiter = self.cfg.name,
                "rate limiter cannot reach redis; limits are local (limit / replicas) until it can"
                );
            }
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
            Some(shared) => match self.decide_shared(shared, tenant, n).await {
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

    /// A decision on the shared quota: from the key's lease when it covers `n` (no await), else
    /// after the key's one in-flight refill (joined if another request started it, else started
    /// here); `Err(reason)` when Redis could not decide.
    async fn decide_shared(
        &self,
        shared: &Arc<Shared>,
        tenant: &str,
        n: u32,
    ) -> Result<Result<(), Limited>, &'static str> {
        // Both buckets are leased together (one lease per tenant, or of the global bucket alone
        // when there is no tenant limit): every cell spent here was debited from both.
        let key = if self.cfg.tenant.is_some() {
            tenant
        } else {
            ""
        };
        if let Some(slot) = self.slots.read().get(key) {
            let decided = slot.state.lock().try_local(n, Instant::now(), self.max_n);
            if let Some(decided) = decided {
                self.stats.leased.fetch_add(1, Ordering::Relaxed);
                self.stats.redis.fetch_add(1, Ordering::Relaxed);
                return Ok(decided);
            }
        }
        let slot = self.slot(key);
        let seen = slot.state.lock().epoch;
        let waiting = Waiting::new(&slot.waiting, n);
        let flight = slot.refill.lock().await;
        drop(waiting);
        let others = slot.waiting.load(Ordering::Acquire);
        let want = {
            let mut st = slot.state.lock();
            let now = Instant::now();
            if let Some(decided) = st.try_local(n, now, self.max_n) {
                drop(st);
                drop(flight);
                self.stats.leased.fetch_add(1, Ordering::Relaxed);
                self.stats.redis.fetch_add(1, Ordering::Relaxed);
                return Ok(decided);
            }
            if st.epoch != seen
                && let Some(Refill::Failed(reason)) = st.last
            {
                // The refill this request waited for could not reach Redis: decide locally
                // rather than queue one more call behind a failing one.
                return Err(reason);
            }
            self.lease_size(&st, n, others, now)
        };
        let sent = Instant::now();
        let answer = self.lease_from_redis(shared, tenant, n, want).await;
        let mut st = slot.state.lock();
        st.epoch += 1;
        match answer {
            Ok(Ok(granted)) => {
                st.last = Some(Refill::Granted);
                st.refused = None;
                st.granted = granted;
                st.used = n;
                // Unused cells of the previous lease (fewer than `n`) are dropped with it.
                st.cells = granted.saturating_sub(n);
                st.expires = Some(sent + self.cfg.lease);
                Ok(Ok(()))
            }
            Ok(Err(l)) => {
                st.last = Some(Refill::Refused);
                if !l.too_large {
                    // Measured from before the call, so it never outlasts Redis' own wait.
                    st.refused = Some((n, sent + l.retry_after, l.scope));
                }
                Ok(Err(l))
            }
            Err(reason) => {
                st.last = Some(Refill::Failed(reason));
                Err(reason)
            }
        }
    }

    /// The key's slot, made on first use (idle slots are pruned when the map grows).
    fn slot(&self, key: &str) -> Arc<Slot> {
        if let Some(slot) = self.slots.read().get(key) {
            return Arc::clone(slot);
        }
        let mut slots = self.slots.write();
        if slots.len() >= self.prune_at.load(Ordering::Relaxed) {
            let now = Instant::now();
            slots.retain(|_, s| !s.idle(now));
            self.prune_at
                .store((slots.len() * 2).max(SLOTS_PRUNE_AT), Ordering::Relaxed);
        }
        Arc::clone(slots.entry(key.to_owned()).or_default())
    }

    /// Cells to ask for: at least `n` plus what waiting requests want, else sized by the
    /// previous lease (a fresh key asks for the cap; a lease that ran out asks for twice as
    /// many; one that expired unused asks for a quarter more than was spent from it, so a
    /// replica with little traffic for the key does not park the key's quota in leases that
    /// expire), never above the cap unless `n` is.
    fn lease_size(&self, st: &LeaseState, n: u32, others: u32, now: Instant) -> u32 {
        if self.cfg.lease.is_zero() {
            return n;
        }
        let cap = self.lease_cap;
        let sized = match st.expires {
            None => cap,
            Some(e) if now >= e => st.used.saturating_add(st.used / 4 + 1),
            Some(_) => st.granted.saturating_mul(2),
        };
        sized.max(n.saturating_add(others)).clamp(1, cap).max(n)
    }

    /// One script call leasing up to `want` cells; `Ok(Ok(granted))` with `granted >= n`, and
    /// `Err(reason)` when Redis could not decide.
    async fn lease_from_redis(
        &self,
        shared: &Arc<Shared>,
        tenant: &str,
        n: u32,
        want: u32,
    ) -> Result<Result<u32, Limited>, &'static str> {
        let Some(mut conn) = shared.conn.read().clone() else {
            Self::connect_in_background(shared, self.cfg.service);
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
        inv.arg(n).arg(want).arg("");
        for (_, r) in &scopes {
            inv.arg(r.interval_us()).arg(r.burst);
        }
        CALLS.with_label_values(&[self.cfg.service]).inc();
        self.stats.redis_calls.fetch_add(1, Ordering::Relaxed);
        let call = inv.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.cfg.redis_timeout, call).await {
            Ok(Ok(answer)) => {
                shared.breaker.success();
                self.stats.redis.fetch_add(1, Ordering::Relaxed);
                Ok(interpret(answer, &scopes).map(|granted| granted.max(n)))
            }
            Ok(Err(e)) => {
                shared.breaker.failure();
                crate::tls_failures::count_if_tls(
                    self.cfg.service,
                    crate::tls_failures::Dependency::Redis,
                    &e,
                );
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
    fn connect_in_background(shared: &Arc<Shared>, service: &'static str) {
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
                    Err(e) => {
                        crate::tls_failures::count_if_tls(
                            service,
                            crate::tls_failures::Dependency::Redis,
                            &e,
                        );
                        tracing::debug!(error = %e, "rate limiter cannot reach redis");
                    }
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

/// Maps the script's answer to a decision: the cells granted, or the refusal.
fn interpret(
    (code, index, wait_us, granted): (i64, i64, i64, i64),
    scopes: &[(&'static str, Rate)],
) -> Result<u32, Limited> {
    let scope = usize::try_from(index - 1)
        .ok()
        .and_then(|i| scopes.get(i))
        .map_or("tenant", |(s, _)| *s);
    match code {
        1 => Ok(u32::try_from(granted).unwrap_or(0)),
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
            lease: Duration::from_millis(20),
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
        let hint = s
            .metadata()
            .get(RETRY_AFTER_MS)
            .and_then(|v| v.to_str().ok());
        assert_eq!(hint, Some("2"), "rounded up, in whole milliseconds");
        assert_eq!(retry_after_ms(&s), Some(2), "and read back");
        let s = limited("global", Duration::from_secs(1), true).to_status();
        assert!(s.message().contains("split it"), "{}", s.message());
    }

    #[test]
    fn script_answers_map_to_decisions() {
        let scopes = [
            ("tenant", Rate::new(1, 1).expect("on")),
            ("global", Rate::new(1, 1).expect("on")),
        ];
        assert_eq!(interpret((1, 0, 0, 7), &scopes), Ok(7));
        assert_eq!(
            interpret((0, 2, 1_500, 0), &scopes),
            Err(limited("global", Duration::from_micros(1_500), false))
        );
        assert_eq!(
            interpret((0, 1, 0, 0), &scopes),
            Err(limited("tenant", Duration::from_micros(1), false)),
            "a retry hint is never zero"
        );
        assert_eq!(
            interpret((-1, 1, 0, 0), &scopes),
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

    #[test]
    fn a_lease_is_spent_until_it_runs_out_or_expires_and_a_refusal_is_remembered() {
        let t0 = Instant::now();
        let mut st = LeaseState {
            cells: 3,
            expires: Some(t0 + Duration::from_millis(20)),
            granted: 4,
            used: 1,
            ..LeaseState::default()
        };
        assert_eq!(st.try_local(2, t0, 10), Some(Ok(())));
        assert_eq!(st.try_local(2, t0, 10), None, "one cell left");
        assert_eq!(st.try_local(1, t0, 10), Some(Ok(())));
        assert_eq!((st.cells, st.used), (0, 4));
        st.cells = 5;
        assert_eq!(
            st.try_local(1, t0 + Duration::from_millis(20), 10),
            None,
            "unused cells are dropped at expiry"
        );
        st.refused = Some((2, t0 + Duration::from_millis(100), "tenant"));
        st.cells = 0;
        let e = st
            .try_local(3, t0 + Duration::from_millis(40), 10)
            .expect("remembered")
            .expect_err("refused");
        assert_eq!(e.retry_after, Duration::from_millis(60));
        assert_eq!(
            st.try_local(1, t0, 10),
            None,
            "fewer cells than refused may fit"
        );
        assert_eq!(
            st.try_local(11, t0, 10),
            None,
            "above the burst: asked (never fits)"
        );
        assert_eq!(st.try_local(2, t0 + Duration::from_millis(100), 10), None);
    }

    #[test]
    fn leases_are_sized_by_rate_and_demand_within_the_cap() {
        let mut c = cfg(Rate::new(1_000, 500), Rate::new(10_000, 100), 1);
        c.lease = Duration::from_millis(200);
        let l = SharedLimiter::new(c.clone(), None);
        assert_eq!(
            l.lease_cap, 100,
            "tenant 200 cells, bounded by the global burst"
        );
        assert_eq!(l.max_n, 100);
        let now = Instant::now();
        let fresh = LeaseState::default();
        assert_eq!(
            l.lease_size(&fresh, 1, 0, now),
            100,
            "a fresh key asks for the cap"
        );
        assert_eq!(l.lease_size(&fresh, 100, 0, now), 100);
        let ran_out = LeaseState {
            granted: 8,
            expires: Some(now + Duration::from_secs(1)),
            ..LeaseState::default()
        };
        assert_eq!(
            l.lease_size(&ran_out, 1, 0, now),
            16,
            "ran out: twice as many"
        );
        let expired = LeaseState {
            granted: 100,
            used: 4,
            expires: Some(now),
            ..LeaseState::default()
        };
        assert_eq!(
            l.lease_size(&expired, 1, 0, now),
            6,
            "spent 4: a quarter more, plus one"
        );
        assert_eq!(
            l.lease_size(&expired, 1, 30, now),
            31,
            "and what waiters want"
        );
        assert_eq!(
            l.lease_size(&expired, 1, 300, now),
            100,
            "never above the cap"
        );
        c.lease = Duration::ZERO;
        let l = SharedLimiter::new(c, None);
        assert_eq!(l.lease_size(&fresh, 3, 50, now), 3, "no lease: exactly n");
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
