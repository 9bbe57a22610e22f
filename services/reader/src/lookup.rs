//! The lookup path: L1 → L2 → MySQL, read-your-writes, stale answers, and event application.
//!
//! Ownership is checked on every answer: a task of another tenant is reported exactly like a
//! missing one, before any version comparison, so nothing reveals that it exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::{TaskId, Tenant, Version};
use dispatch_proto::v1 as pb;

use crate::error::{ReadError, StoreFailure};
use crate::l1::{Cached, Entry, L1, Replace};
use crate::l2::{self, L2, L2Lookup};
use crate::metrics::{self, CacheResult, Stats, Tier};
use crate::notify::Notifier;
use crate::store::Store;
use crate::xfetch;

/// One answer.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The task (owned by the caller's tenant).
    pub task: Arc<pb::Task>,
    /// The tier that answered.
    pub served_from: pb::ServedFrom,
    /// True when MySQL failed and this is a possibly outdated cached copy.
    pub stale: bool,
}

/// Freshness knobs of the lookup path.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// XFetch beta.
    pub beta: f64,
    /// Read-your-writes: total wait.
    pub ryw_wait: Duration,
    /// Read-your-writes: MySQL re-read interval while waiting.
    pub ryw_poll: Duration,
}

/// The reader's core, shared by the gRPC service, the events consumer and the probes.
pub struct Reader {
    pub(crate) l1: Arc<L1>,
    pub(crate) l2: Arc<L2>,
    pub(crate) store: Store,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) freshness: Freshness,
}

fn owned(task: &pb::Task, tenant: &Tenant) -> bool {
    task.tenant == tenant.as_str()
}

impl Reader {
    /// GetTask: the task, never older than `min_version` (0: any version).
    ///
    /// # Errors
    /// NotFound (missing or another tenant's), NotVisible (min_version not reached within the
    /// wait), Unavailable (MySQL failed and nothing cached).
    pub async fn get(
        self: &Arc<Self>,
        tenant: &Tenant,
        id: TaskId,
        min_version: Version,
    ) -> Result<Lookup, ReadError> {
        match self.get_unhinted(tenant, id, min_version).await {
            // Whatever made it NOT_FOUND (another tenant's task included): the hint depends only
            // on the caller's tenant and the id, so it reveals nothing about other tenants.
            Err(ReadError::NotFound) => Err(match self.store.purged_hint(tenant, id).await {
                Some(message) => ReadError::Purged(message),
                None => ReadError::NotFound,
            }),
            r => r,
        }
    }

    async fn get_unhinted(
        self: &Arc<Self>,
        tenant: &Tenant,
        id: TaskId,
        min_version: Version,
    ) -> Result<Lookup, ReadError> {
        match self.cached(id).await {
            Ok((entry, served_from)) => {
                // This call has just read MySQL: the wait starts from that read, not another one.
                let read = served_from == pb::ServedFrom::Store;
                match &entry.value {
                    Cached::Found(t) if !owned(t, tenant) => Err(ReadError::NotFound),
                    Cached::Found(t) if t.version >= min_version => Ok(Lookup {
                        task: Arc::clone(t),
                        served_from,
                        stale: false,
                    }),
                    Cached::Found(t) => {
                        self.wait_for_version(tenant, id, min_version, t.version, read)
                            .await
                    }
                    Cached::Missing if min_version == 0 => Err(ReadError::NotFound),
                    // The caller holds a version, so the task exists: never trust a negative entry.
                    Cached::Missing => {
                        self.wait_for_version(tenant, id, min_version, 0, read)
                            .await
                    }
                }
            }
            Err(e) => self.stale_answer(tenant, id, min_version, e).await,
        }
    }

    /// The cached knowledge of `id` and the tier that produced it.
    async fn cached(
        self: &Arc<Self>,
        id: TaskId,
    ) -> Result<(Arc<Entry>, pb::ServedFrom), StoreFailure> {
        if !self.l1.enabled() {
            let e = self.load(id).await?;
            let from = e.source;
            return Ok((Arc::new(e), from));
        }
        if let Some(e) = self.l1.get(&id).await {
            let result = match e.value {
                Cached::Found(_) => CacheResult::Hit,
                Cached::Missing => CacheResult::NegativeHit,
            };
            metrics::cache_request(Tier::L1, result);
            self.maybe_refresh_early(id, &e);
            return Ok((e, pb::ServedFrom::L1));
        }
        metrics::cache_request(Tier::L1, CacheResult::Miss);
        let this = Arc::clone(self);
        let (e, fresh) = self
            .l1
            .get_or_load(id, async move { this.load(id).await })
            .await
            .map_err(|e| (*e).clone())?;
        if fresh {
            let from = e.source;
            Ok((e, from))
        } else {
            // Another caller's load answered this one (singleflight).
            Stats::bump(&self.stats.coalesced);
            metrics::coalesced_load();
            Ok((e, pb::ServedFrom::L1))
        }
    }

