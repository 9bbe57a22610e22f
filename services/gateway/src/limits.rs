//! Rate limits: a governor token bucket per tenant and a global one. A batch spends one token per
//! item, all or nothing.

use std::num::NonZeroU32;
use std::time::Duration;

use dispatch_core::Tenant;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::metrics;
use crate::settings::LimitSettings;

/// A rejected request: which limit, and when it is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `tenant` or `global`.
    pub scope: &'static str,
    /// Suggested wait (the `retry-after-ms` metadata).
    pub retry_after: Duration,
    /// The request can never fit (larger than the burst).
    pub too_large: bool,
}

/// The gateway's limiters.
pub struct Limits {
    tenant: Option<DefaultKeyedRateLimiter<String>>,
    global: Option<DefaultDirectRateLimiter>,
    clock: DefaultClock,
}

fn quota(rps: u32, burst: u32) -> Option<Quota> {
    let rps = NonZeroU32::new(rps)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rps);
    Some(Quota::per_second(rps).allow_burst(burst))
}

impl Limits {
    /// From `[limits]` (a rate of 0 disables that limit).
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            tenant: quota(s.tenant_rps, s.tenant_burst).map(RateLimiter::keyed),
            global: quota(s.global_rps, s.global_burst).map(RateLimiter::direct),
            clock: DefaultClock::default(),
        }
    }

    /// Spends `n` tokens of `tenant`'s bucket, then of the global one.
    ///
    /// # Errors
    /// [`Limited`] naming the exhausted limit.
    pub fn check(&self, tenant: &Tenant, n: u32) -> Result<(), Limited> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        let limited = |scope: &'static str, retry_after: Duration, too_large: bool| {
            metrics::rate_limited(scope, n.get());
            Err(Limited {
                scope,
                retry_after,
                too_large,
            })
        };
        if let Some(l) = &self.tenant {
            match l.check_key_n(&tenant.as_str().to_owned(), n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return limited("tenant", not_until.wait_time_from(self.clock.now()), false);
                }
                Err(_) => return limited("tenant", Duration::from_secs(1), true),
            }
        }
        if let Some(l) = &self.global {
            match l.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return limited("global", not_until.wait_time_from(self.clock.now()), false);
                }
                Err(_) => return limited("global", Duration::from_secs(1), true),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> Tenant {
        Tenant::parse(s).expect("tenant")
    }

    #[test]
    fn tenants_have_separate_buckets_and_a_shared_global_one() {
        let l = Limits::new(&LimitSettings {
            tenant_rps: 1,
            tenant_burst: 3,
            global_rps: 1,
            global_burst: 5,
            ..LimitSettings::default()
        });
        assert!(l.check(&tenant("a"), 3).is_ok());
        let e = l.check(&tenant("a"), 1).expect_err("tenant a exhausted");
        assert_eq!(e.scope, "tenant");
        assert!(e.retry_after > Duration::ZERO);
        assert!(l.check(&tenant("b"), 2).is_ok(), "b has its own bucket");
        let e = l.check(&tenant("c"), 1).expect_err("global exhausted");
        assert_eq!(e.scope, "global");
        let e = l.check(&tenant("d"), 4).expect_err("larger than the burst");
        assert!(e.too_large);
    }

    #[test]
    fn zero_disables() {
        let l = Limits::new(&LimitSettings {
            tenant_rps: 0,
            tenant_burst: 0,
            global_rps: 0,
            global_burst: 0,
            ..LimitSettings::default()
        });
        for _ in 0..1000 {
            assert!(l.check(&tenant("a"), 1000).is_ok());
        }
    }
}
