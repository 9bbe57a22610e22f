//! The batch writer: every state change goes through one task that commits them in batches.
//!
//! Writes arrive over a channel and are coalesced by task id while a batch is open (the write with
//! the higher version wins; equal versions: the later one, which may carry fuller data), so a task
//! that starts and finishes within one window costs one row; a first attempt's RUNNING (a start
//! nobody waits on, queued only once its handler has run one window: `process::submit`) is held
//! back into the next batch once, so its outcome usually still joins it.
//! A batch is flushed at
//! `writer.max_rows` tasks or `writer.max_delay_ms` after its first write, as ONE transaction:
//! the fenced multi-row upsert, the attempt rows, and a read-back of the written rows: a write
//! landed exactly when its row carries its write token (the fence may reject replays, zombies and
//! replaced owners). After the commit, a `TaskEvent` carrying the row *as stored* is published for
//! every landed write, and only then are the writers' waiters released, so an offset is stored
//! only after its state and its event are durable.
//!
//! Up to `writer.max_concurrent_batches` transactions are in flight at once, so the next batch
//! gathers and commits while the previous one waits on MySQL. Their events are still enqueued in
//! batch order: a batch publishes only after the batch before it has. Together with the version
//! fence this keeps every task's events in version order: a write overtaken by a newer one is
//! fenced out (no event). A write of a task that a batch in flight also writes waits for that
//! batch to commit outside the transaction: it joins the next batch instead of this one
//! ([`Batch::hold_uncommitted`]), so a batch never waits on another's row locks (which it did,
//! holding its own meanwhile: under load, InnoDB's longest row-lock waits were these).
//!
//! A failing database stops the flow: the batch is retried with backoff, nothing is acknowledged,
//! senders block once the channel is full and consumer lag grows until MySQL is back.
//!
//! Over 400 lines because the batch loop, the coalescing rule and the commit with its read-back
//! are one transaction path, and the tests start near line 701; the commit (`commit`,
//! `commit_with_retry`) would move to a submodule first, as `events` and `owed` did.

use foldhash::HashMap;
use std::time::{Duration, Instant};

use dispatch_core::{TaskId, TaskState, Topics};
use dispatch_runtime::admin::{ComponentStatus, Health};
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use dispatch_store::MySqlPool;
use dispatch_store::attempts::AttemptRow;
use dispatch_store::tasks::TaskWrite;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics;
use crate::produce::Producer;
use dispatch_proto::v1 as pb;

mod events;
mod owed;

pub use events::snapshot_event;
pub(crate) use events::{Published, event_headers, settle};
use events::{enqueue_events, release_after};
use owed::Owed;
pub(crate) use owed::Publisher;

/// When the next attempt of a RETRYING write is due, waiting in MySQL (`retry_waits`).
#[derive(Debug, Clone, Copy)]
pub struct RetryDue {
    /// Due then.
    pub at: chrono::DateTime<chrono::Utc>,
    /// A backstop: the next attempt was also sent to a retry topic, and this wait only matters if
    /// that record never reaches a consumer.
    pub backstop: bool,
}

/// One state change to persist.
#[derive(Debug)]
pub struct WriteRequest {
    /// The row.
    pub write: TaskWrite,
    /// The finished attempt, if this write ends one.
    pub attempt: Option<AttemptRow>,
    /// Trace headers for the event.
    pub trace: Vec<(String, String)>,
    /// Released once committed and published (with whether the entry's write landed); dropped
    /// (error) if the writer gives up.
    pub done: Option<oneshot::Sender<bool>>,
    /// A RETRYING write whose next attempt waits in MySQL: when it is due.
    pub retry_due: Option<RetryDue>,
    /// A claim ([`Writer::claim`]): released right after the commit, with whether the row now
    /// carries this write's version (its event is published later, like every other).
    pub claimed: Option<(u64, oneshot::Sender<bool>)>,
}

/// Sends writes to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WriteRequest>,
    window: Duration,
}

/// Resolves when a write is durable: `true` if it landed, `false` if the fence dropped it (the task
/// had moved on); an error means it was not persisted (shutdown).
pub type Committed = oneshot::Receiver<bool>;

/// Resolves once a claim is committed: `true` if the row carries the claim's version (the claim
/// holds), `false` if the fence dropped it or a newer write of the task won; an error means it was
/// not persisted (shutdown).
pub type Claimed = oneshot::Receiver<bool>;

impl Writer {
    /// A batch's window (`writer.max_delay_ms`): how long a first attempt's start waits for its
    /// outcome before it is written on its own.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Queues a write; the returned receiver resolves once it is committed and published.
    pub async fn write(
        &self,
        write: TaskWrite,
        attempt: Option<AttemptRow>,
        trace: Vec<(String, String)>,
    ) -> Committed {
        self.send(write, attempt, trace, None, None).await
    }

