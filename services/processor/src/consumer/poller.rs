//! The poll thread.
//!
//! Each turn: release retry records that became due, reconcile partition pauses, poll once.
//! Retry records are never handed out before their `not-before`: the first early record of a
//! retry partition is held in memory and the partition is paused; records behind it (already
//! fetched) queue behind it in offset order. Delays are uniform per retry level, so the head is
//! always the next one due; when the queue empties the partition resumes.
//!
//! The in-flight window is shared by priority: each priority's first-attempt partitions pause
//! once it holds its share of the window (by the priority weights) plus whatever the others leave
//! unused. A backlog of one priority therefore never fills the window with its records alone:
//! the execution slots, granted by weight, always find records of every priority that has work,
//! and a critical record is fetched while a low-priority backlog waits. Only a priority with work
//! (records in the window, or one consumed within [`ACTIVE_FOR`]) is owed its share, so a lone
//! priority still has the whole window.
//!
//! The records bound pauses the retry topics only while retry records are in the window. An empty
//! retry partition costs nothing to keep fetching, and it keeps the client's fetch loop turning:
//! librdkafka picks a resumed partition up on its broker thread's next fetch, and with every
//! partition paused that thread idles, so a priority resumed after a moment when all were held
//! went unfetched for 0.3-0.5 s (measured on loopback) while the slots drained the others' records
//! — the low-priority backlog then ran beyond its weight.
//!
//! Over 400 lines because one turn of the poll thread (due retries, the priority window and the
//! pauses it implies, offset commits, leaving the group) shares the poller's state; the tests start
//! near line 427. The window arithmetic (`shares`, `window_limits`) with its tests would move out
//! first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::envelope::header;
use dispatch_core::{Envelope, Headers, Priority};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::context::commit_marks;
use super::offsets::Window;
use super::{Ctx, Delivery, Shared, Source, Tp};
use crate::metrics;

/// Longest single poll (bounds how late stop, pauses and due retries are noticed).
const POLL: Duration = Duration::from_millis(50);

/// What a consumed record costs beyond its key and value (the delivery, the decoded envelope's
/// fields, headers, bookkeeping), roughly.
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// How often persisted progress is committed.
const COMMIT_EVERY: Duration = Duration::from_millis(1000);

/// A priority that consumed a record this recently is owed its share of the window even with
/// none in it.
const ACTIVE_FOR: Duration = Duration::from_secs(5);

/// Pauses are reconciled when one of their inputs changed, and at least this often (which also
/// retries a pause or resume the client refused).
const RECONCILE_EVERY: Duration = Duration::from_millis(1000);

/// The poll loop's wiring.
pub struct Poller {
    /// The consumer (shared with control and lag reporting).
    pub consumer: Arc<BaseConsumer<Ctx>>,
    /// Shared consumption state.
    pub shared: Arc<Shared>,
    /// Dispatch channels: critical, default, low.
    pub out: [UnboundedSender<Delivery>; 3],
    /// Pause everything at this many unfinished records...
    pub max_in_flight: usize,
    /// ...or at this many bytes of them...
    pub max_in_flight_bytes: usize,
    /// ...and resume once both are down to this fraction.
    pub resume_ratio: f64,
    /// Weights of the critical, default and low priorities: their shares of the window.
    pub priority_weights: [u32; 3],
    /// Stop handing out records (shutdown started); keep serving callbacks.
    pub stop_fetch: CancellationToken,
    /// Commit, leave the group and exit.
    pub close: CancellationToken,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn channel(p: Priority) -> usize {
    match p {
        Priority::Critical => 0,
        Priority::Default => 1,
        Priority::Low => 2,
    }
}

impl Poller {
    /// Runs until `close`; then commits what is persisted and leaves the group.
    pub fn run(self) {
        let mut window = WindowState::default();
        let mut committed: HashMap<Tp, i64> = HashMap::new();
        let mut last_commit = Instant::now();
        let mut last_reconcile: Option<(Instant, Pauses)> = None;
        let mut seen: [Option<Instant>; 3] = [None; 3];
        let names: [String; 3] = Priority::ALL.map(|p| self.shared.topics.tasks(p));
        let priority_of = |topic: &str| names.iter().position(|n| n == topic);
        while !self.close.is_cancelled() {
            if last_commit.elapsed() >= COMMIT_EVERY {
                last_commit = Instant::now();
                self.commit_progress(&mut committed);
            }
            let draining = self.stop_fetch.is_cancelled();
            let w = self.shared.partitions.window(priority_of);
            metrics::consumer_window(&w);
            window = self.window_state(window, &w, &seen);
            let next_due = if draining { None } else { self.release_due() };
            let retries_in_window = w.records > w.by_priority.iter().sum::<usize>();
            let pauses = Pauses {
                all: window.bytes_full || draining,
                retries: window.records_full && retries_in_window,
                held: std::array::from_fn(|i| {
                    window.held[i] || (window.records_full && !window.room[i])
                }),
            };
            let changed = self.shared.take_pauses_changed();
            if changed
                || last_reconcile
                    .is_none_or(|(at, was)| was != pauses || at.elapsed() >= RECONCILE_EVERY)
            {
                self.reconcile_pauses(pauses);
                last_reconcile = Some((Instant::now(), pauses));
            }
            let timeout = next_due.map_or(POLL, |d| d.min(POLL));
            match self.consumer.poll(timeout) {
                None => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(Ok(m)) if !draining => {
                    if let Some(i) = priority_of(m.topic()) {
                        seen[i] = Some(Instant::now());
                    }
                    self.accept(&m);
                }
                // Draining: not tracked, so it does not move any watermark; it is re-read later.
                Some(Ok(_)) => {}
            }
        }
        self.leave();
    }

