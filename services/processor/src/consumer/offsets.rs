//! Per-partition offset tracking: which consumed records are still unfinished, and the
//! contiguous watermark that may be stored.
//!
//! Every polled record gets a slot (`Queued`), turns `Running` when its lane starts it, and is
//! removed when its effects are persisted ([`Partitions::finish`]). The offset stored for a
//! partition is its lowest unfinished slot, or one past the highest polled offset when none is
//! left, so a crash re-delivers exactly the records whose effects may be missing. A record dropped
//! because its partition was revoked is marked `Abandoned`: it keeps blocking the watermark (it
//! was not persisted) but nobody waits for it.
//!
//! Each assignment of a partition has an epoch; a lease of an earlier epoch (work that outlived
//! a revoke) can no longer move the partition's watermark. It also has a *fence*: the
//! cluster-wide lease epoch of this assignment (`dispatch_store::epochs`), which every write made
//! for the partition's records carries, so the store drops the late writes of a replaced owner.
//! A revoke first lets running records finish for the drain bound, then fires their `stop`
//! tokens: their handlers are cancelled and nothing of theirs is written.
//!
//! **Parking.** A record that waits for something other work does not need (its key's lane, an
//! operator pause of its type, its type's concurrency permit) is *parked*: it stays tracked (it
//! blocks the watermark, a crash re-reads it) but leaves the in-flight window that pauses the
//! partitions, so a hot key, a paused type or a limited type cannot stall the instance. Parked
//! records have their own budget ([`Partitions::set_parking_budget`]: records and bytes, the
//! memory they hold); beyond it a waiting record counts against the window as before
//! (backpressure instead of growth).
//!
//! Over 400 lines because of its tests, which start near line 426: slots, epochs, fences, the
//! parking budget and revocation all move the one watermark; the parking budget
//! ([`Partitions::park`] and its counters) would move out first.

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl Tp {
    /// `topic`/`partition`.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: Arc::from(topic),
            partition,
        }
    }
}

/// The right to finish one consumed record.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Where the record came from.
    pub tp: Tp,
    /// Its offset.
    pub offset: i64,
    /// Assignment epoch of the partition when it was polled.
    pub epoch: u64,
    /// The cluster-wide lease epoch of this assignment (0: none).
    pub fence: u64,
    /// Fires when the partition is revoked (or the processor stops): drop unstarted work.
    pub revoked: CancellationToken,
    /// Fires when a revoke's drain bound is over: stop running handlers, write nothing.
    pub stop: CancellationToken,
    /// When it was polled.
    pub polled_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Queued,
    Running,
    Abandoned,
}

/// A record's state, when it was polled, the bytes it holds (zero once abandoned) and whether it
/// is parked (waiting outside the in-flight window).
#[derive(Debug, Clone, Copy)]
struct SlotEntry {
    state: Slot,
    polled_at: Instant,
    bytes: usize,
    parked: bool,
}

#[derive(Debug)]
struct Partition {
    epoch: u64,
    fence: u64,
    revoked: CancellationToken,
    stop: CancellationToken,
    slots: BTreeMap<i64, SlotEntry>,
    /// Bytes held by the slots (parked ones included).
    bytes: usize,
    /// Parked slots and their bytes.
    parked: usize,
    parked_bytes: usize,
    /// One past the highest offset polled.
    next: Option<i64>,
    /// Last offset stored.
    stored: Option<i64>,
}

impl Partition {
    fn watermark(&self) -> Option<i64> {
        self.slots.keys().next().copied().or(self.next)
    }

    /// Records of this partition running right now.
    fn running(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.state == Slot::Running)
            .count()
    }

    /// A slot leaves: its bytes (and its parking) no longer count.
    fn forget(&mut self, old: &SlotEntry) {
        self.bytes -= old.bytes;
        if old.parked {
            self.parked -= 1;
            self.parked_bytes -= old.bytes;
        }
    }
}

/// What [`Partitions::window`] counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Records consumed and not persisted, parked ones left out.
    pub records: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Records parked.
    pub parked: usize,
    /// Their bytes.
    pub parked_bytes: usize,
    /// `records` of the critical, default and low first-attempt topics.
    pub by_priority: [usize; 3],
}

/// The tracker of every assigned partition.
#[derive(Debug, Default)]
pub struct Partitions {
    inner: Mutex<HashMap<Tp, Partition>>,
    epochs: AtomicU64,
    /// Most records and bytes parked at once, over all partitions (0: parking disabled).
    budget: Mutex<(usize, usize)>,
}

