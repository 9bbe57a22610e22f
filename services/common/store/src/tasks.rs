//! The `tasks` table.
//!
//! Writes are fenced multi-row upserts. The rules, in the order the SQL applies them:
//! 1. **Version and owner** ([`dispatch_core::version::may_overwrite`], the SQL generated from
//!    it): a write lands only if it raises the stored version and the stored state is not terminal
//!    (a DLQ redrive of a DEAD task into a later generation excepted), and a write of an attempt
//!    made under an older lease epoch than the stored one (a partition's replaced owner) is
//!    dropped. An equal version never changes a row: a committed terminal state is final.
//! 2. **Tenant**: a write lands only on its own tenant's row. The one exception is a *foreign
//!    placeholder*: a cancel of an id nobody owns yet leaves a row with an empty type, owned by
//!    the canceller; the real owner's first write replaces it whole, so no tenant can cancel (or
//!    see) another tenant's task ahead of its submit.
//! 3. **Placeholder fill**: the owner's own placeholder (it cancelled before its submit was
//!    processed) keeps its CANCELLED state but takes the task's data from the submit.
//!
//! Every condition is evaluated on the row as stored: MySQL evaluates `ON DUPLICATE KEY UPDATE`
//! assignments left to right, each seeing the ones before it, so the columns the conditions read
//! (`version`, `lease_epoch`, `tenant`, `task_type`) are assigned last. Each landed write stores a
//! random `write_token`, by which the writer tells exactly which of its writes landed.
//!
//! Over 400 lines because the fenced upsert (its rules above) and every read of the `tasks` table
//! share the columns and the row decoder; the code ends near line 500. The list query
//! ([`ListFilter`], [`list`], [`explain_list`]) would move to a module of its own first.

use chrono::{DateTime, Utc};
use dispatch_core::{Priority, TaskId, TaskState, Version};
use dispatch_proto::v1 as pb;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::{Result, StoreError};

/// The largest result a task keeps: its `result` column is a BLOB (at most 65,535 bytes); a
/// longer one is cut to this. (64 KiB, one byte more, failed the whole write batch forever.)
pub const RESULT_MAX_BYTES: usize = 65_535;

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
    /// The task's own attempt timeout in milliseconds (None: only its type's timeout).
    pub timeout_ms: Option<u32>,
    /// Last error (truncated to 1024 characters by the writer).
    pub last_error: String,
    /// Result on success.
    pub result: Option<Vec<u8>>,
    /// Fencing version (from `TaskState::version`).
    pub version: Version,
    /// Lease epoch of the partition owner that made the write (0: made without a lease).
    pub lease_epoch: u64,
    /// When the task was accepted (only used on insert).
    pub created_at: DateTime<Utc>,
    /// Time of this change.
    pub updated_at: DateTime<Utc>,
}

/// The stored (state, version) of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVersion {
    /// Stored state.
    pub state: TaskState,
    /// Stored version.
    pub version: Version,
    /// Stored generation.
    pub generation: u32,
    /// Lease epoch of the write that made it.
    pub lease_epoch: u64,
    /// A placeholder: a cancel's row ahead of its task's first write (no type, no data).
    pub placeholder: bool,
    /// Owner (of a placeholder: the canceller).
    pub tenant: String,
}

impl StateVersion {
    /// The stored row as the fence sees it.
    pub fn stamp(&self) -> dispatch_core::version::Stamp {
        dispatch_core::version::Stamp {
            version: self.version,
            epoch: self.lease_epoch,
        }
    }

    /// Whether this row belongs to `tenant` as far as its task is concerned: a placeholder of
    /// another tenant does not (the owner's first write replaces it).
    pub fn owned_by(&self, tenant: &str) -> bool {
        self.tenant == tenant
    }
}

