//! A bounded memory of recent submits, so a cancel right after a submit (before the processor
//! stored the task) routes to the submit's partition without the caller's business key.
//!
//! Two generations of a hash map: inserts go to the young one; once it holds half the capacity
//! or is half the TTL old, it becomes the old one and the previous old one is dropped. A lookup
//! reads both and ignores entries older than the TTL. So memory stays under `capacity` entries,
//! and an entry is remembered until half the capacity of newer submits or half the TTL has gone
//! by, at the least, and never past the TTL.
//!
//! Every entry is written once and read rarely (if ever), in insertion order of importance: the
//! newest submits are the ones a cancel may race with. An admission-policy cache (moka's
//! TinyLFU) fits that badly, and cost the SubmitTasks path about a tenth of the gateway's CPU in
//! hashing and bookkeeping; this costs one uncontended lock and one insert per submit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dispatch_core::{BusinessKey, Priority, TaskId, Tenant};
use parking_lot::Mutex;

/// What a cancel needs to route to a task's partition before the task is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentSubmit {
    /// The submitting tenant (a cancel of another tenant's task is NOT_FOUND).
    pub tenant: Tenant,
    /// The record key.
    pub business_key: BusinessKey,
    /// Picks the topic.
    pub priority: Priority,
}

struct Generation {
    started: Instant,
    entries: HashMap<TaskId, (Instant, RecentSubmit)>,
}

impl Generation {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            entries: HashMap::new(),
        }
    }
}

/// Recent submits, bounded by count and age.
pub struct RecentSubmits {
    half_capacity: usize,
    half_ttl: Duration,
    ttl: Duration,
    generations: Mutex<(Generation, Generation)>,
}

impl RecentSubmits {
    /// Remembers up to `capacity` submits (at least 2) for up to `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let now = Instant::now();
        Self {
            half_capacity: usize::try_from(capacity / 2).unwrap_or(usize::MAX).max(1),
            half_ttl: ttl / 2,
            ttl,
            generations: Mutex::new((Generation::new(now), Generation::new(now))),
        }
    }

    /// Remembers a submit.
    pub fn insert(&self, task_id: TaskId, submit: RecentSubmit) {
        self.extend([(task_id, submit)]);
    }

    /// Remembers submits (a batch's, under one lock).
    pub fn extend(&self, submits: impl IntoIterator<Item = (TaskId, RecentSubmit)>) {
        let now = Instant::now();
        let mut g = self.generations.lock();
        let (young, old) = &mut *g;
        for (task_id, submit) in submits {
            if young.entries.len() >= self.half_capacity
                || now.saturating_duration_since(young.started) >= self.half_ttl
            {
                *old = std::mem::replace(young, Generation::new(now));
            }
            young.entries.insert(task_id, (now, submit));
        }
    }

    /// The submit of `task_id`, if it is remembered.
    pub fn get(&self, task_id: &TaskId) -> Option<RecentSubmit> {
        let g = self.generations.lock();
        let (young, old) = &*g;
        young
            .entries
            .get(task_id)
            .or_else(|| old.entries.get(task_id))
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, s)| s.clone())
    }

    /// Submits remembered (some may be past their TTL until the next rotation).
    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.generations.lock();
        g.0.entries.len() + g.1.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(key: &str) -> RecentSubmit {
        RecentSubmit {
            tenant: Tenant::parse("acme").expect("valid tenant"),
            business_key: BusinessKey::parse(key).expect("valid key"),
            priority: Priority::Default,
        }
    }

    #[test]
    fn remembers_what_was_inserted() {
        let r = RecentSubmits::new(100, Duration::from_secs(60));
        let id = TaskId::new();
        assert_eq!(r.get(&id), None);
        r.insert(id, submit("k1"));
        assert_eq!(r.get(&id), Some(submit("k1")));
    }

    #[test]
    fn memory_is_bounded_by_capacity_and_keeps_the_newest() {
        let r = RecentSubmits::new(10, Duration::from_secs(60));
        let ids: Vec<TaskId> = (0..100).map(|_| TaskId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            r.insert(*id, submit(&format!("k{i}")));
            assert!(r.len() <= 10, "{} entries after {} inserts", r.len(), i + 1);
        }
        // The last half capacity of inserts is always remembered.
        for (i, id) in ids.iter().enumerate().skip(95) {
            assert_eq!(r.get(id), Some(submit(&format!("k{i}"))));
        }
        assert_eq!(r.get(&ids[0]), None);
    }

    #[test]
    fn entries_older_than_the_ttl_are_forgotten() {
        let r = RecentSubmits::new(100, Duration::from_millis(30));
        let id = TaskId::new();
        r.insert(id, submit("k"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.get(&id).is_some() {
            assert!(Instant::now() < deadline, "entry outlived its ttl");
            std::thread::yield_now();
        }
        // A rotation triggered by a later insert drops it for good.
        r.insert(TaskId::new(), submit("k2"));
        r.insert(TaskId::new(), submit("k3"));
        assert_eq!(r.get(&id), None);
    }

    #[test]
    fn a_zero_capacity_still_remembers_the_last_submit() {
        let r = RecentSubmits::new(0, Duration::from_secs(60));
        let id = TaskId::new();
        r.insert(id, submit("k"));
        assert_eq!(r.get(&id), Some(submit("k")));
    }
}
