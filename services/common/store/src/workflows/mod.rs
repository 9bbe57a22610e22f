//! Workflows: their rows, the gateway's atomic insert and the reader's view here; the processor's
//! advancer queries in [`advance`] (re-exported, so callers name them `workflows::...`).
//!
//! A workflow is a `workflows` row, one ordinary `tasks` row per node (with `workflow_id`), a
//! `workflow_nodes` row per node (name, position) and a `workflow_edges` row per dependency.
//! [`insert`] writes all of them in one transaction: nodes without dependencies as SCHEDULED
//! (due at their `run_at`, else at once: the scheduler publishes them), the others WAITING.
//! The advancer finds WAITING nodes whose dependencies decided them ([`resolvable`]): all
//! finished (released with [`release`], a conditional update from `waiting`), or one ended DEAD
//! or CANCELLED behind a `cancel` edge (the advancer produces a CANCEL for it and records it with
//! [`mark_cancel_sent`]). Every statement is conditional on the state it moves from, so two
//! advancers at once do nothing twice that matters.
//!
//! Over 400 lines only by its unit tests (the code ends near line 397); the accept path would
//! move to a module of its own first, as the advancer's reads did.

mod advance;

pub use advance::*;

use chrono::{DateTime, Utc};
use dispatch_core::workflow::OnFailure;
use dispatch_core::{NewTask, TaskId, TaskState};
use dispatch_proto::v1 as pb;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::tasks::text;
use crate::{Result, StoreError};

/// Rows per multi-row insert.
const CHUNK: usize = 250;

/// A node's id may have a row before its workflow is submitted: the placeholder a CancelTask of
/// that id left (no type, the canceller's tenant; the ids are derived, so they can be known
/// early). Another tenant's placeholder is replaced by the node, as the writer replaces one by
/// its task's first write; the owner's own keeps its CANCELLED state and takes the node's data,
/// so the node is cancelled as its owner asked. (Without this the insert failed on the primary
/// key for ever.) Conditions read `tenant` and `task_type`, so those are assigned last.
const PLACEHOLDERS: &str = " ON DUPLICATE KEY UPDATE \
    state = IF(task_type = '' AND tenant <> VALUES(tenant), VALUES(state), state), \
    version = IF(task_type = '' AND tenant <> VALUES(tenant), VALUES(version), version), \
    last_error = IF(task_type = '' AND tenant <> VALUES(tenant), VALUES(last_error), last_error), \
    finished_at = IF(task_type = '' AND tenant <> VALUES(tenant), NULL, finished_at), \
    generation = IF(task_type = '' AND tenant <> VALUES(tenant), 0, generation), \
    lease_epoch = IF(task_type = '' AND tenant <> VALUES(tenant), 0, lease_epoch), \
    business_key = IF(task_type = '', VALUES(business_key), business_key), \
    priority = IF(task_type = '', VALUES(priority), priority), \
    payload = IF(task_type = '', VALUES(payload), payload), \
    max_attempts = IF(task_type = '', VALUES(max_attempts), max_attempts), \
    initial_backoff_ms = IF(task_type = '', VALUES(initial_backoff_ms), initial_backoff_ms), \
    max_backoff_ms = IF(task_type = '', VALUES(max_backoff_ms), max_backoff_ms), \
    run_at = IF(task_type = '', VALUES(run_at), run_at), \
    deadline_at = IF(task_type = '', VALUES(deadline_at), deadline_at), \
    timeout_ms = IF(task_type = '', VALUES(timeout_ms), timeout_ms), \
    created_at = IF(task_type = '', VALUES(created_at), created_at), \
    updated_at = IF(task_type = '', VALUES(updated_at), updated_at), \
    write_token = IF(task_type = '', VALUES(write_token), write_token), \
    workflow_id = IF(task_type = '', VALUES(workflow_id), workflow_id), \
    tenant = IF(task_type = '', VALUES(tenant), tenant), \
    task_type = IF(task_type = '', VALUES(task_type), task_type)";

/// One node of a workflow to insert.
#[derive(Debug, Clone)]
pub struct NewNode {
    /// Its name in the workflow.
    pub name: String,
    /// The task (its `task_id` the node's id, no idempotency key).
    pub task: NewTask,
    /// Whether it waits for nothing.
    pub root: bool,
}

