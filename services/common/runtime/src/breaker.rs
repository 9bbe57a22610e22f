//! The one circuit breaker every service uses: failsafe's state machine (consecutive failures
//! open it; it stays open for a doubling period, capped; then half-open, where the first success
//! closes it and a failure re-opens it), exported as
//! `dispatch_circuit_breaker_open{service, breaker}` (1 from the moment it opens until a success
//! closes it, half-open included), logged on each transition, and optionally reflected in a health
//! component (degraded while open).
//!
//! The gauge is defined here once; services never define it themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Config, Instrument, StateMachine};
use prometheus::{IntGaugeVec, Opts};

use crate::admin::{ComponentStatus, Health};

/// `dispatch_circuit_breaker_open{service, breaker}`.
static OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntGaugeVec::new(
            Opts::new(
                "dispatch_circuit_breaker_open",
                "1 while the circuit breaker is open or half-open, 0 once a success closed it.",
            ),
            &["service", "breaker"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Registers `dispatch_circuit_breaker_open` (its series come with each breaker).
pub(crate) fn init_metrics() {
    LazyLock::force(&OPEN);
}

/// The gauge's current value for one breaker (tests, health summaries).
pub fn gauge_is_open(service: &str, breaker: &str) -> bool {
    OPEN.with_label_values(&[service, breaker]).get() == 1
}

/// Open periods `open, 2·open, 4·open, …` capped at `max` (failsafe's own exponential backoff
/// insists on whole seconds, which tests and a latency-sensitive cache do not want).
#[derive(Debug, Clone)]
pub struct Doubling {
    next: Duration,
    max: Duration,
}

impl Doubling {
    /// Starts at `open`, never above `max` (nor below `open`).
    pub fn new(open: Duration, max: Duration) -> Self {
        Self {
            next: open,
            max: max.max(open),
        }
    }
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let out = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        Some(out)
    }
}

/// What a breaker needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open it (at least 1).
    pub failures: u32,
    /// First open period.
    pub open: Duration,
    /// Longest open period.
    pub max_open: Duration,
}

impl BreakerSettings {
    /// From millisecond settings (zeros are raised to the smallest sensible values).
    pub fn from_ms(failures: u32, open_ms: u64, max_open_ms: u64) -> Self {
        let open = Duration::from_millis(open_ms.max(1));
        Self {
            failures: failures.max(1),
            open,
            max_open: Duration::from_millis(max_open_ms).max(open),
        }
    }
}

/// Reports transitions.
#[derive(Debug, Clone)]
struct Observer {
    service: &'static str,
    name: Arc<str>,
    open: Arc<AtomicBool>,
    health: Option<(Health, &'static str)>,
}

impl Instrument for Observer {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        if !self.open.swap(true, Ordering::Relaxed) {
            tracing::warn!(breaker = %self.name, "circuit breaker open");
        }
        OPEN.with_label_values(&[self.service, &self.name]).set(1);
        if let Some((h, component)) = &self.health {
            h.set(
                component,
                ComponentStatus::Degraded(format!("circuit breaker {} open", self.name)),
            );
        }
    }

    fn on_half_open(&self) {}

    fn on_closed(&self) {
        // failsafe reports "closed" once at construction too: only a transition from open is news.
        if self.open.swap(false, Ordering::Relaxed) {
            tracing::info!(breaker = %self.name, "circuit breaker closed");
            OPEN.with_label_values(&[self.service, &self.name]).set(0);
            if let Some((h, component)) = &self.health {
                h.set(component, ComponentStatus::Up);
            }
        }
    }
}

/// A breaker around one dependency (cheap to clone; clones share the state).
#[derive(Debug, Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Doubling>, Observer>,
    open: Arc<AtomicBool>,
}

impl Breaker {
    /// A breaker exported as `{service, breaker = name}`.
    pub fn new(service: &'static str, name: impl Into<Arc<str>>, s: BreakerSettings) -> Self {
        Self::build(service, name.into(), s, None)
    }

    /// As [`Breaker::new`], also setting health `component` degraded while open and up again
    /// when it closes.
    pub fn with_health(
        service: &'static str,
        name: impl Into<Arc<str>>,
        s: BreakerSettings,
        health: Health,
        component: &'static str,
    ) -> Self {
        Self::build(service, name.into(), s, Some((health, component)))
    }

