//! Retention: deleting finished work after a per-tenant retention.
//!
//! What goes, per tenant, once it is older than the tenant's horizon (`now - retention`):
//! - a **terminal task** (SUCCEEDED, DEAD, CANCELLED) that finished before the horizon, with its
//!   `task_attempts` and `handler_executions` (ledger) rows, in one short transaction per batch
//!   ([`purge_tasks_batch`]); a task that is not terminal is never touched, and a task that a
//!   redrive moved on between the read and the delete is left alone (the delete re-checks state
//!   and finish time under the row locks);
//! - a **dead-letter index row** that died before the horizon ([`purge_dead_letters_batch`]); the
//!   caller makes that horizon no later than the DLQ topic's own retention, so an index row never
//!   points at a payload Kafka has deleted.
//!
//! Each batch reads at most `limit` candidates through an index (`ix_tasks_tenant_state_updated`,
//! `ix_dead_letters_tenant_dead`), then deletes them by primary key (task ids; dead-letter ids)
//! in READ COMMITTED, so the purge takes record locks on the rows it deletes and no gap locks,
//! for the few milliseconds a batch takes. Statements run on the connection the caller passes:
//! the processor runs them on the connection that holds the retention leader lock
//! ([`crate::leader`], [`LOCK`]), so a purge never runs without the lock, and two never run at once.
//!
//! After a tenant's tasks are purged up to a horizon, [`record_horizon`] keeps it
//! (`retention_horizons`): the reader answers GetTask of a missing task whose id (a UUIDv7)
//! was created before it with a NOT_FOUND that says the task was purged ([`purged_message`]).
//!
//! Over 400 lines only by its unit tests (the code ends near line 399): the purge of tasks and
//! that of dead letters share the candidate reads, the READ COMMITTED batches and the horizons.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use dispatch_core::{TaskId, TaskState};
use sqlx::{Connection, MySql, MySqlConnection, QueryBuilder, Row};

use crate::Result;

/// The retention leader lock's name (see [`crate::leader`]).
pub const LOCK: &str = "dispatch_retention";

/// The states a task may be purged in.
pub const TERMINAL: [TaskState; 3] = [TaskState::Succeeded, TaskState::Dead, TaskState::Cancelled];

/// Rows one [`purge_tasks_batch`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskPurge {
    /// `tasks` rows.
    pub tasks: u64,
    /// `task_attempts` rows.
    pub attempts: u64,
    /// `handler_executions` (ledger) rows.
    pub executions: u64,
    /// `workflow_nodes` rows (with their edges; a workflow whose last node went goes too).
    pub workflow_nodes: u64,
    /// Candidates read (the batch is full when this equals the limit: more may wait).
    pub candidates: u64,
}

/// The first tenant after `after` (in the column's order) that has tasks or dead letters; `""`
/// starts from the first. Two index look-ups, however large the tables are.
///
/// # Errors
/// Database errors.
pub async fn next_tenant(conn: &mut MySqlConnection, after: &str) -> Result<Option<String>> {
    let (a,): (Option<String>,) = sqlx::query_as("SELECT MIN(tenant) FROM tasks WHERE tenant > ?")
        .bind(after)
        .fetch_one(&mut *conn)
        .await?;
    let (b,): (Option<String>,) =
        sqlx::query_as("SELECT MIN(tenant) FROM dead_letters WHERE tenant > ?")
            .bind(after)
            .fetch_one(&mut *conn)
            .await?;
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// ` AND state IN ('succeeded', 'dead', 'cancelled') AND finished_at < before`: what makes a
/// task expired, checked when candidates are read and again under the row locks.
fn push_expired(qb: &mut QueryBuilder<'_, MySql>, before: DateTime<Utc>) {
    // The fault build forgets that only finished tasks may go.
    if cfg!(feature = "fault-purge-any-state") {
        return;
    }
    qb.push(" AND state IN (");
    let mut sep = qb.separated(", ");
    for s in TERMINAL {
        sep.push_bind(s.as_str());
    }
    qb.push(") AND finished_at < ").push_bind(before);
    // A workflow node stays while a node that depends on it has not finished: the advancer
    // decides that node by this one's state, and its handler may read this one's result.
    qb.push(
        " AND NOT EXISTS (SELECT 1 FROM workflow_edges e JOIN tasks t ON t.task_id = e.task_id \
         WHERE e.depends_on = tasks.task_id AND t.state NOT IN ('succeeded', 'dead', 'cancelled'))",
    );
}

/// The statement [`purge_tasks_batch`] reads its candidates with (`prefix`: `EXPLAIN ` or empty).
fn candidates_query<'a>(
    prefix: &str,
    tenant: &'a str,
    before: DateTime<Utc>,
    limit: u32,
) -> QueryBuilder<'a, MySql> {
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new(format!("{prefix}SELECT task_id FROM tasks WHERE tenant = "));
    qb.push_bind(tenant);
    // A terminal row's updated_at is its finished_at (they are written together, and a terminal
    // row never changes again): updated_at is the indexed one.
    qb.push(" AND updated_at < ").push_bind(before);
    push_expired(&mut qb, before);
    qb.push(" LIMIT ").push_bind(limit);
    qb
}

