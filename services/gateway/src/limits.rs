//! Submit rate limits: a per-tenant and a global GCRA shared by every gateway replica through
//! Redis (`dispatch_runtime::ratelimit`), so a tenant's quota does not grow with the replica
//! count. Each replica leases a few cells at a time (`limits.lease_ms`) and spends them without
//! a Redis call until they run out or expire. While Redis cannot decide (not connected, breaker open, past `limits.redis_timeout_ms`)
//! each replica falls back to local buckets of the limits divided by `limits.replicas`. A batch
//! spends one cell per item, all or nothing.

use dispatch_core::Tenant;
use dispatch_runtime::breaker::BreakerSettings;
use dispatch_runtime::ratelimit::{LimiterConfig, Rate, SharedLimiter};
use dispatch_runtime::settings::RedisSettings;

pub use dispatch_runtime::ratelimit::Limited;

use crate::metrics;
use crate::settings::LimitSettings;

/// The gateway's limiter.
pub struct Limits {
    inner: SharedLimiter,
}

impl Limits {
    /// From `[limits]` (a rate of 0 disables that limit), shared through the Redis of `redis`
    /// when given and `limits.shared` is on (connected before this returns, if Redis answers
    /// within `redis.connect_timeout_ms`), else local buckets only.
    pub async fn new(s: &LimitSettings, redis: Option<&RedisSettings>) -> Self {
        Self {
            inner: SharedLimiter::connected(config(s), redis).await,
        }
    }

    /// Spends `n` cells of `tenant`'s bucket and of the global one.
    ///
    /// # Errors
    /// [`Limited`] naming the exhausted limit.
    pub async fn check(&self, tenant: &Tenant, n: u32) -> Result<(), Limited> {
        self.inner
            .check(tenant.as_str(), n)
            .await
            .map(|_| ())
            .inspect_err(|l| metrics::rate_limited(l.scope, n))
    }
}

/// What `[limits]` asks the shared limiter for.
pub fn config(s: &LimitSettings) -> LimiterConfig {
    LimiterConfig {
        service: metrics::SERVICE,
        name: "submit",
        tenant: Rate::new(s.tenant_rps, s.tenant_burst),
        global: Rate::new(s.global_rps, s.global_burst),
        replicas: s.replicas,
        shared: s.shared,
        redis_timeout: std::time::Duration::from_millis(s.redis_timeout_ms),
        lease: std::time::Duration::from_millis(s.lease_ms),
        breaker: BreakerSettings::from_ms(
            s.breaker_failures,
            s.breaker_open_ms,
            s.breaker_max_open_ms,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tenant(s: &str) -> Tenant {
        Tenant::parse(s).expect("tenant")
    }

    #[tokio::test]
    async fn tenants_have_separate_buckets_and_a_shared_global_one() {
        let l = Limits::new(
            &LimitSettings {
                tenant_rps: 1,
                tenant_burst: 3,
                global_rps: 1,
                global_burst: 5,
                ..LimitSettings::default()
            },
            None,
        )
        .await;
        assert!(l.check(&tenant("a"), 3).await.is_ok());
        let e = l
            .check(&tenant("a"), 1)
            .await
            .expect_err("tenant a exhausted");
        assert_eq!(e.scope, "tenant");
        assert!(e.retry_after > Duration::ZERO);
        assert!(
            l.check(&tenant("b"), 2).await.is_ok(),
            "b has its own bucket"
        );
        let e = l
            .check(&tenant("c"), 1)
            .await
            .expect_err("global exhausted");
        assert_eq!(e.scope, "global");
        let e = l
            .check(&tenant("d"), 4)
            .await
            .expect_err("larger than the burst");
        assert!(e.too_large);
    }

    #[tokio::test]
    async fn zero_disables() {
        let l = Limits::new(
            &LimitSettings {
                tenant_rps: 0,
                tenant_burst: 0,
                global_rps: 0,
                global_burst: 0,
                ..LimitSettings::default()
            },
            Some(&RedisSettings::default()),
        )
        .await;
        for _ in 0..1000 {
            assert!(l.check(&tenant("a"), 1000).await.is_ok());
        }
    }

    #[tokio::test]
    async fn the_local_fallback_is_the_limit_divided_by_the_replicas() {
        let l = Limits::new(
            &LimitSettings {
                tenant_rps: 1,
                tenant_burst: 9,
                global_rps: 0,
                replicas: 3,
                ..LimitSettings::default()
            },
            None,
        )
        .await;
        assert!(l.check(&tenant("a"), 3).await.is_ok());
        assert!(l.check(&tenant("a"), 1).await.is_err(), "9 / 3 replicas");
    }
}
