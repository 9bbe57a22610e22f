//! The `tasks` table.
//!
//! Writes are version-fenced multi-row upserts (see `dispatch_core::state`): a write lands only if
//! it raises the stored version and the stored state is not terminal (a DLQ redrive into a later
//! generation excepted). The fence is evaluated once, on `version`, which is assigned first; every
//! other column then follows `version = VALUES(version)`. (MySQL evaluates `ON DUPLICATE KEY
//! UPDATE` assignments left to right, each seeing the ones before it.)

use chrono::{DateTime, Utc};
use dispatch_core::{Priority, TaskId, TaskState, Version};
use dispatch_proto::v1 as pb;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::{Result, StoreError};

/// One state write, as the processor's batch writer produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWrite {
    /// Task.
    pub task_id: TaskId,
    /// Owner.
    pub tenant: String,
    /// Record key.
    pub business_key: String,
    /// Handler type; empty for a placeholder (a cancel ahead of the task's first write).
    pub task_type: String,
    /// Priority.
    pub priority: Priority,
    /// Payload.
    pub payload: Vec<u8>,
    /// New state.
    pub state: TaskState,
    /// Attempts started.
    pub attempts: u32,
    /// Policy: total attempts.
    pub max_attempts: u32,
    /// Policy: first retry delay.
    pub initial_backoff_ms: u32,
    /// Policy: delay cap.
    pub max_backoff_ms: u32,
    /// Redrive generation.
    pub generation: u32,
    /// Dedupe key.
    pub idempotency_key: Option<String>,
    /// Not before.
    pub run_at: Option<DateTime<Utc>>,
    /// Deadline.
    pub deadline_at: Option<DateTime<Utc>>,
    /// Last error (truncated to 1024 characters by the writer).
    pub last_error: String,
    /// Result on success.
    pub result: Option<Vec<u8>>,
    /// Fencing version (from `TaskState::version`).
    pub version: Version,
    /// When the task was accepted (only used on insert).
    pub created_at: DateTime<Utc>,
    /// Time of this change.
    pub updated_at: DateTime<Utc>,
}

/// The stored (state, version) of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateVersion {
    /// Stored state.
    pub state: TaskState,
    /// Stored version.
    pub version: Version,
    /// Stored generation.
    pub generation: u32,
}

const TERMINAL: &str = "('succeeded','dead','cancelled')";

