//! Circuit breakers (failsafe's state machine) that export `dispatch_circuit_breaker_open`.
//!
//! A breaker opens after N consecutive failures, stays open for a doubling delay (bounded), then
//! lets calls through half-open: the first success closes it, a failure re-opens it.

use std::time::Duration;

use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::{Config, Instrument, StateMachine};

use crate::metrics;

/// Open delays: `start`, doubling, capped at `max`. (failsafe's own `exponential` insists on
/// whole seconds; tests want shorter.)
#[derive(Debug, Clone)]
pub struct Doubling {
    next: Duration,
    max: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

/// Exports state changes as `dispatch_circuit_breaker_open{service="gateway", breaker}`.
#[derive(Debug, Clone, Copy)]
pub struct BreakerMetrics(&'static str);

impl Instrument for BreakerMetrics {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        metrics::breaker(self.0, true);
    }
    fn on_half_open(&self) {}
    fn on_closed(&self) {
        metrics::breaker(self.0, false);
    }
}

/// A named breaker.
pub type Breaker = StateMachine<ConsecutiveFailures<Doubling>, BreakerMetrics>;

/// A breaker named `name` (a metric label: `kafka`, `redis`).
pub fn new(name: &'static str, failures: u32, open_ms: u64, max_open_ms: u64) -> Breaker {
    let open = Duration::from_millis(open_ms.max(1));
    let backoff = Doubling {
        next: open,
        max: Duration::from_millis(max_open_ms).max(open),
    };
    Config::new()
        .failure_policy(consecutive_failures(failures.max(1), backoff))
        .instrument(BreakerMetrics(name))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_success() {
        let b = new("test", 2, 30, 60);
        assert!(b.is_call_permitted());
        b.on_error();
        assert!(b.is_call_permitted(), "one failure is not enough");
        b.on_error();
        assert!(!b.is_call_permitted(), "open after two");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.is_call_permitted(), "half-open after the delay");
        b.on_success();
        assert!(b.is_call_permitted());
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let d: Vec<u64> = Doubling {
            next: Duration::from_millis(100),
            max: Duration::from_millis(350),
        }
        .take(4)
        .map(|d| d.as_millis() as u64)
        .collect();
        assert_eq!(d, [100, 200, 350, 350]);
    }
}
