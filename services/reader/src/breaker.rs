//! The Redis circuit breaker: failsafe's state machine (consecutive failures, exponential open
//! periods) instrumented so its state shows in `dispatch_circuit_breaker_open` and in health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dispatch_runtime::admin::{ComponentStatus, Health};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Config, Instrument, StateMachine};

use crate::metrics;

/// Health component name of Redis.
pub const REDIS: &str = "redis";

/// Reports state changes.
#[derive(Debug, Clone)]
pub struct Observer {
    open: Arc<AtomicBool>,
    health: Health,
}

impl Instrument for Observer {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.open.store(true, Ordering::Relaxed);
        metrics::BREAKER_OPEN
            .with_label_values(&["reader", "redis"])
            .set(1);
        self.health.set(
            REDIS,
            ComponentStatus::Degraded("circuit open: reads skip redis".into()),
        );
    }

    fn on_half_open(&self) {}

    fn on_closed(&self) {
        // The state machine reports "closed" once at construction; only a real transition from
        // open is news.
        if self.open.swap(false, Ordering::Relaxed) {
            metrics::BREAKER_OPEN
                .with_label_values(&["reader", "redis"])
                .set(0);
            self.health.set(REDIS, ComponentStatus::Up);
        }
    }
}

/// Open periods `open, 2·open, 4·open, …` capped at `max` (failsafe's own exponential backoff
/// refuses periods under a second, which the tests and a latency-sensitive cache want).
#[derive(Debug, Clone)]
pub struct Doubling {
    next: Duration,
    max: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let out = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        Some(out)
    }
}

/// A breaker around one dependency.
#[derive(Debug, Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Doubling>, Observer>,
    open: Arc<AtomicBool>,
}

impl Breaker {
    /// Opens after `failures` consecutive failures, for `open` doubling up to `max_open`.
    pub fn new(failures: u32, open: Duration, max_open: Duration, health: Health) -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let machine = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                failures,
                Doubling {
                    next: open,
                    max: max_open.max(open),
                },
            ))
            .instrument(Observer {
                open: Arc::clone(&flag),
                health,
            })
            .build();
        Self {
            machine,
            open: flag,
        }
    }

    /// Whether a call may go through (closed, or half-open and probing).
    pub fn permits(&self) -> bool {
        self.machine.is_call_permitted()
    }

    /// Records a success.
    pub fn success(&self) {
        self.machine.on_success();
    }

    /// Records a failure.
    pub fn failure(&self) {
        self.machine.on_error();
    }

    /// Whether the breaker is open (or half-open after being open).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_probe() {
        let health = Health::new();
        let b = Breaker::new(
            3,
            Duration::from_millis(20),
            Duration::from_millis(40),
            health.clone(),
        );
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert!(!b.is_open(), "failures were not consecutive");
        b.failure();
        assert!(b.is_open());
        assert!(!b.permits());
        assert_eq!(health.readiness().status, "degraded");
        std::thread::sleep(Duration::from_millis(30));
        assert!(b.permits(), "half-open after the open period");
        b.success();
        assert!(!b.is_open());
        assert_eq!(health.readiness().status, "ready");
    }
}
