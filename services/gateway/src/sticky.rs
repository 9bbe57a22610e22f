//! Sticky routing state (see [`crate::durable`]): which `(topic, key)`s must go to the outbox
//! because the outbox may still hold a row of theirs.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

/// Dead-blocked keys routed one by one; beyond that many, everything goes to the outbox.
pub(crate) const BLOCKED_KEYS_MAX: u32 = 10_000;

/// Sticky routing, per key: a record goes to the outbox while the outbox may hold a row of its
/// `(topic, key)` (pending, or dead and waiting for an operator), so it never overtakes one; every
/// other key goes to Kafka as soon as Kafka takes records. `keys` is what the outbox held at the
/// last check (`refresh_sticky`, every `outbox.relay_interval_ms`: also rows of other
/// instances); `recent`, the keys this instance wrote since, with the write's `epoch`, so a check
/// that raced with a write cannot forget it. `all` routes everything to the outbox (more keys than
/// are tracked). A global flag (every record to the outbox while any row was pending) kept a
/// loaded gateway on the outbox path long after Kafka's return: its own writes kept the outbox
/// from ever looking empty (`kafka-restart-x5`: 56 s).
#[derive(Debug, Default)]
pub(crate) struct Sticky {
    state: Mutex<StickyState>,
    /// `state.active()`, written under the lock: lets the common case (nothing routed to the
    /// outbox) skip the lock every record of every call would take.
    engaged: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct StickyState {
    all: bool,
    epoch: u64,
    keys: HashSet<(String, Vec<u8>)>,
    recent: HashMap<(String, Vec<u8>), u64>,
}

impl StickyState {
    fn active(&self) -> bool {
        self.all || !self.keys.is_empty() || !self.recent.is_empty()
    }
}

impl Sticky {
    /// Whether the outbox may hold rows that route some records.
    pub(crate) fn active(&self) -> bool {
        self.state.lock().active()
    }

    /// Whether a record for `(topic, key)` must go to the outbox.
    pub(crate) fn routes_to_outbox(&self, topic: &str, key: &[u8]) -> bool {
        // A `mark` that returned before this call stored `true` first (under the lock).
        if !self.engaged.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let s = self.state.lock();
        if s.all {
            return true;
        }
        if s.keys.is_empty() && s.recent.is_empty() {
            return false;
        }
        let k = (topic.to_owned(), key.to_vec());
        s.keys.contains(&k) || s.recent.contains_key(&k)
    }

    /// This instance committed an outbox row of `(topic, key)`.
    pub(crate) fn mark(&self, topic: &str, key: &[u8]) {
        let mut s = self.state.lock();
        s.epoch += 1;
        let epoch = s.epoch;
        s.recent.insert((topic.to_owned(), key.to_vec()), epoch);
        if s.recent.len() > BLOCKED_KEYS_MAX as usize {
            s.all = true;
        }
        self.engaged
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// Applies what the outbox holds (read after `epoch` was taken: writes up to it are in
    /// `keys` if still pending); true when this switched every key back to Kafka.
    pub(crate) fn update(&self, epoch: u64, all: bool, keys: HashSet<(String, Vec<u8>)>) -> bool {
        let mut s = self.state.lock();
        let was = s.active();
        s.all = all;
        s.keys = keys;
        s.recent.retain(|_, written| *written > epoch);
        self.engaged
            .store(s.active(), std::sync::atomic::Ordering::Release);
        was && !s.active()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_racing_with_a_drain_check_keeps_the_flag() {
        let s = Sticky::default();
        s.mark("t", b"k");
        let e = s.epoch();
        s.mark("t", b"k"); // a write lands while the check runs
        assert!(!s.update(e, false, HashSet::new()));
        assert!(s.active());
        assert!(s.routes_to_outbox("t", b"k"));
        assert!(s.update(s.epoch(), false, HashSet::new()));
        assert!(!s.active());
    }

    #[test]
    fn a_key_blocked_behind_a_dead_row_keeps_going_to_the_outbox() {
        let s = Sticky::default();
        let dead: HashSet<_> = [("t".to_owned(), b"k".to_vec())].into();
        s.update(s.epoch(), false, dead);
        assert!(s.routes_to_outbox("t", b"k"));
        assert!(!s.routes_to_outbox("t", b"j"));
        assert!(!s.routes_to_outbox("u", b"k"));
        s.update(s.epoch(), false, HashSet::new()); // requeued and published
        assert!(!s.routes_to_outbox("t", b"k"));
        assert!(!s.active());
    }

    /// Only keys the outbox holds stay on the outbox path: under load the others go to Kafka
    /// at once, although this instance keeps writing rows of the pending keys.
    #[test]
    fn keys_without_outbox_rows_go_to_kafka_while_others_drain() {
        let s = Sticky::default();
        s.mark("t", b"a");
        s.mark("t", b"b");
        assert!(s.routes_to_outbox("t", b"a") && s.routes_to_outbox("t", b"b"));
        assert!(
            !s.routes_to_outbox("t", b"c"),
            "a key never written goes to kafka"
        );
        // The relay published b's rows; a's are pending, and a new one of a lands meanwhile.
        let e = s.epoch();
        s.mark("t", b"a");
        let pending: HashSet<_> = [("t".to_owned(), b"a".to_vec())].into();
        assert!(!s.update(e, false, pending));
        assert!(s.routes_to_outbox("t", b"a"));
        assert!(!s.routes_to_outbox("t", b"b"), "b drained: back to kafka");
        assert!(s.update(s.epoch(), false, HashSet::new()));
        assert!(!s.routes_to_outbox("t", b"a"));
    }

    #[test]
    fn too_many_keys_route_everything_to_the_outbox() {
        let s = Sticky::default();
        s.update(s.epoch(), true, HashSet::new());
        assert!(s.routes_to_outbox("t", b"any"));
        assert!(s.update(s.epoch(), false, HashSet::new()));
        assert!(!s.routes_to_outbox("t", b"any"));
    }
}