/// Applies `writes` in one multi-row upsert on `conn` (call inside a transaction).
/// Later writes for the same task in one batch must already be coalesced by the caller.
///
/// # Errors
/// Database errors.
pub async fn upsert_batch(conn: &mut sqlx::MySqlConnection, writes: &[TaskWrite]) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
         max_attempts, initial_backoff_ms, max_backoff_ms, generation, idempotency_key, run_at, deadline_at, \
         last_error, result, version, created_at, updated_at, finished_at) ",
    );
    let writes = crate::padded(writes);
    qb.push_values(writes.iter(), |mut b, w| {
        b.push_bind(w.task_id.as_bytes().as_slice())
            .push_bind(&w.tenant)
            .push_bind(&w.business_key)
            .push_bind(&w.task_type)
            .push_bind(w.priority.to_proto() as i32 as u8)
            .push_bind(&w.payload)
            .push_bind(w.state.as_str())
            .push_bind(w.attempts)
            .push_bind(w.max_attempts)
            .push_bind(w.initial_backoff_ms)
            .push_bind(w.max_backoff_ms)
            .push_bind(w.generation)
            .push_bind(&w.idempotency_key)
            .push_bind(w.run_at)
            .push_bind(w.deadline_at)
            .push_bind(truncate(&w.last_error, 1024))
            .push_bind(&w.result)
            .push_bind(w.version)
            .push_bind(w.created_at)
            .push_bind(w.updated_at)
            .push_bind(w.state.is_terminal().then_some(w.updated_at));
    });
    qb.push(format!(
        " ON DUPLICATE KEY UPDATE \
         version = IF(VALUES(version) > version AND (state NOT IN {TERMINAL} OR \
             (state = 'dead' AND (VALUES(version) >> 32) > (version >> 32))), VALUES(version), version), \
         state = IF(version = VALUES(version), VALUES(state), state), \
         attempts = IF(version = VALUES(version), GREATEST(attempts, VALUES(attempts)), attempts), \
         generation = IF(version = VALUES(version), VALUES(generation), generation), \
         last_error = IF(version = VALUES(version) AND VALUES(last_error) <> '', VALUES(last_error), last_error), \
         result = IF(version = VALUES(version), VALUES(result), result), \
         updated_at = IF(version = VALUES(version), VALUES(updated_at), updated_at), \
         finished_at = IF(version = VALUES(version), VALUES(finished_at), finished_at), \
         tenant = IF(task_type = '', VALUES(tenant), tenant), \
         business_key = IF(task_type = '', VALUES(business_key), business_key), \
         priority = IF(task_type = '', VALUES(priority), priority), \
         payload = IF(task_type = '', VALUES(payload), payload), \
         max_attempts = IF(task_type = '', VALUES(max_attempts), max_attempts), \
         initial_backoff_ms = IF(task_type = '', VALUES(initial_backoff_ms), initial_backoff_ms), \
         max_backoff_ms = IF(task_type = '', VALUES(max_backoff_ms), max_backoff_ms), \
         idempotency_key = IF(task_type = '', VALUES(idempotency_key), idempotency_key), \
         run_at = IF(task_type = '', VALUES(run_at), run_at), \
         deadline_at = IF(task_type = '', VALUES(deadline_at), deadline_at), \
         created_at = IF(task_type = '', VALUES(created_at), created_at), \
         task_type = IF(task_type = '', VALUES(task_type), task_type)"
    ));
    qb.build().execute(&mut *conn).await?;
    Ok(())
}

/// Stored state and version of each of `ids` that exists.
///
/// # Errors
/// Database errors, or a row with an unknown state.
pub async fn states<'c, E>(executor: E, ids: &[TaskId]) -> Result<Vec<(TaskId, StateVersion)>>
where
    E: sqlx::Executor<'c, Database = MySql>,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT task_id, state, version, generation FROM tasks WHERE task_id IN (",
    );
    let mut sep = qb.separated(", ");
    for id in crate::padded(ids).iter() {
        sep.push_bind(id.as_bytes().to_vec());
    }
    qb.push(")");
    let rows = qb.build().fetch_all(executor).await?;
    rows.iter()
        .map(|r| {
            let id = TaskId::from_slice(r.try_get::<Vec<u8>, _>(0)?.as_slice())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let state: String = r.try_get(1)?;
            let state = TaskState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("state {state}")))?;
            Ok((
                id,
                StateVersion {
                    state,
                    version: r.try_get(2)?,
                    generation: r.try_get(3)?,
                },
            ))
        })
        .collect()
}

const COLUMNS: &str = "task_id, tenant, business_key, task_type, priority, payload, state, attempts, max_attempts, \
    run_at, deadline_at, last_error, result, version, created_at, updated_at, finished_at, idempotency_key";

fn ts(t: Option<DateTime<Utc>>) -> Option<dispatch_proto::Timestamp> {
    t.map(dispatch_core::time::to_proto)
}

