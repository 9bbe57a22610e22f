//! What a writer owes in order: the rows a later batch of the same writer will publish, so that
//! an earlier batch's [`super::events::settle`] need not repair them.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use dispatch_core::TaskId;
use dispatch_core::version::Stamp;
use parking_lot::Mutex;

/// Most tasks [`Owed`] remembers. Forgetting only costs repairs, so past this (a batch whose
/// events never settle pins everything after it) it starts over.
const MAX_REMEMBERED: usize = 200_000;

/// What this writer committed, kept while an earlier batch may still settle: per task, the
/// stamp of its latest landed write and the batch (by sequence number) that carries its event.
///
/// A batch's [`settle`] that finds a task's row at a stamp of a *later* batch of this writer
/// leaves the row alone: that batch's event carries the row and is handed to the client after
/// this batch's (batches enqueue in order), so it lands after it, whether it is acknowledged yet
/// or not. That holds only for an event this batch handed over at once (not the full-queue
/// fallback, not a re-send of the current row) and acknowledged without a client rebuild in
/// between (a rebuilt client is a new idempotence session); anything else is repaired as before. Without this, a task whose RUNNING and outcome commit in consecutive batches
/// (every task of a drain whose handler outlasts one batch window) was published three times:
/// RUNNING, a repair of the outcome read back row by row, and the outcome.
#[derive(Default)]
pub(crate) struct Owed(Mutex<OwedInner>);

#[derive(Default)]
struct OwedInner {
    /// Per task: the stamp of this writer's latest landed write and its batch.
    rows: HashMap<TaskId, (Stamp, u64)>,
    /// Per batch still remembered: its tasks.
    batches: BTreeMap<u64, Vec<TaskId>>,
    /// Batches committed and not yet settled.
    unsettled: BTreeSet<u64>,
}

impl Owed {
    /// Batch `seq` committed these writes (their stamps as stored).
    pub(super) fn committed(&self, seq: u64, stamps: impl IntoIterator<Item = (TaskId, Stamp)>) {
        let mut m = self.0.lock();
        if m.rows.len() >= MAX_REMEMBERED {
            m.rows.clear();
            m.batches.clear();
        }
        let mut ids = Vec::new();
        for (id, stamp) in stamps {
            m.rows.insert(id, (stamp, seq));
            ids.push(id);
        }
        m.batches.insert(seq, ids);
        m.unsettled.insert(seq);
    }

    /// Batch `seq` settled. A batch's entries serve only the settles of earlier batches: once
    /// every batch before it has settled, they are forgotten (an entry a later batch of the same
    /// task replaced stays with that batch).
    pub(super) fn settled(&self, seq: u64) {
        let mut m = self.0.lock();
        m.unsettled.remove(&seq);
        let low = m.unsettled.first().copied().unwrap_or(u64::MAX);
        while m.batches.first_key_value().is_some_and(|(k, _)| *k <= low) {
            let Some((k, ids)) = m.batches.pop_first() else {
                break;
            };
            for id in ids {
                if m.rows.get(&id).is_some_and(|(_, by)| *by == k) {
                    m.rows.remove(&id);
                }
            }
        }
    }

    /// Whether a batch after `seq` carries the event of `id`'s row at `stamp`.
    fn covers(&self, id: TaskId, stamp: Stamp, seq: u64) -> bool {
        self.0
            .lock()
            .rows
            .get(&id)
            .is_some_and(|(s, by)| *s == stamp && *by > seq)
    }

    /// Tasks remembered right now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().rows.len()
    }
}

/// Which publisher is settling: a batch of this writer (its [`Owed`] and sequence number), or
/// another publisher (the scheduler, a replay), which owes nothing in order with anyone.
#[derive(Clone, Copy)]
pub(crate) enum Publisher<'a> {
    /// Batch `seq` of the writer whose commitments `owed` holds, its events handed over while
    /// the producer had been rebuilt `rebuilds` times.
    Batch {
        owed: &'a Owed,
        seq: u64,
        rebuilds: u64,
    },
    /// Anything else.
    Other,
}

/// Whether [`super::events::settle`] leaves the row of `id`, found at `stamp`, to a later batch of the same
/// writer: only for a batch's event handed over in order (`direct`), with no client rebuild
/// since, and a row that a later batch committed (see [`Owed`]).
pub(super) fn left_to_later(
    by: Publisher<'_>,
    rebuilds_now: u64,
    direct: bool,
    id: TaskId,
    stamp: Stamp,
) -> bool {
    match by {
        Publisher::Batch {
            owed,
            seq,
            rebuilds,
        } => direct && rebuilds == rebuilds_now && owed.covers(id, stamp, seq),
        Publisher::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(version: u64, epoch: u64) -> Stamp {
        Stamp { version, epoch }
    }

    #[test]
    fn a_later_batch_of_the_writer_covers_its_own_stamp_only() {
        let owed = Owed::default();
        let (a, b) = (TaskId::new(), TaskId::new());
        owed.committed(1, [(a, stamp(10, 1)), (b, stamp(10, 1))]);
        owed.committed(2, [(a, stamp(20, 1))]);
        assert!(
            owed.covers(a, stamp(20, 1), 1),
            "batch 2 publishes a's row after batch 1"
        );
        assert!(!owed.covers(a, stamp(20, 1), 2), "not after itself");
        assert!(
            !owed.covers(a, stamp(20, 2), 1),
            "another owner's write at the same version"
        );
        assert!(!owed.covers(b, stamp(10, 1), 1), "batch 1's own write");
        assert!(
            !owed.covers(b, stamp(30, 1), 1),
            "a write this writer never made"
        );
    }

    #[test]
    fn only_an_in_order_hand_over_leaves_a_row_to_a_later_batch() {
        let owed = Owed::default();
        let a = TaskId::new();
        owed.committed(2, [(a, stamp(20, 1))]);
        let batch1 = Publisher::Batch {
            owed: &owed,
            seq: 1,
            rebuilds: 0,
        };
        assert!(left_to_later(batch1, 0, true, a, stamp(20, 1)));
        assert!(
            !left_to_later(batch1, 0, false, a, stamp(20, 1)),
            "batch 1's event went through the full-queue fallback or was sent again"
        );
        assert!(
            !left_to_later(batch1, 1, true, a, stamp(20, 1)),
            "the client was rebuilt since batch 1 handed its events over"
        );
        assert!(!left_to_later(Publisher::Other, 0, true, a, stamp(20, 1)));
    }

    #[test]
    fn a_batch_is_remembered_until_every_earlier_one_settled() {
        let owed = Owed::default();
        let (a, b) = (TaskId::new(), TaskId::new());
        owed.committed(1, [(a, stamp(10, 1)), (b, stamp(10, 1))]);
        owed.committed(2, [(a, stamp(20, 1))]);
        owed.committed(3, [(b, stamp(20, 1))]);
        // Batch 2 settles first: batch 1 may still find a's row at batch 2's stamp.
        owed.settled(2);
        assert!(
            owed.covers(a, stamp(20, 1), 1),
            "batch 2 settled, its event is before"
        );
        assert!(owed.covers(b, stamp(20, 1), 1), "batch 3 is unsettled");
        // Batch 1 settles: every batch left (3) is the lowest unsettled, and no batch before it
        // can ask any more: everything is forgotten.
        owed.settled(1);
        assert_eq!(owed.len(), 0);
        owed.settled(3);
        assert_eq!(owed.len(), 0);
    }
}
