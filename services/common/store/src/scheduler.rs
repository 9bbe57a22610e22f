//! Claiming due `scheduled` tasks for the processor's scheduler.
//!
//! [`claim_due`] locks due rows with `FOR UPDATE SKIP LOCKED`, so several processor instances can
//! run the scheduler at once and each due row is claimed by exactly one of them; the claimer flips
//! them to `pending` ([`mark_pending`]) and commits *before* it publishes them, so no row lock is
//! held while Kafka is waited on. A row left `pending` by a claimer that died before publishing
//! is claimed again once stale ([`claim_stale_pending`]); the consumer's fence absorbs the
//! duplicate when both were published.
//!
//! Retries whose delay is longer than the retry topics take wait in `retry_waits` (a row per
//! waiting retry, indexed by due time, so the tasks table carries no index for them):
//! [`set_retry_due`] with the RETRYING write, [`claim_due_retries`] and [`lease_retries`] when
//! due, [`finish_retries`] once the next attempt is published.
//!
//! A claim runs in READ COMMITTED ([`begin_claim`]): it locks the rows it claims and no gap. In
//! REPEATABLE READ its range scan also locked the gap after the last due row, where every new
//! `scheduled` row (a submit with `run_at`, a workflow's roots) is inserted, so a processor
//! frozen mid-claim held the gateway's inserts until it woke (10-12 s in a `workflow-chaos` run).

use chrono::{DateTime, Utc};
use dispatch_core::{Priority, RetryPolicy, TaskId, TaskState, Version};
use sqlx::{MySql, QueryBuilder, Row};

use crate::tasks::{task_id, text};
use crate::{Result, StoreError};

/// A due scheduled task, with everything needed to publish it again: what it is (as submitted),
/// then where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct DueTask {
    /// Task.
    pub task_id: TaskId,
    /// Owner.
    pub tenant: String,
    /// Record key.
    pub business_key: String,
    /// Handler type.
    pub task_type: String,
    /// Priority.
    pub priority: Priority,
    /// Payload.
    pub payload: Vec<u8>,
    /// Dedupe key.
    pub idempotency_key: Option<String>,
    /// The workflow it is a node of, if any.
    pub workflow_id: Option<TaskId>,
    /// The trace context it was scheduled with (`traceparent`, `tracestate` pairs).
    pub trace: Vec<(String, String)>,
    /// Its retry policy (the stored `max_attempts`, `initial_backoff_ms`, `max_backoff_ms`).
    pub retry: RetryPolicy,
    /// The task's own attempt timeout in milliseconds.
    pub timeout_ms: Option<u32>,
    /// Deadline.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When it became due.
    pub run_at: Option<DateTime<Utc>>,
    /// Redrive generation.
    pub generation: u32,
    /// Stored version.
    pub version: Version,
    /// Attempts started.
    pub attempts: u32,
    /// Last error.
    pub last_error: String,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// A retry whose wait was a backstop ([`set_retry_due`]): its record was sent to a retry
    /// topic and never reached a consumer. Only [`claim_due_retries`] sets it.
    pub backstop: bool,
}

/// Begins a claim transaction, in READ COMMITTED (see the module doc).
///
/// # Errors
/// Database errors.
pub async fn begin_claim(pool: &sqlx::MySqlPool) -> Result<sqlx::Transaction<'static, MySql>> {
    Ok(pool
        .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
        .await?)
}