impl Partitions {
    /// At most `records` records holding `bytes` bytes are parked at once (see the module docs).
    pub fn set_parking_budget(&self, records: usize, bytes: usize) {
        *self.budget.lock() = (records, bytes);
    }

    /// Parks a waiting record if the budget allows; false when it does not (or the lease is
    /// stale), and the record keeps counting against the in-flight window.
    pub fn park(&self, lease: &Lease) -> bool {
        let (max, max_bytes) = *self.budget.lock();
        let mut m = self.inner.lock();
        let (n, b) = m
            .values()
            .fold((0, 0), |(n, b), p| (n + p.parked, b + p.parked_bytes));
        let Some(p) = m.get_mut(&lease.tp).filter(|p| p.epoch == lease.epoch) else {
            return false;
        };
        let Some(s) = p.slots.get_mut(&lease.offset) else {
            return false;
        };
        if s.parked {
            return true;
        }
        if n >= max || b + s.bytes > max_bytes {
            return false;
        }
        s.parked = true;
        p.parked += 1;
        p.parked_bytes += s.bytes;
        true
    }

    /// The record stopped waiting: it counts against the in-flight window again.
    pub fn unpark(&self, lease: &Lease) {
        let mut m = self.inner.lock();
        let Some(p) = m.get_mut(&lease.tp).filter(|p| p.epoch == lease.epoch) else {
            return;
        };
        if let Some(s) = p.slots.get_mut(&lease.offset).filter(|s| s.parked) {
            s.parked = false;
            p.parked -= 1;
            p.parked_bytes -= s.bytes;
        }
    }

    /// Records and bytes parked now, over all partitions.
    pub fn parked(&self) -> (usize, usize) {
        self.inner
            .lock()
            .values()
            .fold((0, 0), |(n, b), p| (n + p.parked, b + p.parked_bytes))
    }

    /// Starts tracking newly assigned partitions (without a lease epoch).
    pub fn assign(&self, tps: impl IntoIterator<Item = Tp>) {
        self.assign_fenced(tps.into_iter().map(|tp| (tp, 0)));
    }

    /// Starts tracking newly assigned partitions, each with its lease epoch.
    pub fn assign_fenced(&self, tps: impl IntoIterator<Item = (Tp, u64)>) {
        let mut m = self.inner.lock();
        for (tp, fence) in tps {
            let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
            m.entry(tp).or_insert_with(|| Partition {
                epoch,
                fence,
                revoked: CancellationToken::new(),
                stop: CancellationToken::new(),
                slots: BTreeMap::new(),
                bytes: 0,
                parked: 0,
                parked_bytes: 0,
                next: None,
                stored: None,
            });
        }
    }

    /// Registers a polled record of `bytes` (its memory, roughly); `None` when its partition is
    /// not assigned.
    pub fn begin(&self, tp: &Tp, offset: i64, bytes: usize) -> Option<Lease> {
        let mut m = self.inner.lock();
        let p = m.get_mut(tp)?;
        let now = Instant::now();
        let entry = SlotEntry {
            state: Slot::Queued,
            polled_at: now,
            bytes,
            parked: false,
        };
        if let Some(old) = p.slots.insert(offset, entry) {
            p.forget(&old);
        }
        p.bytes += bytes;
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(Lease {
            tp: tp.clone(),
            offset,
            epoch: p.epoch,
            fence: p.fence,
            revoked: p.revoked.clone(),
            stop: p.stop.clone(),
            polled_at: now,
        })
    }

    /// Marks a record as running; false when its partition was revoked (the caller abandons it).
    pub fn start(&self, lease: &Lease) -> bool {
        let mut m = self.inner.lock();
        match m.get_mut(&lease.tp) {
            Some(p) if p.epoch == lease.epoch && !p.revoked.is_cancelled() => {
                if let Some(s) = p.slots.get_mut(&lease.offset) {
                    s.state = Slot::Running;
                }
                true
            }
            _ => false,
        }
    }

    /// A record's work was dropped unpersisted (revoke or shutdown). Its slot keeps blocking the
    /// watermark; its bytes are released.
    pub fn abandon(&self, lease: &Lease) {
        let mut m = self.inner.lock();
        let Some(p) = m.get_mut(&lease.tp).filter(|p| p.epoch == lease.epoch) else {
            return;
        };
        if let Some(s) = p.slots.get_mut(&lease.offset) {
            let old = *s;
            *s = SlotEntry {
                state: Slot::Abandoned,
                bytes: 0,
                parked: false,
                ..old
            };
            p.forget(&old);
        }
    }