/// The plan of the candidate read of [`purge_tasks_batch`]: one `key | Extra` line per table.
///
/// # Errors
/// Database errors.
pub async fn explain_candidates(
    conn: &mut MySqlConnection,
    tenant: &str,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<String>> {
    crate::tasks::explain_lines(
        candidates_query("EXPLAIN ", tenant, before, limit)
            .build()
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// The first column of every row: the ids a query selected.
fn first_column(rows: Vec<sqlx::mysql::MySqlRow>) -> Result<Vec<Vec<u8>>> {
    Ok(rows
        .iter()
        .map(|r| r.try_get::<Vec<u8>, _>(0))
        .collect::<std::result::Result<_, _>>()?)
}

fn push_ids(qb: &mut QueryBuilder<'_, MySql>, ids: &[Vec<u8>]) {
    let mut sep = qb.separated(", ");
    for id in crate::padded(ids).iter() {
        sep.push_bind(id.clone());
    }
    qb.push(")");
}

/// Deletes up to `limit` of `tenant`'s terminal tasks that finished before `before`, with their
/// attempts and ledger rows: the candidates are read without locks, then, in one READ COMMITTED
/// transaction, locked by primary key with the conditions checked again (a redrive may have made
/// one non-terminal meanwhile), and deleted with their child rows.
///
/// # Errors
/// Database errors (the transaction is rolled back: nothing of the batch is deleted).
pub async fn purge_tasks_batch(
    conn: &mut MySqlConnection,
    tenant: &str,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<TaskPurge> {
    let ids = first_column(
        candidates_query("", tenant, before, limit)
            .build()
            .fetch_all(&mut *conn)
            .await?,
    )?;
    let mut out = TaskPurge {
        candidates: ids.len() as u64,
        ..TaskPurge::default()
    };
    if ids.is_empty() {
        return Ok(out);
    }
    // Applies to the next transaction only: record locks on the rows deleted, no gap locks.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let mut tx = conn.begin().await?;
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("SELECT task_id FROM tasks WHERE tenant = ");
    qb.push_bind(tenant)
        .push(" AND updated_at < ")
        .push_bind(before);
    push_expired(&mut qb, before);
    qb.push(" AND task_id IN (");
    push_ids(&mut qb, &ids);
    qb.push(" FOR UPDATE");
    let confirmed = first_column(qb.build().fetch_all(&mut *tx).await?)?;
    if confirmed.is_empty() {
        tx.commit().await?;
        return Ok(out);
    }
    // The workflows the purged nodes belong to (none for tasks submitted on their own).
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("SELECT DISTINCT workflow_id FROM workflow_nodes WHERE task_id IN (");
    push_ids(&mut qb, &confirmed);
    let workflows = first_column(qb.build().fetch_all(&mut *tx).await?)?;
    let mut edges = 0;
    for (table, slot) in [
        ("task_attempts", &mut out.attempts),
        ("handler_executions", &mut out.executions),
        ("workflow_edges", &mut edges),
        ("workflow_nodes", &mut out.workflow_nodes),
        ("tasks", &mut out.tasks),
    ] {
        if table.starts_with("workflow_") && workflows.is_empty() {
            continue;
        }
        let mut qb: QueryBuilder<MySql> =
            QueryBuilder::new(format!("DELETE FROM {table} WHERE task_id IN ("));
        push_ids(&mut qb, &confirmed);
        *slot = qb.build().execute(&mut *tx).await?.rows_affected();
    }
    if !workflows.is_empty() {
        // A node is purged only once it finished, and its dependents finish after it, so a
        // workflow with no node left is done with.
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "DELETE FROM workflows WHERE NOT EXISTS (SELECT 1 FROM workflow_nodes n \
             WHERE n.workflow_id = workflows.workflow_id) AND workflow_id IN (",
        );
        push_ids(&mut qb, &workflows);
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// Deletes up to `limit` of `tenant`'s dead-letter index rows that died before `before`, oldest
/// first, by primary key. Returns how many.
///
/// # Errors
/// Database errors.
pub async fn purge_dead_letters_batch(
    conn: &mut MySqlConnection,
    tenant: &str,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64> {
    let ids: Vec<(u64,)> = sqlx::query_as(
        "SELECT id FROM dead_letters WHERE tenant = ? AND dead_at < ? ORDER BY dead_at LIMIT ?",
    )
    .bind(tenant)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let ids: Vec<u64> = ids.into_iter().map(|(id,)| id).collect();
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("DELETE FROM dead_letters WHERE dead_at < ");
    qb.push_bind(before).push(" AND id IN (");
    let mut sep = qb.separated(", ");
    for id in crate::padded(&ids).iter() {
        sep.push_bind(*id);
    }
    qb.push(")");
    Ok(qb.build().execute(&mut *conn).await?.rows_affected())
}

/// Records that every terminal task of `tenant` that finished before `before` is purged. The
/// stored horizon only moves forward.
///
/// # Errors
/// Database errors.
pub async fn record_horizon(
    conn: &mut MySqlConnection,
    tenant: &str,
    before: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO retention_horizons (tenant, purged_before, updated_at) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE purged_before = GREATEST(purged_before, VALUES(purged_before)), \
         updated_at = VALUES(updated_at)",
    )
    .bind(tenant)
    .bind(before)
    .bind(Utc::now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The horizon `tenant`'s tasks are purged up to, if any purge finished for it.
///
/// # Errors
/// Database errors.
pub async fn horizon<'c, E>(executor: E, tenant: &str) -> Result<Option<DateTime<Utc>>>
where
    E: sqlx::Executor<'c, Database = MySql>,
{
    let row: Option<(DateTime<Utc>,)> =
        sqlx::query_as("SELECT purged_before FROM retention_horizons WHERE tenant = ?")
            .bind(tenant)
            .fetch_optional(executor)
            .await?;
    Ok(row.map(|(t,)| t))
}

/// When `id` was made, if it says (a UUIDv7 carries its creation time in milliseconds; an id
/// derived from an idempotency key does not).
pub fn id_created_at(id: TaskId) -> Option<DateTime<Utc>> {
    let uuid = id.uuid();
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// The NOT_FOUND message for a missing task `id` of a tenant whose tasks are purged up to
/// `horizon`: `Some` when the id was created before the horizon. A task created then that still
/// existed would be found (it is not terminal, or it finished after the horizon), so a missing
/// one, if it existed, finished before the horizon and was purged.
pub fn purged_message(id: TaskId, horizon: DateTime<Utc>) -> Option<String> {
    let created = id_created_at(id)?;
    (created < horizon).then(|| {
        format!(
            "task not found (purged: finished before {}, past this tenant's retention)",
            horizon.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    })
}

/// Per-tenant horizons, cached for a short time (the reader's NOT_FOUND path asks for one per
/// missing task). Holds at most a few thousand tenants; beyond that it starts over.
#[derive(Debug)]
pub struct HorizonCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Cached>>,
}

/// When a horizon was read, and what it was.
type Cached = (Instant, Option<DateTime<Utc>>);

const HORIZON_CACHE_MAX: usize = 4096;

impl HorizonCache {
    /// A cache whose answers are at most `ttl` old.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// [`horizon`] of `tenant`, from the cache when fresh.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get(&self, pool: &sqlx::MySqlPool, tenant: &str) -> Result<Option<DateTime<Utc>>> {
        {
            let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, h)) = map.get(tenant)
                && at.elapsed() < self.ttl
            {
                return Ok(*h);
            }
        }
        let h = horizon(pool, tenant).await?;
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= HORIZON_CACHE_MAX {
            map.clear();
        }
        map.insert(tenant.to_owned(), (Instant::now(), h));
        Ok(h)
    }
}

impl Default for HorizonCache {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_time_ordered_ids_created_before_the_horizon_are_reported_purged() {
        let id = TaskId::new();
        let created = id_created_at(id).expect("a v7 id carries its time");
        assert!((Utc::now() - created).num_seconds().abs() < 5, "{created}");
        let later = created + chrono::Duration::seconds(1);
        let msg = purged_message(id, later).expect("created before the horizon");
        assert!(msg.contains("purged"), "{msg}");
        assert!(
            msg.contains(&later.to_rfc3339_opts(SecondsFormat::Secs, true)),
            "{msg}"
        );
        assert_eq!(purged_message(id, created), None, "not before the horizon");
        let derived = TaskId::from_idempotency_key("acme", "k1");
        assert_eq!(id_created_at(derived), None);
        assert_eq!(purged_message(derived, Utc::now()), None);
    }
}
