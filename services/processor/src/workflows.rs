//! The workflow advancer: moves WAITING workflow nodes on once their dependencies decide them.
//!
//! A node with dependencies is stored WAITING by the gateway (`SubmitWorkflow`). Each pass:
//! 1. carries out CancelWorkflow requests: a CANCEL record for every unfinished node of the
//!    workflow, produced on the node's own partition like a CancelTask's, so the consumer writes
//!    CANCELLED (and its event) through the fenced writer; the node is marked `cancel_sent_at`,
//!    which keeps it from ever being released;
//! 2. finds WAITING nodes whose dependencies decided them (`dispatch_store::workflows::resolvable`):
//!    - every dependency finished and none failed behind a `cancel` edge: released to SCHEDULED
//!      (a conditional update from `waiting`), then the scheduler is woken to publish it;
//!    - a dependency ended DEAD or CANCELLED behind a `cancel` edge: a CANCEL record as above
//!      (produced again after `resend_after` if the node is still WAITING: the record was lost).
//!
//! A pass over every WAITING node runs every `interval` (a sweep: its cost grows with their
//! number), and a pass over one workflow whenever this instance commits a state of one of its
//! nodes ([`Advancer::waker`]; a CANCEL of a node carries its workflow too), so a chain advances,
//! and a failure cascades down it, at the pace of its tasks rather than of the interval. The sweep
//! catches what no wake reported: CancelWorkflow requests, a node cancelled through the gateway,
//! an instance that died between a commit and its pass. Any number of instances may run it:
//! every move is conditional on the state it leaves, and a repeated CANCEL is a no-op for the
//! consumer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::{BusinessKey, Envelope, TaskId, Tenant, Topics};
use dispatch_store::MySqlPool;
use dispatch_store::workflows::{self, NodeCancel, Resolved};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, NodeCancelCause};
use crate::produce::{Out, Producer, each_delivered};

/// Shortest pause between two passes. A pass reads every WAITING node's edges; while many nodes
/// commit, back-to-back wakes would run passes without pause. 10 ms bounds them at 100/s and adds
/// at most that to each step of a chain.
const MIN_GAP: Duration = Duration::from_millis(10);

/// How long a pass waits for one CANCEL record's acknowledgement.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Wakes an advancer (or the scheduler): cheap, callable from any task.
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<WakerInner>);

#[derive(Debug, Default)]
struct WakerInner {
    notify: Notify,
    /// Workflows whose nodes' states committed since the last pass.
    workflows: parking_lot::Mutex<HashSet<TaskId>>,
}

impl Waker {
    /// Asks for a pass soon (several calls before it starts make one pass).
    pub fn wake(&self) {
        self.0.notify.notify_one();
    }

    /// Asks for a pass over `workflow` soon.
    pub fn wake_for(&self, workflow: TaskId) {
        self.0.workflows.lock().insert(workflow);
        self.wake();
    }

    /// Resolves at the next wake (or at once if one came since the last).
    pub async fn woken(&self) {
        self.0.notify.notified().await;
    }

    /// The workflows woken for since the last call.
    fn take(&self) -> Vec<TaskId> {
        self.0.workflows.lock().drain().collect()
    }
}

/// The advancer's wiring.
pub struct Advancer {
    /// Pool.
    pub pool: MySqlPool,
    /// Producer of CANCEL records.
    pub producer: Producer,
    /// Topic names.
    pub topics: Topics,
    /// Longest pause between passes.
    pub interval: Duration,
    /// Nodes decided per round.
    pub batch_size: u32,
    /// A node still WAITING this long after its CANCEL was produced gets another.
    pub resend_after: Duration,
    /// Wakes this advancer (the processor calls it when a workflow node's state commits).
    pub waker: Waker,
    /// Wakes the scheduler after a release.
    pub scheduler: Waker,
    /// Stops the loop.
    pub stop: CancellationToken,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Nodes released to SCHEDULED.
    pub released: u64,
    /// CANCEL records produced.
    pub cancels: u64,
}

impl Advancer {
    /// Runs until `stop`: a pass over every workflow each `interval`, and in between a pass over
    /// the workflows woken for.
    pub async fn run(self) {
        let mut last_sweep: Option<Instant> = None;
        loop {
            let sweep = last_sweep.is_none_or(|at| at.elapsed() >= self.interval);
            let scope = self.waker.take();
            let scope = (!sweep).then_some(scope.as_slice());
            match self.pass(scope).await {
                Ok(p) if p.released > 0 || p.cancels > 0 => {
                    tracing::debug!(
                        released = p.released,
                        cancels = p.cancels,
                        sweep,
                        "workflows advanced"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::workflow_pass_failed();
                    tracing::warn!(error = %e, "workflow advancer pass failed");
                }
            }
            if sweep {
                last_sweep = Some(Instant::now());
            }
            let next_sweep = self
                .interval
                .saturating_sub(last_sweep.map_or(Duration::ZERO, |at| at.elapsed()));
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.waker.woken() => {}
                () = tokio::time::sleep(next_sweep) => {}
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(MIN_GAP) => {}
            }
        }
        tracing::info!("workflow advancer stopped");
    }

