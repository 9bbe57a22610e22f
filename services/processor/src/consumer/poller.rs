//! The poll thread.
//!
//! Each turn: release retry records that became due, reconcile partition pauses, poll once.
//! Retry records are never handed out before their `not-before`: the first early record of a
//! retry partition is held in memory and the partition is paused; records behind it (already
//! fetched) queue behind it in offset order. Delays are uniform per retry level, so the head is
//! always the next one due; when the queue empties the partition resumes.

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
use super::{Ctx, Delivery, Shared, Source, Tp};
use crate::metrics::{IN_FLIGHT, IN_FLIGHT_BYTES, PARKED, PARKED_BYTES, PAUSED, RECORDS};

/// Longest single poll (bounds how late stop, pauses and due retries are noticed).
const POLL: Duration = Duration::from_millis(50);

/// What a consumed record costs beyond its key and value (the delivery, the decoded envelope's
/// fields, headers, bookkeeping), roughly.
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// How often persisted progress is committed.
const COMMIT_EVERY: Duration = Duration::from_millis(1000);

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
        let mut backpressure = false;
        let mut committed: HashMap<Tp, i64> = HashMap::new();
        let mut last_commit = Instant::now();
        let mut last_reconcile: Option<(Instant, bool)> = None;
        while !self.close.is_cancelled() {
            if last_commit.elapsed() >= COMMIT_EVERY {
                last_commit = Instant::now();
                self.commit_progress(&mut committed);
            }
            let draining = self.stop_fetch.is_cancelled();
            let (in_flight, bytes) = self.shared.partitions.in_flight_with_bytes();
            IN_FLIGHT.set(in_flight as i64);
            IN_FLIGHT_BYTES.set(bytes as i64);
            let (parked, parked_bytes) = self.shared.partitions.parked();
            PARKED.set(parked as i64);
            PARKED_BYTES.set(parked_bytes as i64);
            backpressure = if backpressure {
                in_flight as f64 > self.max_in_flight as f64 * self.resume_ratio
                    || bytes as f64 > self.max_in_flight_bytes as f64 * self.resume_ratio
            } else {
                in_flight >= self.max_in_flight || bytes >= self.max_in_flight_bytes
            };
            let next_due = if draining { None } else { self.release_due() };
            let all = backpressure || draining;
            let changed = self.shared.take_pauses_changed();
            if changed
                || last_reconcile
                    .is_none_or(|(at, was)| was != all || at.elapsed() >= RECONCILE_EVERY)
            {
                self.reconcile_pauses(all);
                last_reconcile = Some((Instant::now(), all));
            }
            let timeout = next_due.map_or(POLL, |d| d.min(POLL));
            match self.consumer.poll(timeout) {
                None => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(Ok(m)) if !draining => self.accept(&m),
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
        RECORDS.with_label_values(&[source.kind()]).inc();
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

    /// Pauses/resumes partitions so that exactly the ones that should be paused are.
    fn reconcile_pauses(&self, all: bool) {
        let assigned = self.shared.partitions.assigned();
        let want: HashSet<Tp> = if all {
            assigned.into_iter().collect()
        } else {
            let prios = self.shared.paused_priorities.lock().clone();
            let holds = self.shared.holds.lock();
            assigned
                .into_iter()
                .filter(|tp| {
                    holds.contains_key(tp)
                        || self
                            .shared
                            .topics
                            .priority_of(&tp.topic)
                            .is_some_and(|p| prios.contains(&p))
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
        PAUSED.set(paused.len() as i64);
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

fn tpl<'a>(tps: impl Iterator<Item = &'a Tp>) -> TopicPartitionList {
    let mut l = TopicPartitionList::new();
    for tp in tps {
        l.add_partition(&tp.topic, tp.partition);
    }
    l
}