    /// Queues a RETRYING write whose next attempt waits in MySQL until `due` (the scheduler
    /// publishes it then, if the task still waits); resolves like [`Writer::write`].
    pub async fn write_retry(
        &self,
        write: TaskWrite,
        attempt: AttemptRow,
        trace: Vec<(String, String)>,
        due: RetryDue,
    ) -> Committed {
        self.send(write, Some(attempt), trace, Some(due), None)
            .await
    }

    /// Queues a claim (an attempt's RUNNING): the first receiver resolves as soon as the
    /// transaction commits, without waiting for the event (a handler that waits for its claim
    /// starts right after the claim is durable, not seconds later when the events pipeline is
    /// slow: the window in which a cancel can commit between the claim and the start stays short);
    /// the second resolves like [`Writer::write`].
    pub async fn claim(
        &self,
        write: TaskWrite,
        trace: Vec<(String, String)>,
    ) -> (Claimed, Committed) {
        let (claimed, claim_rx) = oneshot::channel();
        let version = write.version;
        let rx = self
            .send(write, None, trace, None, Some((version, claimed)))
            .await;
        (claim_rx, rx)
    }

    async fn send(
        &self,
        write: TaskWrite,
        attempt: Option<AttemptRow>,
        trace: Vec<(String, String)>,
        retry_due: Option<RetryDue>,
        claimed: Option<(u64, oneshot::Sender<bool>)>,
    ) -> Committed {
        let (done, rx) = oneshot::channel();
        let req = WriteRequest {
            write,
            attempt,
            trace,
            done: Some(done),
            retry_due,
            claimed,
        };
        // A closed writer drops the request, and with it `done`: the receiver reports an error.
        let _ = self.tx.send(req).await;
        rx
    }
}

/// The writer task's configuration.
pub struct WriterTask {
    /// The batches' transactions: the writer's own connections, `max_concurrent` of them (see
    /// [`commit_pool`]).
    pub commits: MySqlPool,
    /// Reads after a commit (the rows of events to repair): the service's shared pool.
    pub pool: MySqlPool,
    /// Producer for events.
    pub producer: Producer,
    /// Topic names.
    pub topics: Topics,
    /// Flush at this many tasks.
    pub max_rows: usize,
    /// Flush this long after the first write.
    pub max_delay: Duration,
    /// Transactions in flight at once.
    pub max_concurrent: usize,
    /// Hold a write of a task an uncommitted batch also writes for the next batch
    /// ([`Batch::hold_uncommitted`]); off, it waits on that batch's row lock inside its own.
    pub hold_uncommitted: bool,
    /// Health registry (`mysql`).
    pub health: Health,
    /// Where a failed commit's TLS failure is recorded (`mysql_tls`: `crate::readiness`).
    pub tls: TlsFailures,
    /// Stop accepting writes: flush what is queued and exit.
    pub close: CancellationToken,
    /// Gives up retrying a failing batch (hard stop).
    pub abort: CancellationToken,
}

#[derive(Default)]
struct Entry {
    write: Option<TaskWrite>,
    retry_due: Option<RetryDue>,
    attempts: Vec<AttemptRow>,
    trace: Vec<(String, String)>,
    waiters: Vec<oneshot::Sender<bool>>,
    /// Claims in this entry: (version, released after the commit).
    claims: Vec<(u64, oneshot::Sender<bool>)>,
    /// Held back from the batch it arrived in once already ([`Batch::carry_starts`]).
    carried: bool,
}

/// A batch being collected, coalesced by task id.
#[derive(Default)]
struct Batch {
    index: HashMap<TaskId, usize>,
    entries: Vec<Entry>,
}

