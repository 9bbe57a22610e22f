//! The processor's workflow advancer's queries: which WAITING nodes their dependencies decided
//! ([`resolvable`]), releasing them ([`release`]), marking the ones sent a CANCEL
//! ([`mark_cancel_sent`]), CancelWorkflow requests, and what a node's handler reads of its
//! dependencies ([`dependency_results`]). Every statement is conditional on the state it moves
//! from, so two advancers at once do nothing twice that matters.

use chrono::{DateTime, Utc};
use dispatch_core::{Priority, TaskId, TaskState};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use super::id_of;
use crate::tasks::{push_ids, text};
use crate::{Result, StoreError};

/// A WAITING node whose dependencies decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Every dependency finished, none failed behind a `cancel` edge: release it.
    Release(TaskId),
    /// A dependency ended DEAD or CANCELLED behind a `cancel` edge: cancel it.
    Cancel(NodeCancel),
}

/// What a CANCEL of a node needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCancel {
    /// The node's task.
    pub task_id: TaskId,
    /// Its workflow.
    pub workflow_id: TaskId,
    /// Owner.
    pub tenant: String,
    /// Record key.
    pub business_key: String,
    /// Its topic.
    pub priority: Priority,
    /// Why.
    pub reason: String,
}

fn node_cancel(r: &sqlx::mysql::MySqlRow, reason: String) -> Result<NodeCancel> {
    let priority: u8 = r.try_get("priority")?;
    Ok(NodeCancel {
        task_id: id_of(r, "task_id")?,
        workflow_id: id_of(r, "workflow_id")?,
        tenant: r.try_get("tenant")?,
        business_key: text(r, "business_key")?,
        priority: Priority::from_proto_i32(i32::from(priority)).map_err(StoreError::Corrupt)?,
        reason,
    })
}

/// Up to `limit` WAITING nodes whose dependencies decided them, of the workflows in `scope`
/// (all when `None`: a read of every WAITING node's edges, linear in their number). A node whose
/// CANCEL was produced less than `resend_after` ago is left out (its cancel is on its way); one
/// whose CANCEL was produced at all is never released.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn resolvable(
    conn: &mut sqlx::MySqlConnection,
    limit: u32,
    resend_after: std::time::Duration,
    scope: Option<&[TaskId]>,
) -> Result<Vec<Resolved>> {
    if scope.is_some_and(<[TaskId]>::is_empty) {
        return Ok(Vec::new());
    }
    // A sweep reads the WAITING rows through the tasks state index; a scoped pass reads its
    // workflows' nodes through theirs. (Driven from workflow_nodes, a sweep scanned every node
    // kept, finished ones included.)
    let from = match scope {
        None => "FROM tasks w STRAIGHT_JOIN workflow_nodes n ON n.task_id = w.task_id",
        Some(_) => "FROM workflow_nodes n JOIN tasks w ON w.task_id = n.task_id",
    };
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "SELECT w.task_id, w.workflow_id, w.tenant, w.business_key, w.priority, \
           CAST(COALESCE(SUM(d.state IS NOT NULL AND d.state NOT IN ('succeeded', 'dead', 'cancelled')), 0) AS SIGNED) AS open_deps, \
           CAST(MIN(CASE WHEN e.on_failure = 'cancel' AND d.state IN ('dead', 'cancelled') \
               THEN CONCAT(dn.name, ' ended ', d.state) END) AS BINARY) AS failed, \
           MAX(n.cancel_sent_at) AS cancel_sent_at, MAX(n.cancel_sends) AS cancel_sends \
         {from} \
         LEFT JOIN workflow_edges e ON e.task_id = n.task_id \
         LEFT JOIN tasks d ON d.task_id = e.depends_on \
         LEFT JOIN workflow_nodes dn ON dn.task_id = e.depends_on \
         WHERE w.state = 'waiting'"
    ));
    if let Some(ids) = scope {
        qb.push(" AND n.workflow_id IN (");
        push_ids(&mut qb, ids);
    }
    // Released: nothing failed, nothing open, never sent a CANCEL. Cancelled: a dependency
    // failed, or a CANCEL was sent (a dependency, or CancelWorkflow) and the node still waits
    // `resend_after` later (the record was lost, or its consumer lags): sent (again), each
    // resend waiting twice as long as the one before, up to 16 x `resend_after`.
    qb.push(
        " GROUP BY w.task_id, w.workflow_id, w.tenant, w.business_key, w.priority \
         HAVING (failed IS NULL AND open_deps = 0 AND cancel_sent_at IS NULL) \
             OR ((failed IS NOT NULL OR cancel_sent_at IS NOT NULL) \
                 AND (cancel_sent_at IS NULL OR cancel_sent_at < NOW(6) - INTERVAL CAST(",
    );
    qb.push_bind(resend_after.as_micros() as u64)
        .push(
            " * POW(2, LEAST(GREATEST(cancel_sends, 1) - 1, 4)) AS UNSIGNED) MICROSECOND)) LIMIT ",
        )
        .push_bind(limit);
    let rows = qb.build().fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| {
            let failed: Option<Vec<u8>> = r.try_get("failed")?;
            let sent: Option<DateTime<Utc>> = r.try_get("cancel_sent_at")?;
            Ok(match (failed, sent) {
                (Some(f), _) => Resolved::Cancel(node_cancel(
                    r,
                    format!("dependency {}", String::from_utf8_lossy(&f)),
                )?),
                (None, Some(_)) => Resolved::Cancel(node_cancel(
                    r,
                    "workflow cancelled (sent again)".to_owned(),
                )?),
                (None, None) => Resolved::Release(id_of(r, "task_id")?),
            })
        })
        .collect()
}