    fn accept(&self, m: &BorrowedMessage<'_>) {
        let Some(source) = self.shared.source_of(m.topic()) else {
            return;
        };
        let tp = Tp::new(m.topic(), m.partition());
        let value = m.payload().unwrap_or_default();
        let key = m.key().unwrap_or_default();
        let bytes = RECORD_OVERHEAD_BYTES + 2 * value.len() + key.len();
        let Some(lease) = self.shared.partitions.begin(&tp, m.offset(), bytes) else {
            return;
        };
        metrics::record_consumed(source);
        let mut headers = Headers::default();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                headers.set(h.key, h.value.unwrap_or_default());
            }
        }
        let envelope = Envelope::decode(value);
        let raw = if envelope.is_err() {
            value.to_vec()
        } else {
            Vec::new()
        };
        let not_before_ms = match source {
            Source::Retry(_) => headers.get_i64(header::NOT_BEFORE),
            Source::Tasks(_) => None,
        };
        let d = Delivery {
            lease,
            source,
            key: key.to_vec(),
            headers,
            envelope,
            raw,
            not_before_ms,
        };
        let mut holds = self.shared.holds.lock();
        let early = d.not_before_ms.is_some_and(|nb| nb > now_ms());
        match holds.get_mut(&tp) {
            Some(q) => q.push_back(d),
            None if early => {
                holds.entry(tp).or_default().push_back(d);
                self.shared.pauses_changed();
            }
            None => {
                drop(holds);
                self.send(d);
            }
        }
    }

    fn send(&self, d: Delivery) {
        let lease = d.lease.clone();
        if self.out[channel(d.priority())].send(d).is_err() {
            // The dispatcher is gone (shutdown): the record stays unfinished and is re-read.
            self.shared.partitions.abandon(&lease);
        }
    }

    /// Hands out held records that are due; returns how long until the next one is.
    fn release_due(&self) -> Option<Duration> {
        let now = now_ms();
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        {
            let mut holds = self.shared.holds.lock();
            if holds.is_empty() {
                return None;
            }
            let held = holds.len();
            holds.retain(|_, q| {
                while q
                    .front()
                    .is_some_and(|d| d.not_before_ms.is_none_or(|nb| nb <= now))
                {
                    if let Some(d) = q.pop_front() {
                        due.push(d);
                    }
                }
                if let Some(nb) = q.front().and_then(|d| d.not_before_ms) {
                    next = Some(next.map_or(nb, |n| n.min(nb)));
                }
                !q.is_empty()
            });
            if holds.len() != held {
                self.shared.pauses_changed();
            }
        }
        for d in due {
            self.send(d);
        }
        next.map(|n| Duration::from_millis(u64::try_from(n - now).unwrap_or(0)))
    }

    /// The window's state after this turn's counts `w`, given the last turn's (every bound
    /// trips at its limit and releases once down to `resume_ratio` of it).
    fn window_state(
        &self,
        was: WindowState,
        w: &Window,
        seen: &[Option<Instant>; 3],
    ) -> WindowState {
        let r = self.resume_ratio;
        let over = |was: bool, n: usize, limit: usize| {
            if was {
                n as f64 > limit as f64 * r
            } else {
                n >= limit
            }
        };
        let n = w.by_priority;
        let active: [bool; 3] =
            std::array::from_fn(|i| n[i] > 0 || seen[i].is_some_and(|t| t.elapsed() < ACTIVE_FOR));
        let limits = window_limits(self.max_in_flight, self.priority_weights, n, active);
        let shares = shares(self.max_in_flight, self.priority_weights);
        WindowState {
            records_full: over(was.records_full, w.records, self.max_in_flight),
            bytes_full: over(was.bytes_full, w.bytes, self.max_in_flight_bytes),
            held: std::array::from_fn(|i| over(was.held[i], n[i], limits[i])),
            room: std::array::from_fn(|i| !over(!was.room[i], n[i], shares[i])),
        }
    }

    /// Pauses/resumes partitions so that exactly the ones that should be paused are.
    fn reconcile_pauses(&self, pauses: Pauses) {
        let assigned = self.shared.partitions.assigned();
        let want: HashSet<Tp> = if pauses.all {
            assigned.into_iter().collect()
        } else {
            let prios = self.shared.paused_priorities.lock().clone();
            let holds = self.shared.holds.lock();
            assigned
                .into_iter()
                .filter(|tp| {
                    holds.contains_key(tp)
                        || match self.shared.topics.priority_of(&tp.topic) {
                            Some(p) => prios.contains(&p) || pauses.held[channel(p)],
                            // A retry topic: only the window as a whole holds it.
                            None => pauses.retries,
                        }
                })
                .collect()
        };
        let mut paused = self.shared.paused.lock();
        let to_pause: Vec<Tp> = want.difference(&paused).cloned().collect();
        let to_resume: Vec<Tp> = paused.difference(&want).cloned().collect();
        if !to_pause.is_empty() {
            match self.consumer.pause(&tpl(to_pause.iter())) {
                Ok(()) => paused.extend(to_pause),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pause partitions");
                    self.shared.pauses_changed();
                }
            }
        }
        if !to_resume.is_empty() {
            match self.consumer.resume(&tpl(to_resume.iter())) {
                Ok(()) => {
                    for tp in &to_resume {
                        paused.remove(tp);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resume partitions");
                    self.shared.pauses_changed();
                }
            }
        }
        metrics::paused_partitions(paused.len());
    }

    /// Commits (asynchronously) the watermarks that moved since the last commit. Done here rather
    /// than by librdkafka's auto-commit so that exactly the persisted watermark is committed, on a
    /// timer, whatever the client version does with stored offsets.
    fn commit_progress(&self, committed: &mut HashMap<Tp, i64>) {
        let marks: Vec<(Tp, i64)> = self
            .shared
            .partitions
            .watermarks()
            .into_iter()
            .filter(|(tp, w)| committed.get(tp) != Some(w))
            .collect();
        if marks.is_empty() {
            return;
        }
        let mut l = TopicPartitionList::new();
        for (tp, w) in &marks {
            let _ = l.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*w));
        }
        match self.consumer.commit(&l, CommitMode::Async) {
            Ok(()) => committed.extend(marks),
            Err(e) => tracing::debug!(error = %e, "offset commit not sent"),
        }
        let assigned = self.shared.partitions.assigned();
        committed.retain(|tp, _| assigned.contains(tp));
    }

    /// Commits the persisted watermarks, leaves the group (the revoke callback runs) and returns.
    fn leave(&self) {
        commit_marks(
            &self.consumer,
            &self.shared.partitions.watermarks(),
            "shutdown",
        );
        self.consumer.unsubscribe();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            if self.shared.partitions.assigned().is_empty() {
                break;
            }
        }
        tracing::info!("consumer left the group");
    }
}