/// A workflow to insert.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    /// Its id.
    pub workflow_id: TaskId,
    /// Owner.
    pub tenant: String,
    /// The submit's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Nodes, in the request's order.
    pub nodes: Vec<NewNode>,
    /// `(node, depends_on, on_failure)` by node index.
    pub edges: Vec<(usize, usize, OnFailure)>,
    /// What it was submitted with (`dispatch_core::workflow::fingerprint`), compared when its
    /// idempotency key comes again.
    pub fingerprint: [u8; 32],
}

/// What [`insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Everything was written.
    New,
    /// A workflow with this id exists.
    Duplicate {
        /// Its nodes' `(name, task id)` in order.
        nodes: Vec<(String, TaskId)>,
        /// What it was submitted with (`None`: stored before fingerprints were).
        fingerprint: Option<Vec<u8>>,
    },
}

pub(crate) fn id_of(r: &sqlx::mysql::MySqlRow, col: &str) -> Result<TaskId> {
    TaskId::from_slice(r.try_get::<Vec<u8>, _>(col)?.as_slice())
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

/// Writes the workflow, its tasks, nodes and edges in one transaction, or nothing: a workflow
/// whose id exists already (a repeated submit with the same idempotency key) is answered with
/// that workflow's nodes and changes nothing.
///
/// # Errors
/// Database errors.
pub async fn insert(pool: &MySqlPool, wf: &NewWorkflow, now: DateTime<Utc>) -> Result<Inserted> {
    let mut tx = pool.begin().await?;
    let head = sqlx::query(
        "INSERT INTO workflows (workflow_id, tenant, idempotency_key, nodes, created_at, fingerprint) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(wf.workflow_id.as_bytes().as_slice())
    .bind(&wf.tenant)
    .bind(&wf.idempotency_key)
    .bind(wf.nodes.len() as u32)
    .bind(now)
    .bind(wf.fingerprint.as_slice())
    .execute(&mut *tx)
    .await;
    match head {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            tx.rollback().await?;
            let fingerprint: Option<Option<Vec<u8>>> =
                sqlx::query_scalar("SELECT fingerprint FROM workflows WHERE workflow_id = ?")
                    .bind(wf.workflow_id.as_bytes().as_slice())
                    .fetch_optional(pool)
                    .await?;
            return Ok(Inserted::Duplicate {
                nodes: node_ids(pool, wf.workflow_id).await?,
                fingerprint: fingerprint.flatten(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    for chunk in wf.nodes.chunks(CHUNK) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, \
             attempts, max_attempts, initial_backoff_ms, max_backoff_ms, generation, idempotency_key, \
             run_at, deadline_at, timeout_ms, last_error, version, lease_epoch, write_token, \
             created_at, updated_at, workflow_id) ",
        );
        qb.push_values(chunk, |mut b, n| {
            let t = &n.task;
            let (state, run_at) = if n.root {
                (TaskState::Scheduled, Some(t.run_at.unwrap_or(now)))
            } else {
                (TaskState::Waiting, t.run_at)
            };
            b.push_bind(t.task_id.as_bytes().to_vec())
                .push_bind(t.tenant.as_str().to_owned())
                .push_bind(t.business_key.as_str().to_owned())
                .push_bind(t.task_type.as_str().to_owned())
                .push_bind(t.priority.to_proto() as i32 as u8)
                .push_bind(t.payload.as_bytes().to_vec())
                .push_bind(state.as_str())
                .push_bind(0u32)
                .push_bind(t.retry.max_attempts)
                .push_bind(t.retry.initial_backoff_ms)
                .push_bind(t.retry.max_backoff_ms)
                .push_bind(0u32)
                .push_bind(None::<String>)
                .push_bind(run_at)
                .push_bind(t.deadline)
                .push_bind(t.timeout_ms)
                .push_bind("")
                .push_bind(state.version(0, 0))
                .push_bind(0u64)
                .push_bind(rand::random::<u64>() | 1)
                .push_bind(now)
                .push_bind(now)
                .push_bind(wf.workflow_id.as_bytes().to_vec());
        });
        qb.push(PLACEHOLDERS);
        qb.build().execute(&mut *tx).await?;
    }
    let positioned: Vec<(usize, &NewNode)> = wf.nodes.iter().enumerate().collect();
    for chunk in positioned.chunks(CHUNK) {
        let mut qb: QueryBuilder<MySql> =
            QueryBuilder::new("INSERT INTO workflow_nodes (task_id, workflow_id, name, position) ");
        qb.push_values(chunk, |mut b, (i, n)| {
            b.push_bind(n.task.task_id.as_bytes().to_vec())
                .push_bind(wf.workflow_id.as_bytes().to_vec())
                .push_bind(n.name.clone())
                .push_bind(*i as u32);
        });
        qb.build().execute(&mut *tx).await?;
    }
    for chunk in wf.edges.chunks(CHUNK) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO workflow_edges (task_id, depends_on, workflow_id, on_failure) ",
        );
        qb.push_values(chunk, |mut b, (node, dep, on_failure)| {
            b.push_bind(wf.nodes[*node].task.task_id.as_bytes().to_vec())
                .push_bind(wf.nodes[*dep].task.task_id.as_bytes().to_vec())
                .push_bind(wf.workflow_id.as_bytes().to_vec())
                .push_bind(on_failure.as_str());
        });
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Inserted::New)
}

/// The `(name, task id)` of every node of `workflow`, in position order.
///
/// # Errors
/// Database errors.
pub async fn node_ids(pool: &MySqlPool, workflow: TaskId) -> Result<Vec<(String, TaskId)>> {
    sqlx::query("SELECT name, task_id FROM workflow_nodes WHERE workflow_id = ? ORDER BY position")
        .bind(workflow.as_bytes().as_slice())
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((text(r, "name")?, id_of(r, "task_id")?)))
        .collect()
}