    /// Loads `id` from L2, else MySQL (writing the answer back to L2).
    async fn load(&self, id: TaskId) -> Result<Entry, StoreFailure> {
        let start = Instant::now();
        match self.l2.get(&id).await {
            L2Lookup::Hit(task) => {
                self.l1.remember(id, &task).await;
                return Ok(self
                    .l1
                    .entry(Cached::Found(task), start.elapsed(), pb::ServedFrom::L2));
            }
            L2Lookup::NegativeHit => {
                return Ok(self
                    .l1
                    .entry(Cached::Missing, start.elapsed(), pb::ServedFrom::L2));
            }
            L2Lookup::Miss | L2Lookup::Unavailable => {}
        }
        let row = self.store.get(id).await?;
        let delta = start.elapsed();
        match row {
            Some(task) => {
                let task = Arc::new(task);
                self.l1.remember(id, &task).await;
                self.l2.put(&task).await;
                Ok(self
                    .l1
                    .entry(Cached::Found(task), delta, pb::ServedFrom::Store))
            }
            None => {
                self.l2.put_negative(&id).await;
                Ok(self.l1.entry(Cached::Missing, delta, pb::ServedFrom::Store))
            }
        }
    }

    /// XFetch: on a hit close to expiry, refresh in the background (one refresh per key).
    fn maybe_refresh_early(self: &Arc<Self>, id: TaskId, e: &Entry) {
        if !xfetch::should_refresh_now(e.expires_at, e.delta, self.freshness.beta) {
            return;
        }
        let Some(claim) = self.l1.begin_refresh(id) else {
            return;
        };
        Stats::bump(&self.stats.early_refreshes);
        metrics::early_refresh();
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _claim = claim;
            match this.load(id).await {
                Ok(entry) => {
                    this.l1.offer(id, entry, Replace::IfNotOlder).await;
                }
                Err(e) => tracing::debug!(task_id = %id, error = %e, "early refresh failed"),
            }
        });
    }

    /// Reads MySQL directly (bypassing every cache) and feeds a found task back into them.
    pub(crate) async fn read_through(
        &self,
        id: TaskId,
    ) -> Result<Option<Arc<pb::Task>>, StoreFailure> {
        let Some(task) = self.store.get(id).await? else {
            return Ok(None);
        };
        let task = Arc::new(task);
        self.keep_read(id, &task).await;
        l2::put_in_background(&self.l2, vec![Arc::clone(&task)], l2::Fill::Always);
        Ok(Some(task))
    }

    /// A task just read from MySQL: remembered, and in L1 unless it holds something newer.
    pub(crate) async fn keep_read(&self, id: TaskId, task: &Arc<pb::Task>) {
        self.l1.remember(id, task).await;
        let entry = self.l1.entry(
            Cached::Found(Arc::clone(task)),
            Duration::ZERO,
            pb::ServedFrom::Store,
        );
        self.l1.offer(id, entry, Replace::IfNotOlder).await;
    }

    /// Read-your-writes: waits up to the configured time for `min_version`, re-reading MySQL and
    /// listening for events of `id`. `read`: the caller has just read MySQL and found `have`, so
    /// the first re-read is skipped (a task submitted a moment ago is usually not in MySQL yet:
    /// its event, not a second query, is what ends the wait).
    async fn wait_for_version(
        &self,
        tenant: &Tenant,
        id: TaskId,
        min_version: Version,
        mut have: Version,
        mut read: bool,
    ) -> Result<Lookup, ReadError> {
        // Subscribe before the first read so an event between the two is not lost.
        let mut events = self.notifier.subscribe(id);
        if read {
            // An event applied between the caller's read and the subscription is not on the
            // channel, but events are remembered before they are published.
            match self.l1.last_known(&id).await {
                Some(t) if !owned(&t, tenant) => return Err(ReadError::NotFound),
                Some(t) if t.version >= min_version => {
                    return Ok(Lookup {
                        task: t,
                        served_from: pb::ServedFrom::L1,
                        stale: false,
                    });
                }
                _ => {}
            }
        }
        let deadline = tokio::time::Instant::now() + self.freshness.ryw_wait;
        loop {
            let found = if std::mem::take(&mut read) {
                Ok(None)
            } else {
                self.read_through(id).await
            };
            match found {
                Ok(Some(t)) if !owned(&t, tenant) => return Err(ReadError::NotFound),
                Ok(Some(t)) if t.version >= min_version => {
                    return Ok(Lookup {
                        task: t,
                        served_from: pb::ServedFrom::Store,
                        stale: false,
                    });
                }
                Ok(Some(t)) => have = have.max(t.version),
                Ok(None) => {}
                Err(e) => return self.stale_answer(tenant, id, min_version, e).await,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ReadError::NotVisible {
                    wanted: min_version,
                    have,
                });
            }
            let poll_until = deadline.min(now + self.freshness.ryw_poll);
            loop {
                tokio::select! {
                    got = events.recv() => match got {
                        Ok(t) if !owned(&t, tenant) => return Err(ReadError::NotFound),
                        Ok(t) if t.version >= min_version => {
                            return Ok(Lookup { task: t, served_from: pb::ServedFrom::L1, stale: false });
                        }
                        Ok(t) => have = have.max(t.version),
                        // Missed some: the next MySQL read catches up.
                        Err(_) => break,
                    },
                    () = tokio::time::sleep_until(poll_until) => break,
                }
            }
        }
    }

    /// MySQL failed: answer from the last known copy if it is the caller's and new enough.
    async fn stale_answer(
        &self,
        tenant: &Tenant,
        id: TaskId,
        min_version: Version,
        cause: StoreFailure,
    ) -> Result<Lookup, ReadError> {
        match self.l1.last_known(&id).await {
            Some(t) if !owned(&t, tenant) => Err(ReadError::NotFound),
            Some(t) if t.version >= min_version => {
                Stats::bump(&self.stats.stale_reads);
                metrics::stale_read();
                tracing::warn!(task_id = %id, error = %cause, "store failing; serving a stale copy");
                Ok(Lookup {
                    task: t,
                    served_from: pb::ServedFrom::L1,
                    stale: true,
                })
            }
            _ => Err(cause.into()),
        }
    }

    /// Applies one event: a version-checked update of L1 (and L2), then notifies subscribers.
    /// Returns whether it was newer than what L1 held.
    pub async fn apply_event(&self, event: pb::TaskEvent) -> bool {
        let Some(mut task) = event.task else {
            tracing::warn!(task_id = %event.task_id, "event without a task snapshot; ignored");
            return false;
        };
        let Ok(id) = TaskId::parse(&task.task_id) else {
            tracing::warn!("event with a malformed task id; ignored");
            return false;
        };
        if event.version != 0 {
            task.version = event.version;
        }
        let task = Arc::new(task);
        // `remember` first: a load finishing concurrently checks it (see `L1::get_or_load`).
        let newer = self.l1.remember(id, &task).await;
        let applied = if self.l1.enabled() {
            let entry = self.l1.entry(
                Cached::Found(Arc::clone(&task)),
                Duration::ZERO,
                pb::ServedFrom::L1,
            );
            // Refresh what is cached (a negative entry included); a task nobody asked for stays
            // out of L1, so L1 holds what is read rather than whatever changes.
            self.l1.offer(id, entry, Replace::IfNewerAndCached).await
        } else {
            newer
        };
        metrics::event_applied(applied);
        Stats::bump(if applied {
            &self.stats.events_applied
        } else {
            &self.stats.events_stale
        });
        if let Some(at) = event
            .occurred_at
            .as_ref()
            .and_then(dispatch_core::time::from_proto)
        {
            let lag = (chrono::Utc::now() - at).to_std().unwrap_or_default();
            metrics::event_lag(lag);
        }
        // Watchers filter by version themselves, so every event is handed on.
        self.notifier.publish(id, &task);
        if applied || newer {
            l2::put_in_background(&self.l2, vec![task], l2::Fill::OnlyCached);
        }
        applied
    }
}