/// Decodes one row selected with [`COLUMNS`].
fn task_from_row(r: &sqlx::mysql::MySqlRow) -> Result<pb::Task> {
    let id = TaskId::from_slice(r.try_get::<Vec<u8>, _>("task_id")?.as_slice())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let state: String = r.try_get("state")?;
    let state =
        TaskState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("state {state}")))?;
    let priority: u8 = r.try_get("priority")?;
    Ok(pb::Task {
        task_id: id.to_string(),
        tenant: r.try_get("tenant")?,
        business_key: text(r, "business_key")?,
        task_type: r.try_get("task_type")?,
        payload: r.try_get("payload")?,
        priority: i32::from(priority),
        state: state.to_proto() as i32,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        run_at: ts(r.try_get("run_at")?),
        deadline: ts(r.try_get("deadline_at")?),
        last_error: text(r, "last_error")?,
        result: r
            .try_get::<Option<Vec<u8>>, _>("result")?
            .unwrap_or_default(),
        version: r.try_get("version")?,
        created_at: ts(Some(r.try_get("created_at")?)),
        updated_at: ts(Some(r.try_get("updated_at")?)),
        finished_at: ts(r.try_get("finished_at")?),
        idempotency_key: r
            .try_get::<Option<String>, _>("idempotency_key")?
            .unwrap_or_default(),
    })
}

/// One task by id (any tenant: callers check ownership).
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn get(pool: &MySqlPool, id: TaskId) -> Result<Option<pb::Task>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tasks WHERE task_id = ?"))
        .bind(id.as_bytes().as_slice())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(task_from_row).transpose()
}

/// Several tasks by id (any tenant), in no particular order.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn get_many(pool: &MySqlPool, ids: &[TaskId]) -> Result<Vec<pb::Task>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM tasks WHERE task_id IN ("));
    let mut sep = qb.separated(", ");
    for id in crate::padded(ids).iter() {
        sep.push_bind(id.as_bytes().to_vec());
    }
    qb.push(")");
    qb.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(task_from_row)
        .collect()
}

/// Filters for [`list`]. Every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Owner (always set by the reader).
    pub tenant: String,
    /// Exact business key.
    pub business_key: Option<String>,
    /// Any of these states.
    pub states: Vec<TaskState>,
    /// Exact type.
    pub task_type: Option<String>,
    /// created_at >= this.
    pub created_after: Option<DateTime<Utc>>,
    /// created_at < this.
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids strictly below this (the cursor: ids are time-ordered, newest first).
    pub before_id: Option<TaskId>,
    /// Page size.
    pub limit: u32,
}

/// A page of tasks, newest id first. Keyset pagination on the primary key keeps pages stable while
/// rows are inserted (new rows have higher ids and never shift an older page).
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn list(pool: &MySqlPool, f: &ListFilter) -> Result<Vec<pb::Task>> {
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM tasks WHERE tenant = "));
    qb.push_bind(&f.tenant);
    if let Some(k) = &f.business_key {
        qb.push(" AND business_key = ").push_bind(k);
    }
    if !f.states.is_empty() {
        qb.push(" AND state IN (");
        let mut sep = qb.separated(", ");
        for s in &f.states {
            sep.push_bind(s.as_str());
        }
        qb.push(")");
    }
    if let Some(t) = &f.task_type {
        qb.push(" AND task_type = ").push_bind(t);
    }
    if let Some(t) = f.created_after {
        qb.push(" AND created_at >= ").push_bind(t);
    }
    if let Some(t) = f.created_before {
        qb.push(" AND created_at < ").push_bind(t);
    }
    if let Some(id) = f.before_id {
        qb.push(" AND task_id < ").push_bind(id.as_bytes().to_vec());
    }
    qb.push(" ORDER BY task_id DESC LIMIT ").push_bind(f.limit);
    qb.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(task_from_row)
        .collect()
}

/// Reads a `utf8mb4_bin` column. sqlx reports binary-collated text as VARBINARY, so it is read as
/// bytes; the collation keeps comparisons byte-exact (business keys are case-sensitive).
pub fn text(r: &sqlx::mysql::MySqlRow, col: &str) -> Result<String> {
    let bytes: Vec<u8> = r.try_get(col)?;
    String::from_utf8(bytes).map_err(|e| StoreError::Corrupt(format!("{col} is not UTF-8: {e}")))
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(super::truncate("héllo", 2), "hé");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