    /// A record's effects are persisted: removes it and, when the partition's watermark moved,
    /// calls `store(tp, watermark)` (under the lock, so stores never go backwards). Returns false
    /// for a stale lease (its partition was revoked meanwhile).
    pub fn finish(&self, lease: &Lease, store: impl FnOnce(&Tp, i64)) -> bool {
        let mut m = self.inner.lock();
        let Some(p) = m.get_mut(&lease.tp).filter(|p| p.epoch == lease.epoch) else {
            return false;
        };
        if let Some(old) = p.slots.remove(&lease.offset) {
            p.forget(&old);
        }
        if let Some(w) = p.watermark().filter(|w| p.stored.is_none_or(|s| *w > s)) {
            p.stored = Some(w);
            store(&lease.tp, w);
        }
        true
    }

    /// Revokes partitions: fires their tokens, waits up to `drain` for their running records,
    /// then stops tracking them. Returns the watermark of each to commit.
    pub fn revoke(&self, tps: &[Tp], drain: Duration) -> Vec<(Tp, i64)> {
        {
            let m = self.inner.lock();
            for tp in tps {
                if let Some(p) = m.get(tp) {
                    p.revoked.cancel();
                }
            }
        }
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline && self.running_in(tps) > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut m = self.inner.lock();
        for tp in tps {
            if let Some(p) = m.get(tp) {
                p.stop.cancel();
            }
        }
        tps.iter()
            .filter_map(|tp| {
                let p = m.remove(tp)?;
                p.watermark().map(|w| (tp.clone(), w))
            })
            .collect()
    }

    fn running_in(&self, tps: &[Tp]) -> usize {
        let m = self.inner.lock();
        tps.iter()
            .filter_map(|tp| m.get(tp))
            .map(Partition::running)
            .sum()
    }

    /// Fires every partition's token (shutdown: unstarted work is dropped).
    pub fn revoke_all_tokens(&self) {
        for p in self.inner.lock().values() {
            p.revoked.cancel();
        }
    }

