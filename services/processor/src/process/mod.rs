//! What happens to one record.
//!
//! - [`submit`]: the life of an attempt (gate, schedule, run, retry, dead-letter).
//! - [`dlq`]: retry and DLQ records, and the dead-letter index.
//! - here: cancels, poison records and the bookkeeping every path shares (finish/abandon an
//!   offset lease, in-flight and cancelled sets).
//!
//! Over 400 lines because [`Processor`] is defined here with the state every path shares (offset
//! leases, task locks, in-flight and cancelled sets) and the cancel path, which reads all of it;
//! the cancel path (`cancel` and the cancelled set) would move to a `cancel` submodule first, as
//! `submit` and `dlq` did.

mod dlq;
mod submit;

use std::collections::BTreeSet;

use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::{Envelope, TaskId, TaskState, Topics};
use dispatch_store::MySqlPool;
use dispatch_store::tasks::{StateVersion, TaskWrite};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::consumer::{Ctx, Delivery, Lease, Shared, Tp};
use crate::gate::Gate;
use crate::handler::Registry;
use crate::metrics::{self, Tracked};
use crate::produce::Producer;
use crate::slots::Slots;
use crate::writer::{Committed, Writer};

/// Bound of the per-process memory of cancels (the store holds every cancel anyway).
const MAX_CANCELS_REMEMBERED: usize = 100_000;

/// An attempt this process is working on.
#[derive(Debug, Clone)]
struct InFlight {
    tenant: String,
    generation: u32,
    attempt: u32,
    /// Fired by a cancel while the handler runs.
    token: CancellationToken,
}

/// Everything a record needs: the [`Parts`] it is built from (reached through `Deref`, so
/// `processor.writer` reads as before) and the per-task state it keeps.
pub struct Processor {
    parts: Parts,
    in_flight: Mutex<HashMap<TaskId, InFlight>>,
    /// Cancels seen here: task id -> (the cancelling tenant, when).
    cancelled: Mutex<HashMap<TaskId, (String, Instant)>>,
    task_locks: Mutex<HashMap<TaskId, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::ops::Deref for Processor {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.parts
    }
}

/// Held while one record of a task goes from its gate lookup to the commit of its outcome; see
/// [`Processor::lock_task`].
pub(crate) struct TaskLock<'a> {
    processor: &'a Processor,
    id: TaskId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for TaskLock<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.processor.task_locks.lock();
        // Only the map still holds it: nobody waits, forget the entry.
        if locks
            .get(&self.id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.id);
        }
        metrics::tracked(Tracked::TaskLocks, locks.len());
    }
}

/// What a [`Processor`] is built from (the pipeline builds these).
pub struct Parts {
    /// Topic names.
    pub topics: Topics,
    /// Handlers.
    pub registry: Registry,
    /// Batch writer.
    pub writer: Writer,
    /// Batched state lookups.
    pub gate: Gate,
    /// Retry/DLQ producer.
    pub producer: Producer,
    /// MySQL.
    pub pool: MySqlPool,
    /// Consumption state (offset tracking).
    pub shared: Arc<Shared>,
    /// The consumer, to store offsets.
    pub consumer: Arc<BaseConsumer<Ctx>>,
    /// Task types an operator paused.
    pub paused_types: watch::Receiver<BTreeSet<String>>,
    /// Fires when the drain bound is over: running handlers are cancelled.
    pub hard_stop: CancellationToken,
    /// How long a cancel is remembered.
    pub cancelled_ttl: Duration,
    /// Execution slots (`consumer.max_concurrency`), granted fairly.
    pub slots: Arc<Slots>,
    /// Longer retry delays wait in MySQL instead of on a retry topic.
    pub retry_topic_max_delay: Duration,
    /// A retry sent to a retry topic also leaves a wait in MySQL due this long after the retry
    /// (`scheduler.republish_after_ms`): if the task is still RETRYING then, its record never
    /// reached a consumer and the scheduler publishes the next attempt again.
    pub retry_backstop: Duration,
    /// Wakes the workflow advancer when a workflow node's state commits.
    pub workflows: crate::workflows::Waker,
}

impl Processor {
    /// Assembles a processor.
    pub fn new(parts: Parts) -> Self {
        Self {
            parts,
            in_flight: Mutex::default(),
            cancelled: Mutex::default(),
            task_locks: Mutex::default(),
        }
    }