impl Batch {
    fn add(&mut self, r: WriteRequest) {
        let id = r.write.task_id;
        let i = *self.index.entry(id).or_insert_with(|| {
            self.entries.push(Entry::default());
            self.entries.len() - 1
        });
        let e = &mut self.entries[i];
        match e.write.take() {
            None => {
                e.write = Some(r.write);
                e.trace = r.trace;
                e.retry_due = r.retry_due;
            }
            Some(old) => {
                let (w, took_new) = coalesce(old, r.write);
                e.write = Some(w);
                if took_new {
                    e.trace = r.trace;
                    e.retry_due = r.retry_due;
                }
            }
        }
        if let Some(a) = r.attempt {
            e.attempts
                .retain(|x| (x.generation, x.attempt) != (a.generation, a.attempt));
            e.attempts.push(a);
        }
        e.waiters.extend(r.done);
        e.claims.extend(r.claimed);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes out the entries that only start a first attempt: a RUNNING that is not a claim, with
    /// no finished attempt and no retry, which nobody waits on before the handler runs. They open
    /// the next batch instead (once), where the attempt's outcome usually joins them: a quick task
    /// then costs one row and one event instead of two of each, even when its RUNNING and its
    /// outcome arrive on either side of a batch boundary (which, under load, is about one task in
    /// three). The RUNNING commits at most one batch later (`max_delay` after this batch closed).
    fn carry_starts(&mut self) -> Batch {
        let mut keep = Batch::default();
        let mut carry = Batch::default();
        for mut e in self.entries.drain(..) {
            // One waiter: the start's own (a coalesced cancel placeholder's waiter is not held).
            let start = !e.carried
                && e.waiters.len() <= 1
                && e.claims.is_empty()
                && e.attempts.is_empty()
                && e.retry_due.is_none()
                && e.write
                    .as_ref()
                    .is_some_and(|w| w.state == TaskState::Running);
            let to = if start {
                e.carried = true;
                &mut carry
            } else {
                &mut keep
            };
            if let Some(w) = &e.write {
                to.index.insert(w.task_id, to.entries.len());
            }
            to.entries.push(e);
        }
        *self = keep;
        carry
    }

    /// Takes out the entries of tasks that a batch still in flight also writes, and moves them
    /// into `into` (which holds none of this batch's tasks). In this batch they would wait on
    /// that batch's row locks until it commits, and hold the locks of every row written before
    /// them meanwhile; held back, they join the first batch that starts after it committed,
    /// and the rest of this batch commits without waiting.
    fn hold_uncommitted(&mut self, uncommitted: &Uncommitted, into: &mut Batch) {
        let busy = uncommitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if busy.is_empty() || !self.index.keys().any(|id| busy.contains_key(id)) {
            return;
        }
        let mut keep = Batch::default();
        for e in self.entries.drain(..) {
            let id = e.write.as_ref().map(|w| w.task_id);
            let to = if id.is_some_and(|id| busy.contains_key(&id)) {
                &mut *into
            } else {
                &mut keep
            };
            if let Some(id) = id {
                to.index.insert(id, to.entries.len());
            }
            to.entries.push(e);
        }
        *self = keep;
    }

    fn task_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.entries
            .iter()
            .filter_map(|e| e.write.as_ref().map(|w| w.task_id))
    }
}

/// The tasks of the batches begun and not yet committed (or given up), with how many such
/// batches write each.
type Uncommitted = std::sync::Mutex<HashMap<TaskId, u32>>;

/// A batch's place in [`Uncommitted`], given up when dropped: after its commit, or however else
/// the task committing it ends (a panic must not hold its tasks' later writes back for ever).
struct InFlight {
    uncommitted: std::sync::Arc<Uncommitted>,
    ids: Vec<TaskId>,
}

impl InFlight {
    fn begin(uncommitted: &std::sync::Arc<Uncommitted>, batch: &Batch) -> Self {
        let ids: Vec<TaskId> = batch.task_ids().collect();
        let mut busy = uncommitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &ids {
            *busy.entry(*id).or_default() += 1;
        }
        Self {
            uncommitted: uncommitted.clone(),
            ids,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut busy = self
            .uncommitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &self.ids {
            if let Some(n) = busy.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(id);
                }
            }
        }
    }
}

/// Two writes of one task in one batch, as the store would leave them applied one after the
/// other: the higher version wins (equal versions: the later one, which may carry fuller data),
/// except across tenants, where a cancel's placeholder never beats its task's real write (the
/// store replaces a foreign placeholder and drops a foreign cancel). A placeholder that wins over
/// its own tenant's real write takes the task's data from it, as the store fills it. Returns the
/// write to keep and whether it is (based on) `new`.
fn coalesce(old: TaskWrite, new: TaskWrite) -> (TaskWrite, bool) {
    let placeholder = |w: &TaskWrite| w.task_type.is_empty();
    if old.tenant != new.tenant {
        return match (placeholder(&old), placeholder(&new)) {
            (true, false) => (new, true),
            _ => (old, false),
        };
    }
    let (mut keep, data, took_new) = if new.version >= old.version {
        (new, old, true)
    } else {
        (old, new, false)
    };
    if placeholder(&keep) && !placeholder(&data) {
        // The placeholder's state and stamps; everything else (the task's data) from the write.
        keep = TaskWrite {
            task_id: keep.task_id,
            tenant: keep.tenant,
            state: keep.state,
            attempts: keep.attempts,
            generation: keep.generation,
            last_error: keep.last_error,
            result: keep.result,
            version: keep.version,
            lease_epoch: keep.lease_epoch,
            updated_at: keep.updated_at,
            ..data
        };
    }
    (keep, took_new)
}

