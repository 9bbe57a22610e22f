//! The `schedules` table: ScheduleService's rows (gateway) and the schedule loop's claims
//! (processor).
//!
//! A fire is one transaction: [`claim_due`] locks due rows with `FOR UPDATE SKIP LOCKED` (several
//! processor instances claim disjoint rows), [`insert_fire`] writes each fire as a `scheduled`
//! task row (the row a submit with `run_at` gets from the processor's writer: the scheduler
//! publishes it when due), and [`record_pass`] advances `next_fire_at`. A fire's task id is
//! derived from (schedule, fire time), so the tasks primary key refuses a second attempt at one
//! fire ([`Fired::Duplicate`]) whatever happened to the first attempt's claimer. Times compare on
//! the database's clock ([`db_now`]), as the scheduler's do.
//!
//! Over 400 lines because it is every statement on the `schedules` table, ScheduleService's rows
//! and the schedule loop's fire transaction, sharing [`ScheduleRow`] and its decoder; the fire
//! transaction ([`claim_due`] to [`record_pass`]) would move to a module of its own first.

use chrono::{DateTime, Utc};
use dispatch_core::schedule::ScheduleId;
use dispatch_core::{TaskId, TaskState};
use sqlx::{MySqlPool, Row};

use crate::tasks::TaskWrite;
use crate::{Result, StoreError};

/// One schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    /// Identity (fire ids derive from it; a re-created name gets a new one).
    pub schedule_id: ScheduleId,
    /// Owner.
    pub tenant: String,
    /// Unique per tenant.
    pub name: String,
    /// Cron expression (or `interval_ms`).
    pub cron_expr: Option<String>,
    /// Interval (or `cron_expr`).
    pub interval_ms: Option<u64>,
    /// An interval's first fire time.
    pub anchor_at: DateTime<Utc>,
    /// IANA zone of the cron fields.
    pub time_zone: String,
    /// The TaskSpec each fire submits (protobuf bytes).
    pub template: Vec<u8>,
    /// `skip` or `allow`.
    pub overlap: String,
    /// `one`, `all` or `skip`.
    pub catchup: String,
    /// The bound of `all`.
    pub catchup_limit: u32,
    /// Largest delay of a fire's task after its fire time.
    pub jitter_ms: u32,
    /// Not fired while set.
    pub paused: bool,
    /// Next fire time (none: never again).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Last fire time that submitted a task.
    pub last_fire_at: Option<DateTime<Utc>>,
    /// That task.
    pub last_task_id: Option<TaskId>,
    /// Fires that submitted a task.
    pub fires: u64,
    /// Fires skipped by the overlap policy.
    pub overlap_skipped: u64,
    /// Missed times not fired by the catch-up policy.
    pub missed: u64,
    /// Raised by every change.
    pub version: u64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "schedule_id, tenant, name, cron_expr, interval_ms, anchor_at, time_zone, template, \
    overlap, catchup, catchup_limit, jitter_ms, paused, next_fire_at, last_fire_at, last_task_id, fires, \
    overlap_skipped, missed, version, created_at, updated_at";

fn decode(r: &sqlx::mysql::MySqlRow) -> Result<ScheduleRow> {
    let id: Vec<u8> = r.try_get("schedule_id")?;
    let last: Option<Vec<u8>> = r.try_get("last_task_id")?;
    let paused: u8 = r.try_get("paused")?;
    Ok(ScheduleRow {
        schedule_id: ScheduleId::from_slice(&id)
            .map_err(|e| StoreError::Corrupt(format!("schedules.schedule_id: {e}")))?,
        tenant: r.try_get("tenant")?,
        name: r.try_get("name")?,
        cron_expr: r.try_get("cron_expr")?,
        interval_ms: r.try_get("interval_ms")?,
        anchor_at: r.try_get("anchor_at")?,
        time_zone: r.try_get("time_zone")?,
        template: r.try_get("template")?,
        overlap: r.try_get("overlap")?,
        catchup: r.try_get("catchup")?,
        catchup_limit: r.try_get("catchup_limit")?,
        jitter_ms: r.try_get("jitter_ms")?,
        paused: paused != 0,
        next_fire_at: r.try_get("next_fire_at")?,
        last_fire_at: r.try_get("last_fire_at")?,
        last_task_id: last
            .map(|b| TaskId::from_slice(&b))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("schedules.last_task_id: {e}")))?,
        fires: r.try_get("fires")?,
        overlap_skipped: r.try_get("overlap_skipped")?,
        missed: r.try_get("missed")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// The database's clock (UTC), which decides what is due.
///
/// # Errors
/// Database errors.
pub async fn db_now<'c, E>(executor: E) -> Result<DateTime<Utc>>
where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
{
    let now: chrono::NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
        .fetch_one(executor)
        .await?;
    Ok(now.and_utc())
}

/// Whether [`insert`] stored the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Stored.
    Created,
    /// The tenant already has a schedule of that name (nothing stored).
    NameTaken,
}