    /// Serializes the records of one task in this process, from the gate lookup to the commit of
    /// the outcome. Two records of one task can be in flight at once after a crash (the replayed
    /// attempt N and the retry record of attempt N+1, on different topics); without this, the
    /// second could pass the gate before the first's terminal state commits and run a finished
    /// task again. With it, the second looks the state up after that commit and skips.
    pub(crate) async fn lock_task(&self, id: TaskId) -> TaskLock<'_> {
        let lock = {
            let mut locks = self.task_locks.lock();
            let lock = Arc::clone(locks.entry(id).or_default());
            metrics::tracked(Tracked::TaskLocks, locks.len());
            lock
        };
        let guard = lock.lock_owned().await;
        TaskLock {
            processor: self,
            id,
            guard: Some(guard),
        }
    }

    /// The record's effects are persisted: its offset may be stored.
    pub fn finish(&self, lease: &Lease) {
        let consumer = &self.consumer;
        let current = self
            .shared
            .partitions
            .finish(lease, |tp, w| store(consumer, tp, w));
        if !current {
            tracing::debug!(topic = %lease.tp.topic, partition = lease.tp.partition, offset = lease.offset, "stale record finished after revoke");
        }
    }

    /// The record's work is dropped unpersisted; it will be read again.
    pub fn abandon(&self, lease: &Lease) {
        self.shared.partitions.abandon(lease);
    }

    /// Finishes once `committed` resolves, or abandons if the writer gave up. A committed state
    /// of a workflow node wakes the workflow advancer: it may decide the node's dependents.
    async fn finish_after(&self, lease: &Lease, committed: Committed, env: &Envelope) {
        match committed.await {
            Ok(_) => {
                if let Some(w) = env.workflow_id {
                    self.workflows.wake_for(w);
                }
                self.finish(lease)
            }
            Err(_) => self.abandon(lease),
        }
    }

    /// Handles a CANCEL: remembers it, fires a running handler's token and writes CANCELLED
    /// (a placeholder row if the task has none yet; its SUBMIT later fills the data columns).
    ///
    /// A cancel applies only to its own tenant's task: a task of another tenant is left alone
    /// (counted in `dispatch_cancels_ignored_total`), and a placeholder carries the canceller's
    /// tenant, so it never affects another tenant's task (the store replaces it with the real
    /// owner's row). It cancels the task's current generation: a redriven task is cancellable.
    pub async fn cancel(&self, d: Delivery) {
        let Ok(env) = &d.envelope else {
            return;
        };
        if !self.shared.partitions.start(&d.lease) {
            self.abandon(&d.lease);
            return;
        }
        let stored = loop {
            match self.gate.lookup(env.task_id).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "state lookup failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = d.lease.revoked.cancelled() => return self.abandon(&d.lease),
                    }
                }
            }
        };
        let tenant = env.tenant.as_str();
        let foreign = |s: &&StateVersion| {
            !cfg!(feature = "fault-skip-cancel-tenant") && !s.placeholder && !s.owned_by(tenant)
        };
        if let Some(s) = stored.as_ref().filter(foreign) {
            tracing::warn!(task_id = %env.task_id, tenant, owner = %s.tenant, "cancel of another tenant's task ignored");
            metrics::cancel_of_another_tenant_ignored();
            return self.finish(&d.lease);
        }
        let generation = stored
            .as_ref()
            .filter(|s| s.owned_by(tenant))
            .map_or(env.generation, |s| s.generation.max(env.generation));
        self.remember_cancel(env.task_id, tenant);
        if let Some(f) = self
            .in_flight
            .lock()
            .get(&env.task_id)
            .filter(|f| cfg!(feature = "fault-skip-cancel-tenant") || f.tenant == tenant)
        {
            f.token.cancel();
        }
        tracing::info!(task_id = %env.task_id, generation, "cancel requested");
        let mut w = write_of(
            env,
            TaskState::Cancelled,
            0,
            TaskState::Cancelled.version(generation, 0),
        );
        w.generation = generation;
        w.task_type = String::new();
        w.payload = Vec::new();
        w.last_error = format!("cancelled: {}", env.cancel_reason);
        let committed = self.writer.write(w, None, Vec::new()).await;
        let result = committed.await;
        if let Some(w) = env.workflow_id.filter(|_| result.is_ok()) {
            self.workflows.wake_for(w);
        }
        match result {
            Ok(true) => self.finish(&d.lease),
            // Fenced: a replay of a cancel already committed (whose event a killed process may
            // never have delivered), or a task already finished. Publish the row as it is.
            Ok(false) => {
                self.republish(env.task_id).await;
                self.finish(&d.lease);
            }
            Err(_) => self.abandon(&d.lease),
        }
    }

    /// Publishes the task's row as it is now (a replayed record's event may have been lost with
    /// the process that committed it), until the events topic ends with it.
    pub(crate) async fn republish(&self, id: TaskId) {
        let key = id.to_string();
        let headers = crate::writer::event_headers(&[], &key);
        let published = vec![crate::writer::Published {
            key,
            version: 0,
            headers,
            direct: false,
        }];
        crate::writer::settle(
            &self.producer,
            &self.pool,
            &self.topics.events(),
            published,
            crate::writer::Publisher::Other,
        )
        .await;
    }

    fn remember_cancel(&self, id: TaskId, tenant: &str) {
        let mut c = self.cancelled.lock();
        if c.len() >= MAX_CANCELS_REMEMBERED {
            let ttl = self.cancelled_ttl;
            c.retain(|_, (_, at)| at.elapsed() < ttl);
            if c.len() >= MAX_CANCELS_REMEMBERED {
                // Still full of live entries: forget the oldest half (the store still has them).
                let mut ats: Vec<Instant> = c.values().map(|(_, at)| *at).collect();
                ats.sort_unstable();
                let cut = ats[ats.len() / 2];
                c.retain(|_, (_, at)| *at > cut);
            }
        }
        c.insert(id, (tenant.to_owned(), Instant::now()));
        metrics::tracked(Tracked::Cancels, c.len());
    }

    /// Whether `tenant` cancelled `id` recently (this process saw the cancel).
    fn is_cancelled(&self, id: TaskId, tenant: &str) -> bool {
        self.cancelled
            .lock()
            .get(&id)
            .is_some_and(|(t, at)| t == tenant && at.elapsed() < self.cancelled_ttl)
    }

    /// Claims `(generation, attempt)` of a task for this process; false when the same or a later
    /// attempt is already in flight here (a duplicate record).
    fn claim(&self, env: &Envelope, token: &CancellationToken) -> bool {
        let mut m = self.in_flight.lock();
        if m.get(&env.task_id)
            .is_some_and(|f| (f.generation, f.attempt) >= (env.generation, env.attempt))
        {
            return false;
        }
        m.insert(
            env.task_id,
            InFlight {
                tenant: env.tenant.to_string(),
                generation: env.generation,
                attempt: env.attempt,
                token: token.clone(),
            },
        );
        metrics::tracked(Tracked::InFlight, m.len());
        true
    }

    fn unclaim(&self, env: &Envelope) {
        let mut m = self.in_flight.lock();
        if m.get(&env.task_id)
            .is_some_and(|f| (f.generation, f.attempt) == (env.generation, env.attempt))
        {
            m.remove(&env.task_id);
        }
        metrics::tracked(Tracked::InFlight, m.len());
    }

    /// Task types an operator paused.
    pub fn type_paused(&self, task_type: &str) -> bool {
        self.paused_types.borrow().contains(task_type)
    }
}

