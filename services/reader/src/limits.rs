//! Per-tenant read rate limits: a GCRA per tenant shared by every reader replica through Redis
//! (`dispatch_runtime::ratelimit`, the gateway's limiter; cells are leased a few at a time, see
//! `limits.lease_ms`, so most reads make no Redis call), falling back to local buckets of the
//! limit divided by `limits.replicas` while Redis cannot decide. GetTask, ListTasks, GetWorkflow
//! and opening a WatchTask spend one cell, BatchGetTasks one per id; a refused read answers
//! RESOURCE_EXHAUSTED with `retry-after-ms`.

use std::time::Duration;

use dispatch_core::Tenant;
use dispatch_runtime::breaker::BreakerSettings;
use dispatch_runtime::ratelimit::{LimiterConfig, Rate, SharedLimiter};
use dispatch_runtime::settings::RedisSettings;
use tonic::Status;

use crate::settings::ReadLimitSettings;

/// The reader's limiter.
pub struct ReadLimits {
    inner: SharedLimiter,
}

impl ReadLimits {
    /// From `[limits]`, shared through the Redis of `redis` when given and `limits.shared` is on
    /// (connected before this returns, if Redis answers within `redis.connect_timeout_ms`).
    pub async fn new(s: &ReadLimitSettings, redis: Option<&RedisSettings>) -> Self {
        let inner = SharedLimiter::new(config(s), redis);
        inner.connect().await;
        Self { inner }
    }

    /// Spends `n` reads of `tenant`'s quota.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED with `retry-after-ms` when the tenant is over its limit.
    pub async fn check(&self, tenant: &Tenant, n: usize) -> Result<(), Status> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match self.inner.check(tenant.as_str(), n).await {
            Ok(_) => Ok(()),
            Err(l) => Err(l.to_status()),
        }
    }

    /// The shared limiter (which backend decided last, decision counts).
    pub fn limiter(&self) -> &SharedLimiter {
        &self.inner
    }
}

/// [`ReadLimits::check`] when limits are configured, else admits.
///
/// # Errors
/// As [`ReadLimits::check`].
pub async fn check(limits: Option<&ReadLimits>, tenant: &Tenant, n: usize) -> Result<(), Status> {
    match limits {
        Some(l) => l.check(tenant, n).await,
        None => Ok(()),
    }
}

/// What `[limits]` asks the shared limiter for.
pub fn config(s: &ReadLimitSettings) -> LimiterConfig {
    LimiterConfig {
        service: "reader",
        name: "read",
        tenant: Rate::new(s.tenant_rps, s.tenant_burst),
        global: None,
        replicas: s.replicas,
        shared: s.shared,
        redis_timeout: Duration::from_millis(s.redis_timeout_ms),
        lease: Duration::from_millis(s.lease_ms),
        breaker: BreakerSettings::from_ms(
            s.breaker_failures,
            s.breaker_open_ms,
            s.breaker_max_open_ms,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_over_its_limit_is_refused_with_a_hint_and_others_are_not() {
        let l = ReadLimits::new(
            &ReadLimitSettings {
                tenant_rps: 1,
                tenant_burst: 4,
                replicas: 2,
                ..ReadLimitSettings::default()
            },
            None,
        )
        .await;
        let (a, b) = (
            Tenant::parse("acme").expect("tenant"),
            Tenant::parse("globex").expect("tenant"),
        );
        assert!(check(Some(&l), &a, 2).await.is_ok(), "4 / 2 replicas");
        let s = check(Some(&l), &a, 1).await.expect_err("over");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.metadata().get("retry-after-ms").is_some());
        assert!(check(Some(&l), &b, 2).await.is_ok());
        assert!(check(None, &a, 1_000).await.is_ok(), "no limits configured");
    }
}