    /// One pass over the workflows in `scope` (every workflow when `None`): cancel requests
    /// (always all of them: one indexed read), then rounds of decided nodes until none is left.
    ///
    /// # Errors
    /// Database errors (Kafka failures leave the node for the next pass).
    pub async fn pass(&self, scope: Option<&[TaskId]>) -> anyhow::Result<Pass> {
        let mut pass = Pass::default();
        for (workflow, reason) in workflows::cancel_requests(&self.pool, 16).await? {
            let nodes = workflows::unfinished_nodes(&self.pool, workflow, &reason).await?;
            // Marked before the records are produced: a node marked is never released, and one
            // whose record is lost is sent another `resend_after` later.
            let ids: Vec<TaskId> = nodes.iter().map(|n| n.task_id).collect();
            workflows::mark_cancel_sent(&self.pool, &ids).await?;
            let sent = self.send_cancels(&nodes).await;
            metrics::workflow_nodes_cancelled(NodeCancelCause::Workflow, sent.len());
            pass.cancels += sent.len() as u64;
            if sent.len() == nodes.len() {
                workflows::cancel_done(&self.pool, workflow, Utc::now()).await?;
            }
        }
        #[cfg(feature = "fault-release-early")]
        {
            pass.released += self.release_early().await?;
        }
        loop {
            let decided = {
                let mut conn = self.pool.acquire().await?;
                workflows::resolvable(&mut conn, self.batch_size, self.resend_after, scope).await?
            };
            if decided.is_empty() {
                break;
            }
            let full = decided.len() >= self.batch_size as usize;
            let mut release = Vec::new();
            let mut cancel = Vec::new();
            for d in decided {
                match d {
                    Resolved::Release(id) => release.push(id),
                    Resolved::Cancel(c) => cancel.push(c),
                }
            }
            let released = workflows::release(&self.pool, &release).await?;
            if released > 0 {
                metrics::workflow_nodes_released(released);
                self.scheduler.wake();
            }
            let ids: Vec<TaskId> = cancel.iter().map(|n| n.task_id).collect();
            workflows::mark_cancel_sent(&self.pool, &ids).await?;
            let sent = self.send_cancels(&cancel).await;
            metrics::workflow_nodes_cancelled(NodeCancelCause::Dependency, sent.len());
            pass.released += released;
            pass.cancels += sent.len() as u64;
            // What this round moved decides nothing else until it finishes (a released node runs,
            // a cancelled one is written by the consumer): another round only for a full batch,
            // and only when this one moved something (else the same rows would come back).
            let moved = released > 0 || !ids.is_empty();
            if !full || !moved || self.stop.is_cancelled() {
                break;
            }
        }
        Ok(pass)
    }

    /// The fault build's release: WAITING nodes with ANY finished dependency, not every one.
    #[cfg(feature = "fault-release-early")]
    async fn release_early(&self) -> anyhow::Result<u64> {
        let ids: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT DISTINCT w.task_id FROM tasks w \
             JOIN workflow_nodes n ON n.task_id = w.task_id \
             JOIN workflow_edges e ON e.task_id = w.task_id \
             JOIN tasks d ON d.task_id = e.depends_on \
             WHERE w.state = 'waiting' AND n.cancel_sent_at IS NULL \
               AND d.state IN ('succeeded', 'dead', 'cancelled') LIMIT ?",
        )
        .bind(self.batch_size)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<TaskId> = ids
            .iter()
            .filter_map(|b| TaskId::from_slice(b).ok())
            .collect();
        let released = workflows::release(&self.pool, &ids).await?;
        if released > 0 {
            metrics::workflow_nodes_released(released);
            self.scheduler.wake();
        }
        Ok(released)
    }

    /// Produces a CANCEL for each node; returns the ids whose record was acknowledged.
    async fn send_cancels(&self, nodes: &[NodeCancel]) -> Vec<TaskId> {
        let sends = nodes.iter().map(|n| async move {
            let env = match cancel_envelope(n) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(task_id = %n.task_id, error = %e, "workflow node row does not make a cancel");
                    return None;
                }
            };
            let topic = self.topics.tasks(env.priority);
            let (value, headers) = (env.encode(), env.headers());
            let send = self
                .producer
                .send("tasks", Out::new(&topic, env.key(), &value, &headers));
            // Bounded: a partition without a leader must not hold up the pass (releases and
            // every other workflow's cancels); the node is sent again later.
            match tokio::time::timeout(SEND_TIMEOUT, send)
                .await
                .unwrap_or_else(|_| Err(rdkafka::error::KafkaError::Canceled))
            {
                Ok(_) => Some(n.task_id),
                Err(e) => {
                    tracing::warn!(task_id = %n.task_id, error = %e, "cannot produce a workflow node's cancel; sent again later");
                    None
                }
            }
        });
        each_delivered(sends).await
    }
}

/// The CANCEL record of a node: on its own partition (its business key, its priority's topic),
/// so it is ordered with the node's SUBMIT if the node was released meanwhile.
fn cancel_envelope(n: &NodeCancel) -> Result<Envelope, String> {
    let mut env = Envelope::cancel(
        n.task_id,
        Tenant::parse(&n.tenant)?,
        BusinessKey::parse(&n.business_key)?,
        n.priority,
        n.reason.clone(),
    );
    env.workflow_id = Some(n.workflow_id);
    Ok(env)
}