/// Opens the writer's own connections: one per transaction in flight (`max_concurrent`).
///
/// A statement is prepared once per connection and text, and the writer's are large (a padded
/// 512-row upsert has over 12,000 placeholders). Taken from the shared pool, consecutive batches
/// went to the next of its connections (16 by default), each of which prepared the writer's
/// statements again: about one preparation per batch over a 100,000-task drain. With connections
/// of its own the writer prepares each shape `max_concurrent` times, and a slow read elsewhere in
/// the service never holds a commit back waiting for a connection.
///
/// # Errors
/// As [`dispatch_store::connect`].
pub async fn commit_pool(
    db: &dispatch_store::DbSettings,
    max_concurrent: usize,
) -> Result<MySqlPool, sqlx::Error> {
    let n = u32::try_from(max_concurrent.max(1)).unwrap_or(u32::MAX);
    dispatch_store::connect(&dispatch_store::DbSettings {
        max_connections: n,
        min_connections: n,
        ..db.clone()
    })
    .await
}

/// Spawns the writer on `tracker`; the task ends once every [`Writer`] is dropped and the last
/// batch is flushed.
pub fn spawn(cfg: WriterTask, tracker: &TaskTracker, capacity: usize) -> Writer {
    let (tx, rx) = mpsc::channel(capacity);
    let acks = TaskTracker::new();
    let window = cfg.max_delay;
    tracker.spawn(run(cfg, rx, acks));
    Writer { tx, window }
}

async fn run(cfg: WriterTask, mut rx: mpsc::Receiver<WriteRequest>, acks: TaskTracker) {
    let cfg = std::sync::Arc::new(cfg);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent.max(1)));
    // Resolves once the previous batch has enqueued its events (or given up).
    let mut previous: Option<oneshot::Receiver<()>> = None;
    let owed = std::sync::Arc::new(Owed::default());
    let mut seq = 0u64;
    let mut closing = false;
    // First-attempt starts held back from the previous batch, and writes of tasks an uncommitted
    // batch also writes: they open the next one.
    let mut carried = Batch::default();
    let uncommitted = std::sync::Arc::new(Uncommitted::default());
    loop {
        if cfg.close.is_cancelled() && !closing {
            // Closing the receiver still yields what is buffered, then `None`.
            closing = true;
            rx.close();
        }
        let mut batch = std::mem::take(&mut carried);
        if batch.len() == 0 {
            let first = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                () = cfg.close.cancelled(), if !closing => continue,
            };
            batch.add(first);
        }
        let open = fill(&mut rx, &mut batch, cfg.max_rows, cfg.max_delay).await;
        if open && !closing {
            carried = batch.carry_starts();
            if batch.len() == 0 {
                continue;
            }
        }
        let Ok(mut slot) = slots.clone().acquire_owned().await else {
            break;
        };
        if open && !closing && cfg.hold_uncommitted {
            let Some(kept) =
                hold_back(&mut batch, &uncommitted, &mut carried, slot, cfg.max_delay).await
            else {
                continue;
            };
            slot = kept;
        }
        let in_flight = InFlight::begin(&uncommitted, &batch);
        let (enqueued, next) = oneshot::channel();
        let before = previous.replace(next);
        let (cfg, acks2, owed) = (cfg.clone(), acks.clone(), owed.clone());
        seq += 1;
        let seq = seq;
        acks.spawn(async move {
            let mut batch = batch;
            let landed = commit_with_retry(&cfg, &batch).await;
            drop(in_flight);
            drop(slot);
            if let Some(landed) = &landed {
                owed.committed(seq, owed_stamps(&batch, landed));
                release_claims(&mut batch, landed);
            }
            if let Some(before) = before {
                // An error only means that batch ended (aborted): its turn is over either way.
                let _ = before.await;
            }
            let Some(landed) = landed else {
                tracing::warn!(rows = batch.len(), "writer aborted; batch not persisted");
                return;
            };
            // Events are enqueued in batch order, so a task's events reach its partition of the
            // (compacted) events topic in version order; waiting for their acknowledgements and
            // waking the waiters overlaps with later batches.
            let topic = cfg.topics.events();
            let flags: Vec<bool> = landed.iter().map(Option::is_some).collect();
            let (pending, rebuilds) = enqueue_events(&cfg.producer, &topic, &batch, landed);
            let _ = enqueued.send(());
            acks2.spawn(release_after(
                cfg.producer.clone(),
                cfg.pool.clone(),
                topic,
                batch,
                flags,
                pending,
                cfg.abort.clone(),
                (owed, seq, rebuilds),
            ));
        });
    }
    acks.close();
    acks.wait().await;
    tracing::info!("batch writer stopped");
}