/// Locks up to `limit` due `scheduled` rows (oldest `run_at` first), skipping rows another
/// transaction holds. Call inside a transaction and finish with [`mark_pending`] and a commit.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn claim_due(conn: &mut sqlx::MySqlConnection, limit: u32) -> Result<Vec<DueTask>> {
    let rows = sqlx::query(&format!(
        "SELECT {DUE_COLUMNS} FROM tasks WHERE state = 'scheduled' AND run_at <= NOW(6) ORDER BY run_at LIMIT ? \
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    decode(&rows)
}

const DUE_COLUMNS: &str = "task_id, tenant, business_key, task_type, priority, payload, max_attempts, \
    initial_backoff_ms, max_backoff_ms, generation, idempotency_key, run_at, deadline_at, timeout_ms, version, created_at, \
    trace_context, attempts, last_error, workflow_id";

/// Locks up to `limit` retries waiting in MySQL (`retry_waits`) whose next attempt is due, oldest
/// first, skipping rows another transaction holds, and returns the tasks still waiting for them.
/// A wait whose task moved on (it ran, was cancelled or purged since) is deleted here. Call inside
/// a transaction; finish with [`lease_retries`] and a commit, publish, then [`finish_retries`].
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn claim_due_retries(
    conn: &mut sqlx::MySqlConnection,
    limit: u32,
) -> Result<Vec<DueTask>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let waits = sqlx::query(
        "SELECT w.task_id, CAST(COALESCE(t.state = 'retrying' AND t.version = w.version, 0) AS SIGNED) AS live, \
         CAST(w.backstop AS SIGNED) AS backstop \
         FROM retry_waits w LEFT JOIN tasks t ON t.task_id = w.task_id \
         WHERE w.due_at <= NOW(6) ORDER BY w.due_at LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let (mut live, mut stale) = (Vec::new(), Vec::new());
    let mut backstops = std::collections::HashSet::new();
    for r in &waits {
        let id = task_id(r, "task_id")?;
        let is_live: i64 = r.try_get("live")?;
        if is_live == 1 { &mut live } else { &mut stale }.push(id);
        if is_live == 1 && r.try_get::<i64, _>("backstop")? == 1 {
            backstops.insert(id);
        }
    }
    if !stale.is_empty() {
        let mut qb: QueryBuilder<MySql> =
            QueryBuilder::new("DELETE FROM retry_waits WHERE task_id IN (");
        crate::tasks::push_ids(&mut qb, &stale);
        qb.build().execute(&mut *conn).await?;
    }
    if live.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "SELECT {DUE_COLUMNS} FROM tasks WHERE state = 'retrying' AND task_id IN ("
    ));
    crate::tasks::push_ids(&mut qb, &live);
    let mut due = decode(&qb.build().fetch_all(&mut *conn).await?)?;
    for t in &mut due {
        t.backstop = backstops.contains(&t.task_id);
    }
    Ok(due)
}