    fn build(
        service: &'static str,
        name: Arc<str>,
        s: BreakerSettings,
        health: Option<(Health, &'static str)>,
    ) -> Self {
        OPEN.with_label_values(&[service, &name]).set(0);
        let open = Arc::new(AtomicBool::new(false));
        let machine = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                s.failures.max(1),
                Doubling::new(s.open, s.max_open),
            ))
            .instrument(Observer {
                service,
                name,
                open: Arc::clone(&open),
                health,
            })
            .build();
        Self { machine, open }
    }

    /// Whether a call may go through: closed, or half-open after the open period (asking is
    /// what moves an open breaker to half-open; use [`Breaker::is_open`] to only look).
    pub fn permits(&self) -> bool {
        self.machine.is_call_permitted()
    }

    /// Records a successful call (closes a half-open breaker).
    pub fn success(&self) {
        self.machine.on_success();
    }

    /// Records a failed call.
    pub fn failure(&self) {
        self.machine.on_error();
    }

    /// Whether it opened and no success has closed it since (half-open counts as open).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsafe::clock;

    fn settings(failures: u32, open_ms: u64, max_ms: u64) -> BreakerSettings {
        BreakerSettings::from_ms(failures, open_ms, max_ms)
    }

    // The breaker reads failsafe's clock, which `clock::freeze` stops for the closure (on this
    // thread): open periods pass with `advance`, exactly, without sleeping.

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_probe() {
        clock::freeze(|time| {
            let health = Health::new();
            let b =
                Breaker::with_health("test", "probe", settings(3, 20, 40), health.clone(), "dep");
            health.set("dep", ComponentStatus::Up);
            b.failure();
            b.success();
            b.failure();
            b.failure();
            assert!(!b.is_open(), "failures were not consecutive");
            assert!(!gauge_is_open("test", "probe"));
            b.failure();
            assert!(b.is_open());
            assert!(gauge_is_open("test", "probe"));
            assert!(!b.permits());
            assert_eq!(health.readiness().status, "degraded");
            time.advance(Duration::from_millis(20));
            assert!(!b.permits(), "open until the period has passed");
            time.advance(Duration::from_millis(1));
            assert!(b.permits(), "half-open once it has");
            assert!(b.is_open(), "half-open still counts as open");
            assert!(gauge_is_open("test", "probe"));
            b.success();
            assert!(!b.is_open());
            assert!(!gauge_is_open("test", "probe"));
            assert_eq!(health.readiness().status, "ready");
        });
    }

    #[test]
    fn a_failed_probe_reopens_it_for_twice_as_long_up_to_the_cap() {
        clock::freeze(|time| {
            let b = Breaker::new("test", "reopen", settings(1, 20, 50));
            // Each period: not permitted at its end, permitted 1 ms later.
            let mut open_for = |ms: u64| {
                time.advance(Duration::from_millis(ms));
                let at_end = b.permits();
                time.advance(Duration::from_millis(1));
                (at_end, b.permits())
            };
            b.failure();
            assert_eq!(open_for(20), (false, true), "the first period");
            b.failure();
            assert!(
                gauge_is_open("test", "reopen"),
                "a failed probe opens it again"
            );
            assert_eq!(open_for(40), (false, true), "twice as long");
            b.failure();
            assert_eq!(open_for(50), (false, true), "then the cap, 50 ms (not 80)");
            // A successful probe closes it and starts the periods over.
            b.success();
            assert!(!gauge_is_open("test", "reopen"));
            b.failure();
            assert_eq!(open_for(20), (false, true), "20 ms again after a close");
        });
    }

    #[test]
    fn open_periods_double_up_to_the_cap() {
        let d: Vec<u64> = Doubling::new(Duration::from_millis(100), Duration::from_millis(350))
            .take(4)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(d, [100, 200, 350, 350]);
        let s = settings(0, 0, 0);
        assert_eq!(s.failures, 1);
        assert_eq!(s.open, Duration::from_millis(1));
        assert_eq!(s.max_open, s.open);
    }
}