/// Moves WAITING nodes to SCHEDULED, due at their own `run_at` or now (the database's clock); a
/// node that left `waiting` meanwhile, was sent a CANCEL, or whose workflow is being cancelled
/// is left alone. Returns how many moved.
///
/// # Errors
/// Database errors.
pub async fn release(pool: &MySqlPool, ids: &[TaskId]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("UPDATE tasks SET state = 'scheduled', version = ");
    qb.push_bind(TaskState::Scheduled.version(0, 0)).push(
        ", run_at = COALESCE(run_at, NOW(6)), updated_at = NOW(6) \
         WHERE state = 'waiting' \
         AND NOT EXISTS (SELECT 1 FROM workflow_nodes n WHERE n.task_id = tasks.task_id \
             AND n.cancel_sent_at IS NOT NULL) \
         AND NOT EXISTS (SELECT 1 FROM workflows f WHERE f.workflow_id = tasks.workflow_id \
             AND f.cancel_requested_at IS NOT NULL) \
         AND task_id IN (",
    );
    push_ids(&mut qb, ids);
    Ok(qb.build().execute(pool).await?.rows_affected())
}

/// Records that a CANCEL is being produced for these nodes (before it is: a node marked is never
/// released, and one still WAITING `resend_after` later is sent another).
///
/// # Errors
/// Database errors.
pub async fn mark_cancel_sent(pool: &MySqlPool, ids: &[TaskId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "UPDATE workflow_nodes SET cancel_sent_at = NOW(6), cancel_sends = cancel_sends + 1 \
             WHERE task_id IN (",
    );
    push_ids(&mut qb, ids);
    qb.build().execute(pool).await?;
    Ok(())
}

/// Up to `limit` workflows with a CancelWorkflow not yet carried out.
///
/// # Errors
/// Database errors.
pub async fn cancel_requests(pool: &MySqlPool, limit: u32) -> Result<Vec<(TaskId, String)>> {
    sqlx::query(
        "SELECT workflow_id, cancel_reason FROM workflows \
         WHERE cancel_done_at IS NULL AND cancel_requested_at IS NOT NULL \
         ORDER BY cancel_requested_at LIMIT ?",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((id_of(r, "workflow_id")?, text(r, "cancel_reason")?)))
    .collect()
}

/// The unfinished nodes of `workflow`, to cancel with `reason`.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn unfinished_nodes(
    pool: &MySqlPool,
    workflow: TaskId,
    reason: &str,
) -> Result<Vec<NodeCancel>> {
    sqlx::query(
        "SELECT t.task_id, t.workflow_id, t.tenant, t.business_key, t.priority FROM workflow_nodes n \
         JOIN tasks t ON t.task_id = n.task_id \
         WHERE n.workflow_id = ? AND t.state NOT IN ('succeeded', 'dead', 'cancelled')",
    )
    .bind(workflow.as_bytes().as_slice())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| node_cancel(r, format!("workflow cancelled: {reason}")))
    .collect()
}

/// Records that every unfinished node of `workflow` was sent its CANCEL.
///
/// # Errors
/// Database errors.
pub async fn cancel_done(pool: &MySqlPool, workflow: TaskId, now: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE workflows SET cancel_done_at = ? WHERE workflow_id = ?")
        .bind(now)
        .bind(workflow.as_bytes().as_slice())
        .execute(pool)
        .await?;
    Ok(())
}

/// A finished dependency of a node, as its handler reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyResult {
    /// The dependency's node name.
    pub name: String,
    /// Its task.
    pub task_id: TaskId,
    /// Its state (SUCCEEDED, or DEAD / CANCELLED behind a `run` edge).
    pub state: TaskState,
    /// Its handler's result, if any.
    pub result: Option<Vec<u8>>,
}

/// The dependencies of node `task` with their states and results, by name.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn dependency_results(pool: &MySqlPool, task: TaskId) -> Result<Vec<DependencyResult>> {
    sqlx::query(
        "SELECT n.name, e.depends_on, t.state, t.result FROM workflow_edges e \
         JOIN workflow_nodes n ON n.task_id = e.depends_on \
         LEFT JOIN tasks t ON t.task_id = e.depends_on \
         WHERE e.task_id = ? ORDER BY n.name",
    )
    .bind(task.as_bytes().as_slice())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        let state: Option<String> = r.try_get("state")?;
        Ok(DependencyResult {
            name: text(r, "name")?,
            task_id: id_of(r, "depends_on")?,
            // Purged after it finished: it succeeded or it could not have been released.
            state: state
                .as_deref()
                .map_or(Some(TaskState::Succeeded), TaskState::parse)
                .ok_or_else(|| StoreError::Corrupt(format!("state {state:?}")))?,
            result: r.try_get("result")?,
        })
    })
    .collect()
}