/// The `ON DUPLICATE KEY UPDATE` clause of [`upsert_batch`]; see the module doc.
fn on_duplicate() -> String {
    let fence = dispatch_core::version::sql_may_overwrite(
        "version",
        "lease_epoch",
        "VALUES(version)",
        "VALUES(lease_epoch)",
    );
    // A cancel's row of another tenant, and this write is its real owner's.
    let foreign = "(task_type = '' AND tenant <> VALUES(tenant) AND VALUES(task_type) <> '')";
    let apply = if cfg!(feature = "fault-skip-tenant-fence") {
        format!("({fence} OR {foreign})")
    } else {
        format!("(({fence} AND tenant = VALUES(tenant)) OR {foreign})")
    };
    // Take the data columns: replacing a foreign placeholder, or filling the owner's own.
    let data = "(task_type = '' AND VALUES(task_type) <> '')";
    let mut sets: Vec<String> = Vec::new();
    for col in ["state", "generation", "result", "updated_at", "finished_at"] {
        sets.push(format!("{col} = IF({apply}, VALUES({col}), {col})"));
    }
    sets.push(format!(
        "attempts = IF({foreign}, VALUES(attempts), IF({apply}, GREATEST(attempts, VALUES(attempts)), attempts))"
    ));
    sets.push(format!(
        "last_error = IF({foreign} OR ({apply} AND VALUES(last_error) <> ''), VALUES(last_error), last_error)"
    ));
    sets.push(format!(
        "write_token = IF({apply} OR {data}, VALUES(write_token), write_token)"
    ));
    for col in [
        "business_key",
        "priority",
        "payload",
        "max_attempts",
        "initial_backoff_ms",
        "max_backoff_ms",
        "idempotency_key",
        "run_at",
        "deadline_at",
        "timeout_ms",
        "created_at",
    ] {
        sets.push(format!("{col} = IF({data}, VALUES({col}), {col})"));
    }
    // Read by the conditions above: assigned last, version and epoch first.
    sets.push(format!(
        "lease_epoch = IF({apply} AND VALUES(lease_epoch) <> 0, VALUES(lease_epoch), lease_epoch)"
    ));
    sets.push(format!("version = IF({apply}, VALUES(version), version)"));
    if cfg!(feature = "fault-placeholder-keeps-tenant") {
        // The fault build: a foreign placeholder's tenant stays when its owner's write fills it.
        sets.push("tenant = tenant".to_owned());
    } else {
        sets.push(format!("tenant = IF({data}, VALUES(tenant), tenant)"));
    }
    sets.push(format!(
        "task_type = IF({data}, VALUES(task_type), task_type)"
    ));
    format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
}

/// A random, non-zero write token.
pub(crate) fn token() -> u64 {
    rand::random::<u64>() | 1
}

/// `INSERT INTO tasks` of `rows`: each write with its write token, every column a write sets.
/// The one column list and binding order of the upsert ([`upsert_batch`], which appends
/// [`on_duplicate`]) and a schedule fire's plain insert (`schedules::insert_fire`).
pub(crate) fn insert<'a>(
    rows: impl IntoIterator<Item = (&'a TaskWrite, u64)>,
) -> QueryBuilder<'a, MySql> {
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts, \
         max_attempts, initial_backoff_ms, max_backoff_ms, generation, idempotency_key, run_at, deadline_at, \
         timeout_ms, last_error, result, version, lease_epoch, write_token, created_at, updated_at, finished_at) ",
    );
    qb.push_values(rows, |mut b, (w, token)| {
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
            .push_bind(w.timeout_ms)
            .push_bind(truncate(&w.last_error, 1024))
            .push_bind(&w.result)
            .push_bind(w.version)
            .push_bind(w.lease_epoch)
            .push_bind(token)
            .push_bind(w.created_at)
            .push_bind(w.updated_at)
            .push_bind(w.state.is_terminal().then_some(w.updated_at));
    });
    qb
}

/// Applies `writes` in one multi-row upsert on `conn` (call inside a transaction) and returns
/// each write's token: a write landed exactly when the row's `write_token` (see [`states`]) is its
/// token afterwards. Later writes for the same task in one batch must already be coalesced by the
/// caller. `writes` may be rows or references to them (a caller that sorts a batch need not
/// copy it).
///
/// # Errors
/// Database errors.
pub async fn upsert_batch(
    conn: &mut sqlx::MySqlConnection,
    writes: &[impl std::borrow::Borrow<TaskWrite> + Sync],
) -> Result<Vec<u64>> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let tokens: Vec<u64> = writes.iter().map(|_| token()).collect();
    let rows: Vec<(&TaskWrite, u64)> = writes
        .iter()
        .map(std::borrow::Borrow::borrow)
        .zip(tokens.iter().copied())
        .collect();
    let rows = crate::padded(&rows);
    let mut qb = insert(rows.iter().copied());
    qb.push(on_duplicate());
    qb.build().execute(&mut *conn).await?;
    Ok(tokens)
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
        "SELECT task_id, state, version, generation, lease_epoch, task_type = '', tenant \
         FROM tasks WHERE task_id IN (",
    );
    push_ids(&mut qb, ids);
    let rows = qb.build().fetch_all(executor).await?;
    rows.iter()
        .map(|r| {
            let id = task_id(r, "task_id")?;
            let state: String = r.try_get(1)?;
            let state = TaskState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("state {state}")))?;
            Ok((
                id,
                StateVersion {
                    state,
                    version: r.try_get(2)?,
                    generation: r.try_get(3)?,
                    lease_epoch: r.try_get(4)?,
                    placeholder: r.try_get::<i64, _>(5)? != 0,
                    tenant: r.try_get(6)?,
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
    let id = task_id(r, "task_id")?;
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

/// A task as stored, with its write token, for every one of `ids` with a row (placeholders
/// included): what the writer publishes as the task's event, read in the write's transaction.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn snapshots<'c, E>(executor: E, ids: &[TaskId]) -> Result<Vec<Snapshot>>
where
    E: sqlx::Executor<'c, Database = MySql>,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "SELECT {COLUMNS}, write_token FROM tasks WHERE task_id IN ("
    ));
    push_ids(&mut qb, ids);
    qb.build()
        .fetch_all(executor)
        .await?
        .iter()
        .map(|r| {
            Ok(Snapshot {
                task: task_from_row(r)?,
                write_token: r.try_get("write_token")?,
            })
        })
        .collect()
}