    /// Records consumed and not finished (including abandoned ones), over all partitions.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().values().map(|p| p.slots.len()).sum()
    }

    /// Records and bytes consumed and not yet persisted, in one pass, parked ones left out: what
    /// the in-flight window bounds.
    pub fn in_flight_with_bytes(&self) -> (usize, usize) {
        self.inner.lock().values().fold((0, 0), |(n, b), p| {
            (n + p.slots.len() - p.parked, b + p.bytes - p.parked_bytes)
        })
    }

    /// The in-flight window in one pass: records and bytes consumed and not yet persisted
    /// (parked ones left out), what is parked, and the records of each priority's first-attempt
    /// topics, by `priority_of(topic)` (`None`: a retry topic).
    pub fn window(&self, priority_of: impl Fn(&str) -> Option<usize>) -> Window {
        let mut w = Window::default();
        for (tp, p) in self.inner.lock().iter() {
            let n = p.slots.len() - p.parked;
            w.records += n;
            w.bytes += p.bytes - p.parked_bytes;
            w.parked += p.parked;
            w.parked_bytes += p.parked_bytes;
            if let Some(i) = priority_of(&tp.topic).filter(|i| *i < 3) {
                w.by_priority[i] += n;
            }
        }
        w
    }

    /// Records running right now.
    pub fn running(&self) -> usize {
        self.inner.lock().values().map(Partition::running).sum()
    }

    /// Age of the oldest unfinished record.
    pub fn oldest_pending_age(&self) -> Duration {
        let now = Instant::now();
        self.inner
            .lock()
            .values()
            .flat_map(|p| p.slots.values().map(|s| s.polled_at))
            .min()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// The assigned partitions.
    pub fn assigned(&self) -> Vec<Tp> {
        let mut v: Vec<Tp> = self.inner.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// The current watermark of every partition that has one.
    pub fn watermarks(&self) -> Vec<(Tp, i64)> {
        self.inner
            .lock()
            .iter()
            .filter_map(|(tp, p)| p.watermark().map(|w| (tp.clone(), w)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        Tp::new("t", 0)
    }

    #[test]
    fn watermark_is_the_lowest_unfinished_offset() {
        let p = Partitions::default();
        p.assign([tp()]);
        let l: Vec<Lease> = (10..14)
            .map(|o| p.begin(&tp(), o, 100).expect("assigned"))
            .collect();
        let mut stored = Vec::new();
        assert!(p.finish(&l[1], |_, w| stored.push(w)));
        assert_eq!(stored, vec![10], "10 is still unfinished");
        p.finish(&l[0], |_, w| stored.push(w));
        assert_eq!(stored, vec![10, 12]);
        p.finish(&l[3], |_, w| stored.push(w));
        assert_eq!(stored, vec![10, 12], "12 is still unfinished");
        assert_eq!(p.in_flight_with_bytes(), (1, 100));
        p.finish(&l[2], |_, w| stored.push(w));
        assert_eq!(stored, vec![10, 12, 14]);
        assert_eq!(p.in_flight_with_bytes(), (0, 0));
    }

    #[test]
    fn abandoned_records_block_the_watermark_and_stale_leases_are_ignored() {
        let p = Partitions::default();
        p.assign([tp()]);
        let a = p.begin(&tp(), 5, 300).expect("assigned");
        let b = p.begin(&tp(), 6, 400).expect("assigned");
        assert!(p.start(&b));
        p.abandon(&a);
        assert_eq!(
            p.in_flight_with_bytes(),
            (2, 400),
            "an abandoned record still counts, its bytes do not"
        );
        let mut stored = Vec::new();
        p.finish(&b, |_, w| stored.push(w));
        assert_eq!(stored, vec![5], "the abandoned record blocks");
        assert!(!b.stop.is_cancelled());
        let out = p.revoke(&[tp()], Duration::from_millis(10));
        assert_eq!(out, vec![(tp(), 5)]);
        assert!(a.revoked.is_cancelled());
        assert!(
            b.stop.is_cancelled(),
            "the drain bound is over: running work is stopped"
        );
        // Re-assigned: an old lease no longer counts.
        p.assign([tp()]);
        let c = p.begin(&tp(), 5, 1).expect("assigned");
        assert!(!p.finish(&a, |_, _| panic!("stale")));
        assert!(!p.start(&a));
        assert!(p.start(&c));
        assert_eq!(p.running(), 1);
    }

    #[test]
    fn parked_records_leave_the_window_within_their_budget_and_still_block_the_watermark() {
        let p = Partitions::default();
        p.assign([tp()]);
        let l: Vec<Lease> = (0..4)
            .map(|o| p.begin(&tp(), o, 100).expect("assigned"))
            .collect();
        assert!(!p.park(&l[0]), "no budget: parking is off");
        p.set_parking_budget(2, 1_000);
        assert!(p.park(&l[0]) && p.park(&l[1]));
        assert!(p.park(&l[1]), "parking twice is parking once");
        assert!(!p.park(&l[2]), "the budget is two records");
        assert_eq!(
            p.in_flight_with_bytes(),
            (2, 200),
            "parked records leave the window"
        );
        assert_eq!(p.parked(), (2, 200));
        let mut stored = Vec::new();
        p.finish(&l[2], |_, w| stored.push(w));
        assert_eq!(
            stored,
            vec![0],
            "a parked record still blocks the watermark"
        );
        p.unpark(&l[1]);
        assert_eq!(p.in_flight_with_bytes(), (2, 200));
        p.abandon(&l[0]);
        p.finish(&l[1], |_, w| stored.push(w));
        assert_eq!(p.parked(), (0, 0), "abandoning or finishing unparks");
        assert_eq!(p.in_flight_with_bytes(), (2, 100));
        p.set_parking_budget(10, 150);
        assert!(p.park(&l[3]));
        let l4 = p.begin(&tp(), 4, 100).expect("assigned");
        assert!(!p.park(&l4), "the budget is 150 bytes");
    }

    #[test]
    fn revoke_waits_for_running_records_up_to_the_bound() {
        let p = Arc::new(Partitions::default());
        p.assign([tp()]);
        let l = p.begin(&tp(), 1, 1).expect("assigned");
        assert!(p.start(&l));
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            p2.finish(&l, |_, _| {});
        });
        let out = p.revoke(&[tp()], Duration::from_secs(5));
        assert_eq!(out, vec![(tp(), 2)]);
        t.join().expect("thread");
    }
}