/// Pushes claimed retries' due time to `until`: if their next attempt is not published by then
/// (the claimer died, or Kafka failed), they are claimed again.
///
/// # Errors
/// Database errors.
pub async fn lease_retries(
    conn: &mut sqlx::MySqlConnection,
    ids: &[TaskId],
    until: DateTime<Utc>,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new("UPDATE retry_waits SET due_at = ");
    qb.push_bind(until).push(" WHERE task_id IN (");
    crate::tasks::push_ids(&mut qb, ids);
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

/// Ends the waits of retries whose next attempt was published: each `(task, version)` wait is
/// deleted unless a newer wait of the task replaced it meanwhile (its next attempt ran and failed
/// again before this call).
///
/// # Errors
/// Database errors.
pub async fn finish_retries(pool: &sqlx::MySqlPool, published: &[(TaskId, Version)]) -> Result<()> {
    for (id, version) in published {
        sqlx::query("DELETE FROM retry_waits WHERE task_id = ? AND version = ?")
            .bind(id.as_bytes().as_slice())
            .bind(version)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Records when the next attempt of each landed RETRYING write is due: a wait in `retry_waits`
/// for the write's version (call in the write's transaction, after the write). The flag marks a
/// backstop: the next attempt was sent to a retry topic, and the wait is due a while after it,
/// for the case where that record never reaches a consumer.
///
/// # Errors
/// Database errors.
pub async fn set_retry_due(
    conn: &mut sqlx::MySqlConnection,
    due: &[(TaskId, Version, DateTime<Utc>, bool)],
) -> Result<()> {
    if due.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("INSERT INTO retry_waits (task_id, version, due_at, backstop) ");
    // A repeated last row is the same wait again: a no-op.
    qb.push_values(
        crate::padded(due).iter(),
        |mut b, (id, version, at, backstop)| {
            b.push_bind(id.as_bytes().to_vec())
                .push_bind(*version)
                .push_bind(*at)
                .push_bind(*backstop);
        },
    );
    qb.push(
        " ON DUPLICATE KEY UPDATE version = VALUES(version), due_at = VALUES(due_at), backstop = VALUES(backstop)",
    );
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

/// Locks up to `limit` rows the scheduler moved to `pending` at least `older_than` ago that no
/// consumer has started since (their record may never have been published). Same contract as
/// [`claim_due`]; finish with [`touch_pending`].
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn claim_stale_pending(
    conn: &mut sqlx::MySqlConnection,
    limit: u32,
    older_than: std::time::Duration,
) -> Result<Vec<DueTask>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let before = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
    let rows = sqlx::query(&format!(
        "SELECT {DUE_COLUMNS} FROM tasks WHERE state = 'pending' AND updated_at <= ? ORDER BY updated_at LIMIT ? \
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    decode(&rows)
}

/// Restarts the staleness clock of re-claimed `pending` rows.
///
/// # Errors
/// Database errors.
pub async fn touch_pending(
    conn: &mut sqlx::MySqlConnection,
    ids: &[TaskId],
    now: DateTime<Utc>,
) -> Result<()> {
    for id in ids {
        sqlx::query("UPDATE tasks SET updated_at = ? WHERE task_id = ? AND state = 'pending'")
            .bind(now)
            .bind(id.as_bytes().as_slice())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Marks claimed rows that cannot be published (they do not decode into a task) DEAD with
/// `error`, so they never block or spin the scheduler.
///
/// # Errors
/// Database errors.
pub async fn mark_invalid(
    conn: &mut sqlx::MySqlConnection,
    tasks: &[(TaskId, u32, String)],
    now: DateTime<Utc>,
) -> Result<()> {
    for (id, generation, error) in tasks {
        sqlx::query(
            "UPDATE tasks SET state = 'dead', version = ?, last_error = ?, updated_at = ?, finished_at = ? \
             WHERE task_id = ? AND state IN ('scheduled', 'pending') AND version < ?",
        )
        .bind(TaskState::Dead.version(*generation, 0))
        .bind(error.chars().take(1024).collect::<String>())
        .bind(now)
        .bind(now)
        .bind(id.as_bytes().as_slice())
        .bind(TaskState::Dead.version(*generation, 0))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn decode(rows: &[sqlx::mysql::MySqlRow]) -> Result<Vec<DueTask>> {
    rows.iter()
        .map(|r| {
            let priority: u8 = r.try_get("priority")?;
            Ok(DueTask {
                task_id: task_id(r, "task_id")?,
                tenant: r.try_get("tenant")?,
                business_key: text(r, "business_key")?,
                task_type: r.try_get("task_type")?,
                priority: Priority::from_proto_i32(i32::from(priority))
                    .map_err(StoreError::Corrupt)?,
                payload: r.try_get("payload")?,
                idempotency_key: r.try_get("idempotency_key")?,
                workflow_id: r
                    .try_get::<Option<Vec<u8>>, _>("workflow_id")?
                    .map(|b| TaskId::from_slice(&b))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(format!("workflow_id: {e}")))?,
                // Binary-collated text, read as bytes (see `tasks::text`).
                trace: crate::trace_context::decode(
                    r.try_get::<Option<Vec<u8>>, _>("trace_context")?
                        .and_then(|b| String::from_utf8(b).ok())
                        .as_deref(),
                ),
                retry: RetryPolicy {
                    max_attempts: r.try_get("max_attempts")?,
                    initial_backoff_ms: r.try_get("initial_backoff_ms")?,
                    max_backoff_ms: r.try_get("max_backoff_ms")?,
                },
                timeout_ms: r.try_get("timeout_ms")?,
                deadline_at: r.try_get("deadline_at")?,
                run_at: r.try_get("run_at")?,
                generation: r.try_get("generation")?,
                version: r.try_get("version")?,
                attempts: r.try_get("attempts")?,
                last_error: text(r, "last_error")?,
                created_at: r.try_get("created_at")?,
                backstop: false,
            })
        })
        .collect()
}

/// Moves claimed tasks to `pending` (version `Pending.version(generation, 0)`), fenced so a row
/// that moved on meanwhile is left alone. Returns the ids that changed.
///
/// # Errors
/// Database errors.
pub async fn mark_pending(
    conn: &mut sqlx::MySqlConnection,
    tasks: &[(TaskId, u32)],
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut changed = 0;
    for (id, generation) in tasks {
        let version = TaskState::Pending.version(*generation, 0);
        let mut qb: QueryBuilder<MySql> =
            QueryBuilder::new("UPDATE tasks SET state = 'pending', version = ");
        qb.push_bind(version)
            .push(", updated_at = ")
            .push_bind(now)
            .push(" WHERE task_id = ")
            .push_bind(id.as_bytes().as_slice())
            .push(" AND state = 'scheduled' AND version < ")
            .push_bind(version);
        changed += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(changed)
}