/// A row as [`snapshots`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The task as readers see it (`task_type` empty: a cancel's placeholder).
    pub task: pb::Task,
    /// The token of the write that last changed the row.
    pub write_token: u64,
}

/// One task by id (any tenant: callers check ownership). A cancel's placeholder (a row ahead of
/// its task's first write) is no task: `None`.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn get(pool: &MySqlPool, id: TaskId) -> Result<Option<pb::Task>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE task_id = ? AND task_type <> ''"
    ))
    .bind(id.as_bytes().as_slice())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(task_from_row).transpose()
}

/// Several tasks by id (any tenant), in no particular order; placeholders are left out.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn get_many(pool: &MySqlPool, ids: &[TaskId]) -> Result<Vec<pb::Task>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM tasks WHERE task_type <> '' AND task_id IN ("
    ));
    push_ids(&mut qb, ids);
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
    /// Read payload and result too (the FULL view); without, they come back empty.
    pub full: bool,
}

/// A page of tasks, newest id first. Keyset pagination on the primary key keeps pages stable while
/// rows are inserted (new rows have higher ids and never shift an older page).
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn list(pool: &MySqlPool, f: &ListFilter) -> Result<Vec<pb::Task>> {
    list_query(f, "")
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(task_from_row)
        .collect()
}

/// [`COLUMNS`] without reading payload and result (the BASIC view).
const BASIC_COLUMNS: &str = "task_id, tenant, business_key, task_type, priority, x'' AS payload, state, attempts, \
    max_attempts, run_at, deadline_at, last_error, NULL AS result, version, created_at, updated_at, finished_at, \
    idempotency_key";

/// The plan MySQL picks for [`list`] with `f`: one `key | Extra` line per table of `EXPLAIN`
/// (for the test that an index serves the order).
///
/// # Errors
/// Database errors.
pub async fn explain_list(pool: &MySqlPool, f: &ListFilter) -> Result<Vec<String>> {
    explain_lines(list_query(f, "EXPLAIN ").build().fetch_all(pool).await?)
}

/// One `key | Extra` line per row of an `EXPLAIN`.
pub(crate) fn explain_lines(rows: Vec<sqlx::mysql::MySqlRow>) -> Result<Vec<String>> {
    Ok(rows
        .iter()
        .map(|r| {
            let key: Option<String> = r.try_get("key").ok().flatten();
            let extra: Option<String> = r.try_get("Extra").ok().flatten();
            format!(
                "{} | {}",
                key.unwrap_or_default(),
                extra.unwrap_or_default()
            )
        })
        .collect())
}

fn list_query<'a>(f: &'a ListFilter, prefix: &str) -> QueryBuilder<'a, MySql> {
    let columns = if f.full { COLUMNS } else { BASIC_COLUMNS };
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "{prefix}SELECT {columns} FROM tasks WHERE tenant = "
    ));
    qb.push_bind(&f.tenant);
    qb.push(" AND task_type <> ''");
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
    qb
}

/// Appends `ids` (padded to a fixed shape, see `crate::padded`) and the closing parenthesis of
/// an `IN (` list.
pub(crate) fn push_ids(qb: &mut QueryBuilder<'_, MySql>, ids: &[TaskId]) {
    let mut sep = qb.separated(", ");
    for id in crate::padded(ids).iter() {
        sep.push_bind(id.as_bytes().to_vec());
    }
    qb.push(")");
}

/// Reads a task id column (its 16 bytes).
///
/// # Errors
/// No such column, or bytes that are not a task id ([`StoreError::Corrupt`]).
pub fn task_id(r: &sqlx::mysql::MySqlRow, col: &str) -> Result<TaskId> {
    TaskId::from_slice(r.try_get::<Vec<u8>, _>(col)?.as_slice())
        .map_err(|e| StoreError::Corrupt(e.to_string()))
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
