//! L1: the in-process moka cache, and the "last known" copies kept for stale answers.
//!
//! - Size-bounded by weight (the memory an entry holds, see [`ENTRY_OVERHEAD`]), per-entry
//!   expiry with jitter: terminal states live long (they never change), live states briefly
//!   (events refresh them in between), negative entries (unknown ids) very briefly.
//! - Concurrent misses for one key coalesce into one load (`or_try_insert_with`, moka's
//!   singleflight).
//! - Every write is version-checked ([`L1::offer`]), so an older snapshot never replaces a newer
//!   one, whatever order loads and events finish in.
//! - `last_known` holds the newest snapshot of each recently seen task for longer than the L1 TTL,
//!   so the reader can still answer (flagged stale) when MySQL fails after an entry expired.
//!
//! Over 400 lines because of its tests, which start near line 351: the sized cache, its expiry
//! policy, the version-checked writes and the last-known copies answer the same lookups; the
//! last-known copies and the refresh claims would move out first.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::{TaskId, TaskState, Version};
use dispatch_proto::v1 as pb;
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use parking_lot::Mutex;

use crate::settings::CacheSettings;
use crate::xfetch::jittered;

/// What a tier knows about an id.
#[derive(Debug, Clone)]
pub enum Cached {
    /// The task (any tenant; callers check ownership).
    Found(Arc<pb::Task>),
    /// The id is unknown (a negative entry).
    Missing,
}

impl Cached {
    /// The version of a found task.
    pub fn version(&self) -> Option<Version> {
        match self {
            Self::Found(t) => Some(t.version),
            Self::Missing => None,
        }
    }
}

/// One L1 entry.
#[derive(Debug)]
pub struct Entry {
    /// The cached knowledge.
    pub value: Cached,
    /// Lifetime drawn for this entry (jittered).
    pub ttl: Duration,
    /// When moka drops it (XFetch's `expiry`).
    pub expires_at: Instant,
    /// How long producing it took (XFetch's `delta`).
    pub delta: Duration,
    /// The tier it was loaded from.
    pub source: pb::ServedFrom,
}

/// What moka and the allocator spend per entry beyond the entry itself: moka's node, its access
/// and write deques, the expiry timer wheel, allocation headers and slack. Calibrated against a
/// full L1: with 116,715 entries (64 MiB by the earlier weight, the encoded size + 160 B) the
/// reader's RSS was 235 MiB, 1.9 KiB per entry, more than three times the weight. The bound
/// must hold for RSS, not for the encoded bytes.
const ENTRY_OVERHEAD: usize = 1024;

/// Memory one task holds in the cache, roughly: the struct plus each non-empty string and buffer
/// as its own heap allocation (16 B of allocator header each).
pub(crate) fn task_bytes(t: &pb::Task) -> usize {
    const ALLOC: usize = 16;
    let heap: usize = [
        t.task_id.len(),
        t.tenant.len(),
        t.business_key.len(),
        t.task_type.len(),
        t.payload.len(),
        t.last_error.len(),
        t.result.len(),
        t.idempotency_key.len(),
    ]
    .into_iter()
    .filter(|n| *n > 0)
    .map(|n| n + ALLOC)
    .sum();
    std::mem::size_of::<pb::Task>() + heap
}

