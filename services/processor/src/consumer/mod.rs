//! The Kafka side of consumption: one `BaseConsumer` polled on a dedicated OS thread.
//!
//! The thread ([`poller`]) turns records into [`Delivery`]s (offset lease + decoded envelope) and
//! hands them to the dispatcher through one channel per priority. It also owns every
//! `pause`/`resume`: each turn it computes which partitions *should* be paused (backpressure,
//! operator pauses, retry partitions whose head is not due) and applies the difference, so pauses
//! are naturally re-applied after a rebalance. Rebalance callbacks run on the same thread
//! ([`context`]), where blocking briefly to drain revoked work is harmless to the async runtime.

pub mod context;
pub mod offsets;
pub mod poller;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dispatch_core::{Envelope, EnvelopeError, Headers, Priority, Topics};
use parking_lot::Mutex;

pub use context::Ctx;
pub use offsets::{Lease, Partitions, Tp};

/// Which kind of topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A first-attempt topic.
    Tasks(Priority),
    /// `dispatch.retry.<level>`.
    Retry(u32),
}

/// One consumed record on its way through the processor.
#[derive(Debug)]
pub struct Delivery {
    /// Offset lease: finish it once the record's effects are persisted.
    pub lease: Lease,
    /// Topic kind.
    pub source: Source,
    /// Record key.
    pub key: Vec<u8>,
    /// Record headers.
    pub headers: Headers,
    /// The decoded envelope, or why the record is poison (then `raw` holds the value).
    pub envelope: Result<Envelope, EnvelopeError>,
    /// The raw value of a poison record (empty otherwise).
    pub raw: Vec<u8>,
    /// `dispatch-not-before` (epoch ms) of a retry record.
    pub not_before_ms: Option<i64>,
}

impl Delivery {
    /// The dispatch channel: the topic's priority, or the envelope's for retries.
    pub fn priority(&self) -> Priority {
        match (self.source, &self.envelope) {
            (Source::Tasks(p), _) => p,
            (Source::Retry(_), Ok(e)) => e.priority,
            (Source::Retry(_), Err(_)) => Priority::Default,
        }
    }
}

/// State shared by the poll thread, the rebalance callbacks and the async side.
#[derive(Debug)]
pub struct Shared {
    /// Offset tracking of assigned partitions.
    pub partitions: Partitions,
    /// Retry records held until their `not-before`, per partition, in offset order.
    pub holds: Mutex<HashMap<Tp, VecDeque<Delivery>>>,
    /// Priorities an operator paused.
    pub paused_priorities: Mutex<HashSet<Priority>>,
    /// Partitions currently paused in the client.
    pub paused: Mutex<HashSet<Tp>>,
    /// Set when an input of the pause decision changed (assignment, operator pauses, held retry
    /// partitions): the poll loop reconciles pauses only then, not for every record.
    pauses_stale: AtomicBool,
    /// Topic names.
    pub topics: Topics,
    /// How long a revoke waits for running records.
    pub rebalance_drain: Duration,
}

impl Shared {
    /// Fresh state.
    pub fn new(topics: Topics, rebalance_drain: Duration) -> Self {
        Self {
            partitions: Partitions::default(),
            holds: Mutex::default(),
            paused_priorities: Mutex::default(),
            paused: Mutex::default(),
            pauses_stale: AtomicBool::new(true),
            topics,
            rebalance_drain,
        }
    }

    /// Asks the poll loop to reconcile partition pauses on its next turn.
    pub fn pauses_changed(&self) {
        self.pauses_stale.store(true, Ordering::Release);
    }

    /// Whether pauses need reconciling (and clears the mark).
    fn take_pauses_changed(&self) -> bool {
        self.pauses_stale.swap(false, Ordering::AcqRel)
    }

    /// Where a topic's records come from; `None` for a foreign topic.
    pub fn source_of(&self, topic: &str) -> Option<Source> {
        self.topics
            .priority_of(topic)
            .map(Source::Tasks)
            .or_else(|| self.topics.retry_level_of(topic).map(Source::Retry))
    }
}