/// What [`request_cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRequest {
    /// No workflow of this id belongs to the tenant.
    NotFound,
    /// Recorded; this many nodes had not finished.
    Accepted(u64),
    /// Every node had finished already: nothing to cancel.
    Finished,
}

/// Records a CancelWorkflow of `tenant`'s workflow (the first reason stays); the processor's
/// advancer cancels its unfinished nodes.
///
/// # Errors
/// Database errors.
pub async fn request_cancel(
    pool: &MySqlPool,
    tenant: &str,
    workflow: TaskId,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<CancelRequest> {
    // Compared here, byte for byte: the column compares without letter case.
    let owner: Option<String> =
        sqlx::query_scalar("SELECT tenant FROM workflows WHERE workflow_id = ?")
            .bind(workflow.as_bytes().as_slice())
            .fetch_optional(pool)
            .await?;
    if owner.as_deref() != Some(tenant) {
        return Ok(CancelRequest::NotFound);
    }
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM workflow_nodes n JOIN tasks t ON t.task_id = n.task_id \
         WHERE n.workflow_id = ? AND t.state NOT IN ('succeeded', 'dead', 'cancelled')",
    )
    .bind(workflow.as_bytes().as_slice())
    .fetch_one(pool)
    .await?;
    if unfinished == 0 {
        return Ok(CancelRequest::Finished);
    }
    sqlx::query(
        "UPDATE workflows SET cancel_reason = IF(cancel_requested_at IS NULL, ?, cancel_reason), \
         cancel_requested_at = COALESCE(cancel_requested_at, ?), cancel_done_at = NULL \
         WHERE workflow_id = ?",
    )
    .bind(reason.chars().take(512).collect::<String>())
    .bind(now)
    .bind(workflow.as_bytes().as_slice())
    .execute(pool)
    .await?;
    Ok(CancelRequest::Accepted(unfinished as u64))
}