/// Collects writes into `batch` until it holds `max_rows` tasks or `max_delay` has passed since the
/// call: the batch's window opens with its first write (or with the writes carried into it).
/// Returns `false` once the channel is closed and drained (the batch is the last), else `true`.
async fn fill(
    rx: &mut mpsc::Receiver<WriteRequest>,
    batch: &mut Batch,
    max_rows: usize,
    max_delay: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + max_delay;
    while batch.len() < max_rows {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => batch.add(r),
                None => return false,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    true
}

/// Moves the writes of tasks that a batch in flight also writes into `carried`
/// ([`Batch::hold_uncommitted`]); called once the slot is ours, so a batch that committed
/// meanwhile holds nothing back. Returns the slot if anything is left to commit. If all of the
/// batch waits for batches in flight, gives the slot up and waits one batch window for them to
/// commit (with a full batch carried, the loop would not wait otherwise), then returns `None`.
async fn hold_back(
    batch: &mut Batch,
    uncommitted: &Uncommitted,
    carried: &mut Batch,
    slot: tokio::sync::OwnedSemaphorePermit,
    max_delay: Duration,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    batch.hold_uncommitted(uncommitted, carried);
    if batch.len() > 0 {
        return Some(slot);
    }
    drop(slot);
    tokio::time::sleep(max_delay).await;
    None
}

/// Per entry of a batch: the row as stored after its write, if the write landed.
type Landed = Vec<Option<pb::Task>>;

/// The stamps the landed writes of a committed batch left on their rows.
fn owed_stamps<'a>(
    batch: &'a Batch,
    landed: &'a Landed,
) -> impl Iterator<Item = (TaskId, dispatch_core::version::Stamp)> + 'a {
    batch.entries.iter().zip(landed).filter_map(|(e, row)| {
        let (w, row) = (e.write.as_ref()?, row.as_ref()?);
        let stamp = dispatch_core::version::Stamp {
            version: row.version,
            epoch: w.lease_epoch,
        };
        Some((w.task_id, stamp))
    })
}

/// Tells each claim of a committed batch whether it holds: its entry's write landed and the row
/// carries the claim's version (a newer write of the task coalesced into the same entry, a cancel
/// say, means the claim lost).
fn release_claims(batch: &mut Batch, landed: &Landed) {
    for (e, row) in batch.entries.iter_mut().zip(landed) {
        for (version, tx) in e.claims.drain(..) {
            let _ = tx.send(row.as_ref().is_some_and(|t| t.version == version));
        }
    }
}

/// Commits the batch, retrying with backoff; `None` when aborted. Returns, per entry, the row its
/// write left if the write landed.
async fn commit_with_retry(cfg: &WriterTask, batch: &Batch) -> Option<Landed> {
    let mut delays = dispatch_runtime::retry::backoff();
    loop {
        let started = Instant::now();
        match commit(&cfg.commits, batch).await {
            Ok(landed) => {
                metrics::batch_written(batch.len(), started.elapsed());
                cfg.health.set("mysql", ComponentStatus::Up);
                return Some(landed);
            }
            Err(e) => {
                metrics::batch_failed();
                cfg.tls.observe(Dependency::Mysql, &e);
                cfg.health
                    .set("mysql", ComponentStatus::Down(e.to_string()));
                let delay = delays.next().unwrap_or(dispatch_runtime::retry::MAX_DELAY);
                tracing::warn!(error = %e, rows = batch.len(), retry_in_ms = delay.as_millis() as u64, "batch write failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cfg.abort.cancelled() => return None,
                }
            }
        }
    }
}

