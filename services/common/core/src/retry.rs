//! Retry policy and the backoff ladder.

use std::time::Duration;

use rand::Rng;

/// Effective retry policy of a task (server defaults applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (1..=25).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff_ms: u32,
    /// Cap on any single delay.
    pub max_backoff_ms: u32,
}

impl RetryPolicy {
    /// Upper bound on `max_attempts`.
    pub const MAX_ATTEMPTS_LIMIT: u32 = 25;
    /// Upper bound on `initial_backoff_ms`: 1 h.
    pub const INITIAL_BACKOFF_LIMIT_MS: u32 = 3_600_000;
    /// Upper bound on `max_backoff_ms`: 24 h.
    pub const MAX_BACKOFF_LIMIT_MS: u32 = 86_400_000;

    /// The server default: 4 attempts, 1 s initial backoff, 5 min cap.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        initial_backoff_ms: 1_000,
        max_backoff_ms: 300_000,
    };

    /// The delay before `next_attempt` (2 for the first retry): exponential with full jitter in
    /// the upper half (`[d/2, d]`), so retries spread out but never come much earlier than planned.
    pub fn backoff(&self, next_attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        let base = u64::from(self.initial_backoff_ms).saturating_mul(1u64 << exp);
        let capped = base.min(u64::from(self.max_backoff_ms.max(self.initial_backoff_ms)));
        let low = capped / 2;
        Duration::from_millis(if capped > low {
            rng.random_range(low..=capped)
        } else {
            capped
        })
    }

    /// Whether another attempt is allowed after `attempt` attempts.
    pub fn has_attempts_left(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        let mut rng = rand::rng();
        for _ in 0..200 {
            let d2 = p.backoff(2, &mut rng).as_millis();
            assert!((50..=100).contains(&d2), "{d2}");
            let d3 = p.backoff(3, &mut rng).as_millis();
            assert!((100..=200).contains(&d3), "{d3}");
            let d9 = p.backoff(9, &mut rng).as_millis();
            assert!((500..=1000).contains(&d9), "{d9}");
        }
        assert!(p.has_attempts_left(9));
        assert!(!p.has_attempts_left(10));
    }
}
