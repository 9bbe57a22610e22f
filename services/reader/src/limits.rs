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
use tonic::Status;

use crate::settings::ReadLimitSettings;

/// Spends `n` reads of `tenant`'s quota when limits are configured, else admits.
///
/// # Errors
/// RESOURCE_EXHAUSTED with `retry-after-ms` when the tenant is over its limit.
pub async fn check(
    limits: Option<&SharedLimiter>,
    tenant: &Tenant,
    n: usize,
) -> Result<(), Status> {
    let Some(limits) = limits else {
        return Ok(());
    };
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    match limits.check(tenant.as_str(), n).await {
        Ok(_) => Ok(()),
        Err(l) => Err(l.to_status()),
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
        let l = SharedLimiter::connected(
            config(&ReadLimitSettings {
                tenant_rps: 1,
                tenant_burst: 4,
                replicas: 2,
                ..ReadLimitSettings::default()
            }),
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
        assert!(dispatch_runtime::ratelimit::retry_after_ms(&s).is_some());
        assert!(check(Some(&l), &b, 2).await.is_ok());
        assert!(check(None, &a, 1_000).await.is_ok(), "no limits configured");
    }
}
