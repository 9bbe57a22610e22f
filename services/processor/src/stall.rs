//! Stalls of the whole process: a SIGSTOP, a paused VM, a host too starved to schedule it.
//!
//! A stalled processor cannot heartbeat. Past its session timeout the group gives its partitions
//! to another instance, which runs their records and commits their outcomes, while this one still
//! believes it owns them: its `revoked` tokens fire only once its poll thread has polled again and
//! librdkafka has learnt that the member was replaced. Threads resume together, so a record that
//! read its task's state before the stall and was about to start (it had its execution slot, or
//! got it from a handler that finished at once because its timer ran out during the stall) would
//! start the handler ahead of that news, on a task another instance may have finished meanwhile.
//!
//! So a first attempt, whose RUNNING is otherwise written without waiting, awaits its fenced claim
//! when [`Stalls::suspect_since`] says the process may have stood still after the record read the
//! state: the claim is refused if the task moved on, and the handler does not start. Retries and
//! redrives await their claim anyway.
//!
//! A ticker thread wakes every [`TICK`]; a wake later than [`THRESHOLD`] after the previous one is
//! a stall. A record also treats a ticker that has not ticked for [`THRESHOLD`] as a stall in
//! progress: right after the process resumes, the ticker may not have run yet. A false alarm
//! (a ticker thread starved for a second on a loaded host) costs one awaited write.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the ticker wakes.
pub const TICK: Duration = Duration::from_millis(50);
/// A gap between two ticks longer than this is a stall. Far below any session timeout (the
/// shortest this project configures is 6 s), far above a busy scheduler's delay.
pub const THRESHOLD: Duration = Duration::from_secs(1);

/// The stall clock: milliseconds since `base` of the last tick and of the end of the last stall.
pub struct Stalls {
    base: Instant,
    last_tick_ms: AtomicU64,
    /// When the ticker saw the last stall end (0: never).
    resumed_ms: AtomicU64,
}

/// The process's clock, ticking from its first use.
static PROCESS: LazyLock<Stalls> = LazyLock::new(|| {
    let spawned = std::thread::Builder::new()
        .name("stall-clock".into())
        .spawn(|| {
            loop {
                std::thread::sleep(TICK);
                // (Waits for this initialiser on its first tick.)
                if let Some(gap) = PROCESS.tick(Instant::now()) {
                    tracing::warn!(
                        stalled_ms = gap.as_millis() as u64,
                        "the process stood still; records read before it claim their task before they run"
                    );
                }
            }
        });
    if let Err(e) = spawned {
        // Without a ticker every record counts as suspect once THRESHOLD has passed: safe, slower.
        tracing::error!(error = %e, "could not start the stall clock");
    }
    Stalls::new(Instant::now())
});

/// Whether this process may have stood still since `read`: see [`Stalls::suspect_since`].
pub fn suspect_since(read: Instant) -> bool {
    PROCESS.suspect_since(read, Instant::now())
}

/// Starts the process's stall clock (otherwise it starts with the first record that asks).
pub fn start() {
    LazyLock::force(&PROCESS);
}

impl Stalls {
    /// A clock whose ticks count from `base`.
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            last_tick_ms: AtomicU64::new(0),
            resumed_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// A tick at `now`: returns the gap when it ends a stall.
    pub fn tick(&self, now: Instant) -> Option<Duration> {
        let now = self.ms(now);
        let prev = self.last_tick_ms.swap(now, Ordering::AcqRel);
        let gap = now.saturating_sub(prev);
        if gap > THRESHOLD.as_millis() as u64 {
            self.resumed_ms.store(now, Ordering::Release);
            return Some(Duration::from_millis(gap));
        }
        None
    }

    /// Whether the process may have stood still between `read` and `now`: a stall ended after
    /// `read` (or at the same millisecond), or the ticker has not ticked for [`THRESHOLD`].
    pub fn suspect_since(&self, read: Instant, now: Instant) -> bool {
        let resumed = self.resumed_ms.load(Ordering::Acquire);
        if resumed != 0 && resumed >= self.ms(read) {
            return true;
        }
        let last = self.last_tick_ms.load(Ordering::Acquire);
        self.ms(now).saturating_sub(last) > THRESHOLD.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_ticking_process_suspects_nothing() {
        let b = Instant::now();
        let s = Stalls::new(b);
        for ms in (50..=2_000).step_by(50) {
            assert_eq!(s.tick(at(b, ms)), None);
            assert!(!s.suspect_since(at(b, ms.saturating_sub(500)), at(b, ms + 10)));
        }
    }

    #[test]
    fn a_stall_after_the_read_is_suspect_and_one_before_it_is_not() {
        let b = Instant::now();
        let s = Stalls::new(b);
        assert_eq!(s.tick(at(b, 50)), None);
        // Stopped from 60 ms to 15 s: the first tick after it reports the gap.
        assert_eq!(s.tick(at(b, 15_000)), Some(Duration::from_millis(14_950)));
        // Read before the stall, asked after it: suspect.
        assert!(s.suspect_since(at(b, 55), at(b, 15_010)));
        // Read after the stall ended: not.
        assert_eq!(s.tick(at(b, 15_050)), None);
        assert!(!s.suspect_since(at(b, 15_020), at(b, 15_060)));
    }

    #[test]
    fn a_stall_the_ticker_has_not_seen_yet_is_suspect() {
        let b = Instant::now();
        let s = Stalls::new(b);
        assert_eq!(s.tick(at(b, 50)), None);
        // Resumed at 15 s; the record asks before the ticker has run.
        assert!(s.suspect_since(at(b, 55), at(b, 15_000)));
        // A delay under the threshold is not a stall.
        assert!(!s.suspect_since(at(b, 55), at(b, 900)));
    }
}