/// The window's bounds as they stood on the last turn.
#[derive(Debug, Default, Clone, Copy)]
struct WindowState {
    /// The records bound is reached.
    records_full: bool,
    /// The bytes bound is reached.
    bytes_full: bool,
    /// Per priority: its part of the window is full.
    held: [bool; 3],
    /// Per priority: it holds less than its share, so the records bound does not hold it.
    room: [bool; 3],
}

/// Which partitions pause: all (bytes bound, shutdown), or by priority, with the retry topics
/// when the records bound is reached while retry records are in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pauses {
    all: bool,
    retries: bool,
    held: [bool; 3],
}

/// Each priority's weighted share of a window of `max` records.
fn shares(max: usize, weights: [u32; 3]) -> [usize; 3] {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
    // At least one record: a share of 0 would trip and release its bound on alternate turns.
    std::array::from_fn(|i| {
        usize::try_from(max as u64 * u64::from(weights[i]) / total)
            .unwrap_or(max)
            .max(1)
    })
}

/// Each priority's part of an in-flight window of `max` records, given what each holds now
/// (`n`) and which have work (`active`): the window less what the others hold or are owed. An
/// active priority is owed its weighted share of the window, so it finds room however large the
/// others' backlogs; a priority may use beyond its share what the others neither hold nor are
/// owed.
fn window_limits(max: usize, weights: [u32; 3], n: [usize; 3], active: [bool; 3]) -> [usize; 3] {
    let share = shares(max, weights);
    std::array::from_fn(|i| {
        let others: usize = (0..3)
            .filter(|j| *j != i)
            .map(|j| if active[j] { n[j].max(share[j]) } else { n[j] })
            .sum();
        max.saturating_sub(others).max(share[i])
    })
}