impl Entry {
    fn weight(&self) -> u32 {
        let task = match &self.value {
            Cached::Found(t) => task_bytes(t),
            Cached::Missing => 0,
        };
        u32::try_from(std::mem::size_of::<Self>() + task + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}

/// The TTLs of each kind of entry.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    /// Non-terminal tasks.
    pub live: Duration,
    /// Terminal tasks.
    pub terminal: Duration,
    /// Unknown ids.
    pub negative: Duration,
    /// ± ratio of jitter.
    pub jitter: f64,
}

impl TtlPolicy {
    /// A jittered TTL for `value`.
    pub fn ttl(&self, value: &Cached) -> Duration {
        let base = match value {
            Cached::Missing => self.negative,
            Cached::Found(t) if is_terminal(t) => self.terminal,
            Cached::Found(_) => self.live,
        };
        jittered(base, self.jitter)
    }
}

/// Whether a task snapshot is in a terminal state.
pub fn is_terminal(t: &pb::Task) -> bool {
    pb::TaskState::try_from(t.state)
        .ok()
        .and_then(TaskState::from_proto)
        .is_some_and(TaskState::is_terminal)
}

struct EntryExpiry;

impl Expiry<TaskId, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &TaskId, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(
        &self,
        _: &TaskId,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// How [`L1::offer`] compares a snapshot with the held one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Only a strictly newer version replaces (a replay changes nothing).
    IfNewer,
    /// As `IfNewer`, and only over an entry that is there (events refresh what was read; they do
    /// not fill L1 with every task that changes). A negative entry is replaced.
    IfNewerAndCached,
    /// The same version replaces too (a reload extends the entry's life).
    IfNotOlder,
}

/// The L1 tier.
pub struct L1 {
    cache: Option<Cache<TaskId, Arc<Entry>>>,
    last_known: Cache<TaskId, Arc<pb::Task>>,
    ttl: TtlPolicy,
    refreshing: Mutex<HashSet<TaskId>>,
}

impl L1 {
    /// Builds both caches from settings.
    pub fn new(s: &CacheSettings) -> Self {
        let ms = Duration::from_millis;
        let cache = s.l1_enabled.then(|| {
            Cache::builder()
                .name("reader-l1")
                .max_capacity(s.l1_max_bytes)
                .weigher(|_: &TaskId, e: &Arc<Entry>| e.weight())
                .expire_after(EntryExpiry)
                .build()
        });
        let last_known = Cache::builder()
            .name("reader-last-known")
            .max_capacity(s.stale_max_bytes)
            .weigher(|_: &TaskId, t: &Arc<pb::Task>| {
                u32::try_from(task_bytes(t) + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_live(ms(s.stale_max_age_ms))
            .build();
        Self {
            cache,
            last_known,
            ttl: TtlPolicy {
                live: ms(s.l1_live_ttl_ms),
                terminal: ms(s.l1_terminal_ttl_ms),
                negative: ms(s.l1_negative_ttl_ms),
                jitter: s.ttl_jitter_ratio,
            },
            refreshing: Mutex::new(HashSet::new()),
        }
    }

    /// Whether the moka tier is on.
    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// A new entry for `value` produced in `delta` from `source`, with a fresh jittered TTL.
    pub fn entry(&self, value: Cached, delta: Duration, source: pb::ServedFrom) -> Entry {
        let ttl = self.ttl.ttl(&value);
        Entry {
            value,
            ttl,
            expires_at: Instant::now() + ttl,
            delta,
            source,
        }
    }

    /// The live entry of `id`, if any.
    pub async fn get(&self, id: &TaskId) -> Option<Arc<Entry>> {
        self.cache.as_ref()?.get(id).await
    }

    /// The entry of `id`, loading it with `load` on a miss. Concurrent callers for one id share
    /// one load; the bool is true for the caller whose load produced the entry.
    ///
    /// # Errors
    /// The load's error (shared by every waiting caller).
    pub async fn get_or_load<E, F>(&self, id: TaskId, load: F) -> Result<(Arc<Entry>, bool), Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Entry, E>>,
    {
        let Some(cache) = &self.cache else {
            return load.await.map(|e| (Arc::new(e), true)).map_err(Arc::new);
        };
        let got = cache
            .entry(id)
            .or_try_insert_with(async { load.await.map(Arc::new) })
            .await?;
        let fresh = got.is_fresh();
        let entry = got.into_value();
        if fresh {
            // An event may have applied a newer snapshot while the load was in flight, and the
            // load's insert does not compare versions: put the newest known state back.
            if let Some(held) = self.last_known.get(&id).await
                && held.version > entry.value.version().unwrap_or(0)
            {
                let newer = self.entry(Cached::Found(held), entry.delta, entry.source);
                self.offer(id, newer, Replace::IfNewer).await;
                if let Some(e) = cache.get(&id).await {
                    return Ok((e, fresh));
                }
            }
        }
        Ok((entry, fresh))
    }

    /// Stores `entry` unless the held entry is newer (see [`Replace`]); a negative entry never
    /// replaces a found task. Returns whether it was stored.
    pub async fn offer(&self, id: TaskId, entry: Entry, mode: Replace) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        let new_version = entry.value.version();
        let result = cache
            .entry(id)
            .and_compute_with(|held| {
                let held_version = held.as_ref().map(|h| h.value().value.version());
                let put = match (held_version, new_version) {
                    (None, _) => mode != Replace::IfNewerAndCached,
                    (Some(None), _) => true,
                    (Some(Some(_)), None) => false,
                    (Some(Some(h)), Some(n)) => match mode {
                        Replace::IfNewer | Replace::IfNewerAndCached => n > h,
                        Replace::IfNotOlder => n >= h,
                    },
                };
                std::future::ready(if put {
                    Op::Put(Arc::new(entry))
                } else {
                    Op::Nop
                })
            })
            .await;
        matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    /// Records `task` as the newest known snapshot of its id unless a newer one is held.
    /// Returns whether it was newer than what was held.
    pub async fn remember(&self, id: TaskId, task: &Arc<pb::Task>) -> bool {
        let version = task.version;
        let result = self
            .last_known
            .entry(id)
            .and_compute_with(|held| {
                let put = held.is_none_or(|h| h.value().version < version);
                std::future::ready(if put {
                    Op::Put(Arc::clone(task))
                } else {
                    Op::Nop
                })
            })
            .await;
        !matches!(result, moka::ops::compute::CompResult::Unchanged(_))
    }

    /// The newest known snapshot of `id` (possibly older than MySQL: for stale answers only).
    pub async fn last_known(&self, id: &TaskId) -> Option<Arc<pb::Task>> {
        self.last_known.get(id).await
    }

    /// Claims the single background refresh of `id`; `None` when one is already running.
    pub fn begin_refresh(self: &Arc<Self>, id: TaskId) -> Option<RefreshClaim> {
        self.refreshing.lock().insert(id).then(|| RefreshClaim {
            l1: Arc::clone(self),
            id,
        })
    }

    /// (entries, weighted bytes) of the moka tier, after running its pending maintenance.
    pub async fn size(&self) -> (u64, u64) {
        match &self.cache {
            Some(c) => {
                c.run_pending_tasks().await;
                (c.entry_count(), c.weighted_size())
            }
            None => (0, 0),
        }
    }
}

/// Held while a background refresh of one id runs; releases the claim on drop.
pub struct RefreshClaim {
    l1: Arc<L1>,
    id: TaskId,
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        self.l1.refreshing.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: TaskId, version: Version, state: pb::TaskState) -> Arc<pb::Task> {
        Arc::new(pb::Task {
            task_id: id.to_string(),
            tenant: "acme".into(),
            version,
            state: state as i32,
            ..Default::default()
        })
    }

    fn l1() -> Arc<L1> {
        Arc::new(L1::new(&CacheSettings::default()))
    }

    #[test]
    fn an_entry_weighs_what_it_holds_not_its_encoding() {
        let l1 = l1();
        let small = task(TaskId::new(), 1, pb::TaskState::Succeeded);
        let mut big = (*small).clone();
        big.payload = vec![b'x'; 10_000];
        let weigh = |t: Arc<pb::Task>| {
            l1.entry(Cached::Found(t), Duration::ZERO, pb::ServedFrom::Store)
                .weight() as usize
        };
        let (w_small, w_big) = (weigh(small.clone()), weigh(Arc::new(big)));
        assert!(w_small >= ENTRY_OVERHEAD + std::mem::size_of::<pb::Task>());
        let encoded = prost::Message::encoded_len(small.as_ref());
        assert!(w_small > 3 * encoded, "{w_small} vs {encoded}");
        assert_eq!(
            w_big - w_small,
            10_000 + 16,
            "the payload and its allocation"
        );
        let missing = l1
            .entry(Cached::Missing, Duration::ZERO, pb::ServedFrom::Store)
            .weight() as usize;
        assert!(missing >= ENTRY_OVERHEAD && missing < w_small);
    }

    /// A RUNNING entry of `id` at `version`, as an event would offer it.
    fn found(l1: &L1, id: TaskId, version: u64) -> Entry {
        l1.entry(
            Cached::Found(task(id, version, pb::TaskState::Running)),
            Duration::ZERO,
            pb::ServedFrom::L1,
        )
    }

    #[tokio::test]
    async fn offers_only_move_forward() {
        let l1 = l1();
        let id = TaskId::new();
        let e = |v| found(&l1, id, v);
        assert!(l1.offer(id, e(5), Replace::IfNewer).await);
        assert!(!l1.offer(id, e(3), Replace::IfNewer).await, "older");
        assert!(!l1.offer(id, e(5), Replace::IfNewer).await, "replay");
        assert!(l1.offer(id, e(5), Replace::IfNotOlder).await, "reload");
        let neg = l1.entry(Cached::Missing, Duration::ZERO, pb::ServedFrom::Store);
        assert!(
            !l1.offer(id, neg, Replace::IfNotOlder).await,
            "negative never hides a task"
        );
        let held = l1.get(&id).await.expect("held");
        assert_eq!(held.value.version(), Some(5));
    }

    #[tokio::test]
    async fn events_refresh_cached_entries_and_never_fill() {
        let l1 = l1();
        let id = TaskId::new();
        let e = |v| found(&l1, id, v);
        assert!(
            !l1.offer(id, e(5), Replace::IfNewerAndCached).await,
            "absent: not filled"
        );
        assert!(l1.get(&id).await.is_none());
        let neg = l1.entry(Cached::Missing, Duration::ZERO, pb::ServedFrom::Store);
        assert!(l1.offer(id, neg, Replace::IfNotOlder).await);
        assert!(
            l1.offer(id, e(5), Replace::IfNewerAndCached).await,
            "negative replaced"
        );
        assert!(
            !l1.offer(id, e(5), Replace::IfNewerAndCached).await,
            "replay"
        );
        assert!(l1.offer(id, e(6), Replace::IfNewerAndCached).await, "newer");
        assert_eq!(l1.get(&id).await.expect("held").value.version(), Some(6));
    }

    #[tokio::test]
    async fn a_load_never_undoes_a_newer_event() {
        let l1 = l1();
        let id = TaskId::new();
        // An event (version 9) lands while a load of version 4 is in flight.
        l1.remember(id, &task(id, 9, pb::TaskState::Running)).await;
        let loaded = l1.entry(
            Cached::Found(task(id, 4, pb::TaskState::Running)),
            Duration::ZERO,
            pb::ServedFrom::Store,
        );
        let (e, fresh) = l1
            .get_or_load::<(), _>(id, async { Ok(loaded) })
            .await
            .expect("load");
        assert!(fresh);
        assert_eq!(e.value.version(), Some(9));
    }

    #[test]
    fn ttls_depend_on_state() {
        let p = TtlPolicy {
            live: Duration::from_secs(2),
            terminal: Duration::from_secs(600),
            negative: Duration::from_secs(1),
            jitter: 0.2,
        };
        let id = TaskId::new();
        let live = p.ttl(&Cached::Found(task(id, 1, pb::TaskState::Running)));
        // A workflow node waiting for its dependencies will change: live too.
        let waiting = p.ttl(&Cached::Found(task(id, 0, pb::TaskState::Waiting)));
        let done = p.ttl(&Cached::Found(task(id, 1, pb::TaskState::Succeeded)));
        let neg = p.ttl(&Cached::Missing);
        assert!(live <= Duration::from_millis(2400) && live >= Duration::from_millis(1600));
        assert!(waiting <= Duration::from_millis(2400));
        assert!(!is_terminal(&task(id, 0, pb::TaskState::Waiting)));
        assert!(done >= Duration::from_secs(480));
        assert!(neg <= Duration::from_millis(1200));
    }

    #[test]
    fn one_refresh_per_key() {
        let l1 = l1();
        let id = TaskId::new();
        let claim = l1.begin_refresh(id).expect("first");
        assert!(l1.begin_refresh(id).is_none());
        drop(claim);
        assert!(l1.begin_refresh(id).is_some());
    }
}