/// Stores a new schedule (one statement: all or nothing).
///
/// # Errors
/// Database errors.
pub async fn insert(pool: &MySqlPool, s: &ScheduleRow) -> Result<Created> {
    let r = sqlx::query(&format!(
        "INSERT INTO schedules ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(s.schedule_id.as_bytes().as_slice())
    .bind(&s.tenant)
    .bind(&s.name)
    .bind(&s.cron_expr)
    .bind(s.interval_ms)
    .bind(s.anchor_at)
    .bind(&s.time_zone)
    .bind(&s.template)
    .bind(&s.overlap)
    .bind(&s.catchup)
    .bind(s.catchup_limit)
    .bind(s.jitter_ms)
    .bind(u8::from(s.paused))
    .bind(s.next_fire_at)
    .bind(s.last_fire_at)
    .bind(s.last_task_id.map(|t| t.as_bytes().to_vec()))
    .bind(s.fires)
    .bind(s.overlap_skipped)
    .bind(s.missed)
    .bind(s.version)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(pool)
    .await;
    match r {
        Ok(_) => Ok(Created::Created),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Created::NameTaken),
        Err(e) => Err(e.into()),
    }
}

/// The tenant's schedule `name`.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn get<'c, E>(executor: E, tenant: &str, name: &str) -> Result<Option<ScheduleRow>>
where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
{
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE tenant = ? AND name = ?"
    ))
    .bind(tenant)
    .bind(name)
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(decode)
    .transpose()
}

/// As [`get`], locking the row until the transaction ends.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn lock(
    conn: &mut sqlx::MySqlConnection,
    tenant: &str,
    name: &str,
) -> Result<Option<ScheduleRow>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE tenant = ? AND name = ? FOR UPDATE"
    ))
    .bind(tenant)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(decode)
    .transpose()
}

/// Up to `limit` of the tenant's schedules with a name after `after`, in name order.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn list(
    pool: &MySqlPool,
    tenant: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<ScheduleRow>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE tenant = ? AND name > ? ORDER BY name LIMIT ?"
    ))
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// Sets a schedule's pause flag and next fire time (a resume restarts from now).
///
/// # Errors
/// Database errors.
pub async fn set_paused(
    conn: &mut sqlx::MySqlConnection,
    schedule_id: ScheduleId,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE schedules SET paused = ?, next_fire_at = ?, updated_at = ?, version = version + 1 \
         WHERE schedule_id = ?",
    )
    .bind(u8::from(paused))
    .bind(next_fire_at)
    .bind(now)
    .bind(schedule_id.as_bytes().as_slice())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the tenant's schedule `name`; whether there was one.