fn tpl<'a>(tps: impl Iterator<Item = &'a Tp>) -> TopicPartitionList {
    let mut l = TopicPartitionList::new();
    for tp in tps {
        l.add_partition(&tp.topic, tp.partition);
    }
    l
}

#[cfg(test)]
mod tests {
    use super::window_limits;

    const ALL: [bool; 3] = [true; 3];

    #[test]
    fn every_active_priority_keeps_its_share_of_the_window() {
        // All with work: each may take the window less what the others are owed.
        assert_eq!(window_limits(100, [6, 3, 1], [0, 0, 0], ALL), [60, 30, 10]);
        // A critical backlog filled its part: default and low still find theirs free.
        assert_eq!(window_limits(100, [6, 3, 1], [60, 0, 0], ALL), [60, 30, 10]);
        // Low holds more than its share (it came first): the others keep theirs, critical's
        // part shrinks to its share and no further.
        assert_eq!(window_limits(100, [6, 3, 1], [0, 0, 90], ALL), [60, 30, 10]);
        assert_eq!(
            window_limits(100, [6, 3, 1], [10, 0, 30], ALL),
            [60, 30, 10]
        );
        // Equal weights.
        assert_eq!(window_limits(90, [1, 1, 1], [0, 0, 0], ALL), [30, 30, 30]);
        // A share never rounds to nothing.
        assert_eq!(super::shares(8, [6, 3, 1]), [4, 2, 1]);
    }

    #[test]
    fn a_lone_priority_has_the_whole_window() {
        let alone = [false, true, false];
        assert_eq!(window_limits(100, [6, 3, 1], [0, 40, 0], alone)[1], 100);
        // Another priority's records still in the window count, its share does not.
        assert_eq!(window_limits(100, [6, 3, 1], [5, 40, 0], alone)[1], 95);
    }

    #[test]
    fn the_parts_never_exceed_the_window_once_every_priority_is_at_its_limit() {
        for n in [
            [0, 0, 0],
            [60, 30, 10],
            [5, 80, 3],
            [100, 100, 100],
            [60, 0, 40],
        ] {
            let l = window_limits(100, [6, 3, 1], n, ALL);
            // What each may hold without another exceeding its own limit.
            let held: [usize; 3] = std::array::from_fn(|i| n[i].min(l[i]));
            assert!(
                held.iter().sum::<usize>() <= 100 || n.iter().sum::<usize>() > 100,
                "{n:?} {l:?}"
            );
        }
    }
}