async fn commit(pool: &MySqlPool, batch: &Batch) -> dispatch_store::Result<Landed> {
    // Sorted by id: concurrent batches (two instances during a rebalance) lock rows in the same
    // order, which avoids deadlocks.
    let mut writes: Vec<&TaskWrite> = batch
        .entries
        .iter()
        .filter_map(|e| e.write.as_ref())
        .collect();
    writes.sort_by_key(|w| w.task_id);
    let mut attempts: Vec<&AttemptRow> = batch
        .entries
        .iter()
        .flat_map(|e| e.attempts.iter())
        .collect();
    attempts.sort_by_key(|a| (a.task_id, a.generation, a.attempt));
    let ids: Vec<TaskId> = writes.iter().map(|w| w.task_id).collect();
    let mut tx = pool.begin().await?;
    let tokens = dispatch_store::tasks::upsert_batch(&mut tx, &writes).await?;
    let token_of: HashMap<TaskId, u64> = ids.iter().copied().zip(tokens).collect();
    // A SCHEDULED task (or a retry waiting in MySQL) keeps its trace context until the scheduler
    // publishes it. A backstop wait does not: its retry record carries the trace.
    let scheduled: Vec<(TaskId, &[(String, String)])> = batch
        .entries
        .iter()
        .filter_map(|e| {
            let w = e.write.as_ref()?;
            let waits = w.state == TaskState::Scheduled || e.retry_due.is_some_and(|d| !d.backstop);
            (waits && !e.trace.is_empty()).then_some((w.task_id, e.trace.as_slice()))
        })
        .collect();
    dispatch_store::trace_context::set(&mut tx, &scheduled).await?;
    dispatch_store::attempts::insert_batch(&mut tx, &attempts).await?;
    let mut stored: HashMap<TaskId, pb::Task> = HashMap::default();
    for s in dispatch_store::tasks::snapshots(&mut *tx, &ids).await? {
        let Ok(id) = s.task.task_id.parse::<TaskId>() else {
            continue;
        };
        if token_of.get(&id) == Some(&s.write_token) {
            stored.insert(id, s.task);
        } else {
            metrics::write_fenced();
        }
    }
    let due: Vec<_> = batch
        .entries
        .iter()
        .filter_map(|e| {
            let w = e.write.as_ref()?;
            let d = e.retry_due?;
            stored
                .contains_key(&w.task_id)
                .then_some((w.task_id, w.version, d.at, d.backstop))
        })
        .collect();
    dispatch_store::scheduler::set_retry_due(&mut tx, &due).await?;
    tx.commit().await?;
    Ok(batch
        .entries
        .iter()
        .map(|e| e.write.as_ref().and_then(|w| stored.remove(&w.task_id)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use futures::poll;
    use std::task::Poll;

    fn write(id: TaskId, state: TaskState, attempt: u32) -> TaskWrite {
        TaskWrite {
            payload: Vec::new(),
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..dispatch_testkit::task_write(id, "acme", state, attempt)
        }
    }

    fn req(w: TaskWrite) -> (WriteRequest, Committed) {
        let (tx, rx) = oneshot::channel();
        (
            WriteRequest {
                write: w,
                attempt: None,
                trace: Vec::new(),
                done: Some(tx),
                retry_due: None,
                claimed: None,
            },
            rx,
        )
    }

    #[test]
    fn a_claim_holds_only_when_the_row_carries_its_version() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut batch = Batch::default();
        let mut claims = Vec::new();
        for (id, extra) in [(a, None), (b, Some(TaskState::Cancelled))] {
            let w = write(id, TaskState::Running, 2);
            let (tx, rx) = oneshot::channel();
            let (mut r, _) = req(w.clone());
            r.claimed = Some((w.version, tx));
            batch.add(r);
            if let Some(state) = extra {
                batch.add(req(write(id, state, 0)).0);
            }
            claims.push(rx);
        }
        let landed: Landed = batch
            .entries
            .iter()
            .map(|e| {
                let w = e.write.as_ref().expect("write");
                Some(pb::Task {
                    version: w.version,
                    ..Default::default()
                })
            })
            .collect();
        release_claims(&mut batch, &landed);
        let mut got = claims
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("released"));
        assert_eq!(got.next(), Some(true), "its RUNNING is the row");
        assert_eq!(got.next(), Some(false), "a cancel in the same batch won");
    }

    #[test]
    fn only_an_unawaited_start_is_carried_and_only_once() {
        let (start, claim, done, retry) =
            (TaskId::new(), TaskId::new(), TaskId::new(), TaskId::new());
        let mut b = Batch::default();
        b.add(req(write(start, TaskState::Running, 1)).0);
        let (mut c, _) = req(write(claim, TaskState::Running, 2));
        let (tx, _rx) = oneshot::channel();
        c.claimed = Some((c.write.version, tx));
        b.add(c);
        b.add(req(write(done, TaskState::Succeeded, 1)).0);
        let (mut r, _) = req(write(retry, TaskState::Running, 1));
        r.retry_due = Some(RetryDue {
            at: Utc::now(),
            backstop: false,
        });
        b.add(r);
        let mut carried = b.carry_starts();
        let ids = |b: &Batch| -> Vec<TaskId> {
            b.entries
                .iter()
                .filter_map(|e| e.write.as_ref().map(|w| w.task_id))
                .collect()
        };
        assert_eq!(ids(&carried), vec![start]);
        assert_eq!(ids(&b), vec![claim, done, retry]);
        assert_eq!(
            b.index.get(&retry),
            Some(&2),
            "the index follows the entries"
        );
        // Its outcome joins it in the next batch: one row.
        carried.add(req(write(start, TaskState::Succeeded, 1)).0);
        assert_eq!(carried.len(), 1);
        assert_eq!(
            carried.entries[0].write.as_ref().map(|w| w.state),
            Some(TaskState::Succeeded)
        );
        // A start that another write (a cancel's placeholder) coalesced into is not held back.
        let mut joined = Batch::default();
        let other = TaskId::new();
        joined.add(req(write(other, TaskState::Running, 1)).0);
        let mut placeholder = write(other, TaskState::Cancelled, 0);
        placeholder.task_type = String::new();
        placeholder.tenant = "globex".into();
        joined.add(req(placeholder).0);
        assert_eq!(joined.carry_starts().len(), 0);
        assert_eq!(joined.len(), 1);
        // A start that was carried once commits with the next batch, outcome or not.
        let mut next = Batch::default();
        next.add(req(write(TaskId::new(), TaskState::Running, 1)).0);
        next.entries[0].carried = true;
        assert_eq!(next.carry_starts().len(), 0);
        assert_eq!(next.len(), 1);
    }

    #[test]
    fn writes_of_tasks_in_an_uncommitted_batch_wait_for_the_next_one() {
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        let uncommitted = std::sync::Arc::new(Uncommitted::default());
        let mut first = Batch::default();
        first.add(req(write(b, TaskState::Running, 1)).0);
        let in_flight = InFlight::begin(&uncommitted, &first);

        let mut batch = Batch::default();
        for id in [a, b, c] {
            batch.add(req(write(id, TaskState::Succeeded, 1)).0);
        }
        let mut carried = Batch::default();
        carried.add(req(write(TaskId::new(), TaskState::Running, 1)).0);
        batch.hold_uncommitted(&uncommitted, &mut carried);
        let ids = |b: &Batch| -> Vec<TaskId> { b.task_ids().collect() };
        assert_eq!(ids(&batch), vec![a, c]);
        assert_eq!(
            batch.index.get(&c),
            Some(&1),
            "the index follows the entries"
        );
        assert_eq!(ids(&carried)[1], b);
        // A later write of the held task coalesces into it.
        carried.add(req(write(b, TaskState::Succeeded, 1)).0);
        assert_eq!(carried.len(), 2);

        // Once the first batch committed, nothing is held.
        drop(in_flight);
        let mut again = std::mem::take(&mut carried);
        let mut next = Batch::default();
        again.hold_uncommitted(&uncommitted, &mut next);
        assert_eq!(again.len(), 2);
        assert_eq!(next.len(), 0);
        assert!(uncommitted.lock().expect("lock").is_empty());
    }

    #[test]
    fn coalescing_keeps_the_highest_version_and_every_waiter() {
        let id = TaskId::new();
        let mut b = Batch::default();
        let (r1, _w1) = req(write(id, TaskState::Running, 1));
        let (r2, _w2) = req(write(id, TaskState::Cancelled, 0));
        let (r3, _w3) = req(write(id, TaskState::Succeeded, 1));
        b.add(r1);
        b.add(r2);
        b.add(r3);
        let (r4, _w4) = req(write(TaskId::new(), TaskState::Running, 1));
        b.add(r4);
        assert_eq!(b.len(), 2);
        let e = &b.entries[0];
        assert_eq!(
            e.write.as_ref().map(|w| w.state),
            Some(TaskState::Cancelled)
        );
        assert_eq!(e.waiters.len(), 3);
    }

    #[test]
    fn a_foreign_placeholder_never_wins_and_an_own_one_takes_the_data() {
        let id = TaskId::new();
        let placeholder = |tenant: &str| {
            let mut w = write(id, TaskState::Cancelled, 0);
            w.tenant = tenant.into();
            w.task_type = String::new();
            w.payload = Vec::new();
            w
        };
        let mut real = write(id, TaskState::Succeeded, 1);
        real.payload = b"data".to_vec();
        let mut b = Batch::default();
        b.add(req(placeholder("globex")).0);
        b.add(req(real.clone()).0);
        b.add(req(placeholder("globex")).0);
        let w = b.entries[0].write.as_ref().expect("write");
        assert_eq!((w.tenant.as_str(), w.state), ("acme", TaskState::Succeeded));

        let mut b = Batch::default();
        b.add(req(real).0);
        b.add(req(placeholder("acme")).0);
        let w = b.entries[0].write.as_ref().expect("write");
        assert_eq!(w.state, TaskState::Cancelled);
        assert_eq!(
            (w.task_type.as_str(), w.payload.as_slice()),
            ("noop", &b"data"[..])
        );
    }

    // Paused clock, futures polled by hand: nothing here awaits a timer, so time moves only by
    // `advance`, a window is exactly its length, and one closing 1 ms early or late fails a poll.

    const WINDOW: Duration = Duration::from_millis(20);
    const MS: Duration = Duration::from_millis(1);

    fn running() -> WriteRequest {
        req(write(TaskId::new(), TaskState::Running, 1)).0
    }

    /// A batch opened by one write, and the channel later writes come on.
    fn a_batch_of_one() -> (
        mpsc::Sender<WriteRequest>,
        mpsc::Receiver<WriteRequest>,
        Batch,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let mut batch = Batch::default();
        batch.add(running());
        (tx, rx, batch)
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_stays_open_for_its_window_and_takes_what_arrives_in_it() {
        let (tx, mut rx, mut batch) = a_batch_of_one();
        {
            let mut fill = std::pin::pin!(fill(&mut rx, &mut batch, 10, WINDOW));
            assert!(poll!(&mut fill).is_pending());
            tokio::time::advance(WINDOW / 2).await;
            tx.send(running()).await.expect("send");
            assert!(poll!(&mut fill).is_pending(), "a write does not close it");
            tokio::time::advance(WINDOW / 2 - MS).await;
            assert!(
                poll!(&mut fill).is_pending(),
                "open 1 ms before its window ends"
            );
            tokio::time::advance(MS).await;
            assert_eq!(poll!(&mut fill), Poll::Ready(true), "closed as it ends");
        }
        assert_eq!(
            batch.len(),
            2,
            "the write that arrived in the window joined it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_closes_at_once() {
        let (tx, mut rx, mut batch) = a_batch_of_one();
        for _ in 0..3 {
            tx.send(running()).await.expect("send");
        }
        let open = poll!(std::pin::pin!(fill(&mut rx, &mut batch, 3, WINDOW)));
        assert_eq!(open, Poll::Ready(true), "closed without waiting");
        assert_eq!(batch.len(), 3);
        assert!(
            rx.try_recv().is_ok(),
            "the write past max_rows waits for the next batch"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_channel_closes_the_last_batch() {
        let (tx, mut rx, mut batch) = a_batch_of_one();
        tx.send(running()).await.expect("send");
        drop(tx);
        let open = poll!(std::pin::pin!(fill(&mut rx, &mut batch, 10, WINDOW)));
        assert_eq!(open, Poll::Ready(false), "closed at once, as the last");
        assert_eq!(batch.len(), 2, "what was queued still joins it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_held_back_whole_gives_its_slot_up_for_one_window() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let uncommitted = std::sync::Arc::new(Uncommitted::default());
        let mut first = Batch::default();
        first.add(req(write(b, TaskState::Running, 1)).0);
        let _in_flight = InFlight::begin(&uncommitted, &first);
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let mut carried = Batch::default();

        // Some of it is left: it goes at once, with its slot.
        let mut batch = Batch::default();
        batch.add(req(write(a, TaskState::Succeeded, 1)).0);
        batch.add(req(write(b, TaskState::Succeeded, 1)).0);
        let slot = slots.clone().acquire_owned().await.expect("slot");
        let kept = poll!(std::pin::pin!(hold_back(
            &mut batch,
            &uncommitted,
            &mut carried,
            slot,
            WINDOW
        )));
        assert!(
            matches!(kept, Poll::Ready(Some(_))),
            "goes at once, with its slot"
        );
        drop(kept);
        assert_eq!((batch.len(), carried.len()), (1, 1));

        // All of it waits: the slot is free meanwhile, and the loop goes on one window later.
        let mut batch = std::mem::take(&mut carried);
        let slot = slots.clone().acquire_owned().await.expect("slot");
        {
            let mut held = std::pin::pin!(hold_back(
                &mut batch,
                &uncommitted,
                &mut carried,
                slot,
                WINDOW
            ));
            assert!(poll!(&mut held).is_pending());
            assert_eq!(
                slots.available_permits(),
                1,
                "the slot is free while it waits"
            );
            tokio::time::advance(WINDOW - MS).await;
            assert!(
                poll!(&mut held).is_pending(),
                "waiting 1 ms before the window ends"
            );
            tokio::time::advance(MS).await;
            assert!(
                matches!(poll!(&mut held), Poll::Ready(None)),
                "done as it ends"
            );
        }
        assert_eq!(
            (batch.len(), carried.len()),
            (0, 1),
            "the write is carried on"
        );
    }
}