///
/// # Errors
/// Database errors.
pub async fn delete(pool: &MySqlPool, tenant: &str, name: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM schedules WHERE tenant = ? AND name = ?")
        .bind(tenant)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Locks up to `limit` unpaused schedules due at `now` (oldest `next_fire_at` first), skipping
/// rows another transaction holds. Finish with [`record_pass`] for each and a commit.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn claim_due(
    conn: &mut sqlx::MySqlConnection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<ScheduleRow>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE paused = 0 AND next_fire_at <= ? \
         ORDER BY next_fire_at LIMIT ? FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// The oldest `next_fire_at` of the unpaused schedules (how far behind the loop is).
///
/// # Errors
/// Database errors.
pub async fn oldest_due(pool: &MySqlPool) -> Result<Option<DateTime<Utc>>> {
    Ok(
        sqlx::query_scalar("SELECT MIN(next_fire_at) FROM schedules WHERE paused = 0")
            .fetch_one(pool)
            .await?,
    )
}

/// Whether task `id` exists and has not reached a terminal state (a purged or unknown task has
/// finished as far as an overlap is concerned).
///
/// # Errors
/// Database errors.
pub async fn unfinished(conn: &mut sqlx::MySqlConnection, id: TaskId) -> Result<bool> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE task_id = ?")
        .bind(id.as_bytes().as_slice())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(state
        .as_deref()
        .and_then(TaskState::parse)
        .is_some_and(|s| !s.is_terminal()))
}

/// The row a fire's task is written as: what the processor's writer stores for a submit with a
/// future `run_at` (SCHEDULED, version `Scheduled.version(0, 0)`, no lease).
pub fn scheduled_write(t: &dispatch_core::NewTask, now: DateTime<Utc>) -> TaskWrite {
    TaskWrite {
        task_id: t.task_id,
        tenant: t.tenant.as_str().to_owned(),
        business_key: t.business_key.as_str().to_owned(),
        task_type: t.task_type.as_str().to_owned(),
        priority: t.priority,
        payload: t.payload.as_bytes().to_vec(),
        state: TaskState::Scheduled,
        attempts: 0,
        max_attempts: t.retry.max_attempts,
        initial_backoff_ms: t.retry.initial_backoff_ms,
        max_backoff_ms: t.retry.max_backoff_ms,
        generation: 0,
        idempotency_key: t.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
        run_at: t.run_at,
        deadline_at: t.deadline,
        timeout_ms: t.timeout_ms,
        last_error: String::new(),
        result: None,
        version: TaskState::Scheduled.version(0, 0),
        lease_epoch: 0,
        created_at: now,
        updated_at: now,
    }
}

/// What [`insert_fire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// The task row was written.
    Inserted,
    /// A task with the fire's id exists already: this fire happened before.
    Duplicate,
}

/// Writes a fire's task row (`w.state` SCHEDULED, its fire id): plain INSERT, so an existing row
/// of that id is never touched and the answer is [`Fired::Duplicate`].
///
/// # Errors
/// Database errors.
pub async fn insert_fire(conn: &mut sqlx::MySqlConnection, w: &TaskWrite) -> Result<Fired> {
    let r = crate::tasks::insert([(w, crate::tasks::token())])
        .build()
        .execute(&mut *conn)
        .await;
    match r {
        Ok(_) => Ok(Fired::Inserted),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Fired::Duplicate),
        Err(e) => Err(e.into()),
    }
}

/// What one pass over a claimed schedule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// The next fire time (none: never again).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The last fire that submitted a task, and its task (unchanged when none did).
    pub last_fire: Option<(DateTime<Utc>, TaskId)>,
    /// Fires that submitted a task.
    pub fired: u64,
    /// Fires skipped by the overlap policy.
    pub overlap_skipped: u64,
    /// Missed times not fired.
    pub missed: u64,
}

/// Records a pass over a claimed schedule.
///
/// # Errors
/// Database errors.
pub async fn record_pass(
    conn: &mut sqlx::MySqlConnection,
    schedule_id: ScheduleId,
    p: &Pass,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE schedules SET next_fire_at = ?, \
         last_fire_at = COALESCE(?, last_fire_at), last_task_id = COALESCE(?, last_task_id), \
         fires = fires + ?, overlap_skipped = overlap_skipped + ?, missed = missed + ?, \
         updated_at = ?, version = version + 1 WHERE schedule_id = ?",
    )
    .bind(p.next_fire_at)
    .bind(p.last_fire.map(|(at, _)| at))
    .bind(p.last_fire.map(|(_, id)| id.as_bytes().to_vec()))
    .bind(p.fired)
    .bind(p.overlap_skipped)
    .bind(p.missed)
    .bind(now)
    .bind(schedule_id.as_bytes().as_slice())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