/// Stores `offset` (the next offset to read) for `tp`.
fn store(consumer: &BaseConsumer<Ctx>, tp: &Tp, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset))
        .is_err()
    {
        return;
    }
    match consumer.store_offsets(&tpl) {
        Ok(()) => {
            tracing::debug!(topic = %tp.topic, partition = tp.partition, offset, "offset stored")
        }
        Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
            tracing::debug!(topic = %tp.topic, partition = tp.partition, "partition no longer assigned; offset not stored");
        }
        Err(e) => {
            tracing::warn!(error = %e, topic = %tp.topic, partition = tp.partition, "cannot store offset")
        }
    }
}

/// The row of `env` in `state`.
pub fn write_of(env: &Envelope, state: TaskState, attempts: u32, version: u64) -> TaskWrite {
    TaskWrite {
        task_id: env.task_id,
        tenant: env.tenant.to_string(),
        business_key: env.business_key.to_string(),
        task_type: env.task_type.to_string(),
        priority: env.priority,
        payload: env.payload.clone(),
        state,
        attempts,
        max_attempts: env.retry.max_attempts,
        initial_backoff_ms: env.retry.initial_backoff_ms,
        max_backoff_ms: env.retry.max_backoff_ms,
        generation: env.generation,
        idempotency_key: env.idempotency_key.clone(),
        run_at: env.run_at,
        deadline_at: env.deadline,
        timeout_ms: env.timeout_ms,
        last_error: String::new(),
        result: None,
        version,
        lease_epoch: 0,
        created_at: env.submitted_at,
        updated_at: Utc::now(),
    }
}