/// The workflow as GetWorkflow shows it, if it exists (any tenant's: the caller checks).
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn get(pool: &MySqlPool, workflow: TaskId) -> Result<Option<pb::Workflow>> {
    let Some(head) = sqlx::query(
        "SELECT tenant, idempotency_key, created_at, cancel_requested_at FROM workflows \
         WHERE workflow_id = ?",
    )
    .bind(workflow.as_bytes().as_slice())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT n.name, n.task_id, t.state, t.business_key, t.task_type, t.attempts, t.last_error, \
         t.finished_at FROM workflow_nodes n LEFT JOIN tasks t ON t.task_id = n.task_id \
         WHERE n.workflow_id = ? ORDER BY n.position",
    )
    .bind(workflow.as_bytes().as_slice())
    .fetch_all(pool)
    .await?;
    let edges = sqlx::query(
        "SELECT e.task_id, d.name, e.on_failure FROM workflow_edges e \
         JOIN workflow_nodes d ON d.task_id = e.depends_on WHERE e.workflow_id = ?",
    )
    .bind(workflow.as_bytes().as_slice())
    .fetch_all(pool)
    .await?;
    let mut deps: std::collections::HashMap<TaskId, Vec<pb::WorkflowDependency>> =
        std::collections::HashMap::new();
    for e in &edges {
        let on_failure = OnFailure::parse(&text(e, "on_failure")?)
            .ok_or_else(|| StoreError::Corrupt("workflow_edges.on_failure".into()))?;
        deps.entry(id_of(e, "task_id")?)
            .or_default()
            .push(pb::WorkflowDependency {
                name: text(e, "name")?,
                on_failure: on_failure.to_proto() as i32,
            });
    }
    let mut nodes = Vec::with_capacity(rows.len());
    for r in &rows {
        let task_id = id_of(r, "task_id")?;
        // A node whose task row is gone was purged after it finished (retention).
        let state = r
            .try_get::<Option<String>, _>("state")?
            .map(|s| {
                TaskState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("state {s:?}")))
            })
            .transpose()?;
        let mut node_deps = deps.remove(&task_id).unwrap_or_default();
        node_deps.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.push(pb::WorkflowNodeStatus {
            name: text(r, "name")?,
            task_id: task_id.to_string(),
            state: state.map_or(pb::TaskState::Unspecified, TaskState::to_proto) as i32,
            depends_on: node_deps,
            business_key: r
                .try_get::<Option<Vec<u8>>, _>("business_key")?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            task_type: r
                .try_get::<Option<String>, _>("task_type")?
                .unwrap_or_default(),
            attempts: r.try_get::<Option<u32>, _>("attempts")?.unwrap_or(0),
            last_error: r
                .try_get::<Option<Vec<u8>>, _>("last_error")?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            finished_at: r
                .try_get::<Option<DateTime<Utc>>, _>("finished_at")?
                .map(dispatch_core::time::to_proto),
        });
    }
    let cancel_requested = head
        .try_get::<Option<DateTime<Utc>>, _>("cancel_requested_at")?
        .is_some();
    let states: Vec<Option<TaskState>> = nodes
        .iter()
        .map(|n| {
            pb::TaskState::try_from(n.state)
                .ok()
                .and_then(TaskState::from_proto)
        })
        .collect();
    Ok(Some(pb::Workflow {
        workflow_id: workflow.to_string(),
        tenant: head.try_get("tenant")?,
        state: workflow_state(&states, cancel_requested) as i32,
        idempotency_key: head
            .try_get::<Option<String>, _>("idempotency_key")?
            .unwrap_or_default(),
        created_at: Some(dispatch_core::time::to_proto(head.try_get("created_at")?)),
        cancel_requested,
        nodes,
    }))
}

/// A workflow's state from its nodes' (`None`: purged, so finished).
pub fn workflow_state(nodes: &[Option<TaskState>], cancel_requested: bool) -> pb::WorkflowState {
    if nodes.iter().flatten().any(|s| !s.is_terminal()) {
        pb::WorkflowState::Running
    } else if nodes.iter().flatten().all(|s| *s == TaskState::Succeeded) {
        // Every node succeeded, a cancel that came too late notwithstanding.
        pb::WorkflowState::Succeeded
    } else if cancel_requested {
        pb::WorkflowState::Cancelled
    } else {
        pb::WorkflowState::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn a_workflow_state_follows_its_nodes() {
        use pb::WorkflowState as W;
        assert_eq!(
            workflow_state(&[Some(Succeeded), Some(Running)], false),
            W::Running
        );
        assert_eq!(
            workflow_state(&[Some(Succeeded), None], false),
            W::Succeeded
        );
        assert_eq!(
            workflow_state(&[Some(Succeeded), Some(Dead)], false),
            W::Failed
        );
        assert_eq!(workflow_state(&[Some(Cancelled)], true), W::Cancelled);
        assert_eq!(workflow_state(&[Some(Succeeded)], true), W::Succeeded);
        assert_eq!(workflow_state(&[Some(Waiting)], true), W::Running);
    }
}
