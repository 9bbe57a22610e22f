//! Reading MySQL: the tasks' rows, the simulate handler's execution ledger
//! (`handler_executions`) and `task_attempts`.

use std::collections::HashMap;

use dispatch_core::{TaskId, TaskState};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};

use super::history::{AttemptRec, Exec, StoredRow};

fn ts_us(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_micros())
}

/// The rows `select` (a statement ending in `WHERE task_id IN (`) finds for `ids`, read 1,000 ids
/// at a time; `tail` follows the closing parenthesis.
async fn by_ids(
    pool: &MySqlPool,
    ids: &[TaskId],
    select: &str,
    tail: &str,
) -> anyhow::Result<Vec<MySqlRow>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(1000) {
        let mut qb = sqlx::QueryBuilder::new(select);
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_bytes().to_vec());
        }
        qb.push(")");
        qb.push(tail);
        out.extend(qb.build().fetch_all(pool).await?);
    }
    Ok(out)
}

pub(super) async fn rows(
    pool: &MySqlPool,
    ids: &[TaskId],
) -> anyhow::Result<HashMap<TaskId, StoredRow>> {
    let mut out = HashMap::new();
    for r in by_ids(
        pool,
        ids,
        "SELECT task_id, state, version, generation, finished_at, tenant, business_key FROM tasks WHERE task_id IN (",
        "",
    )
    .await?
    {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?;
            let st: String = r.try_get(1)?;
            let state =
                TaskState::parse(&st).ok_or_else(|| anyhow::anyhow!("unknown state {st}"))?;
            out.insert(
                id,
                StoredRow {
                    state,
                    version: r.try_get(2)?,
                    generation: r.try_get(3)?,
                    finished_us: ts_us(r.try_get(4)?),
                    tenant: r.try_get(5)?,
                    // utf8mb4_bin: the driver sees a binary string.
                    business_key: String::from_utf8_lossy(&r.try_get::<Vec<u8>, _>(6)?)
                        .into_owned(),
                },
            );
        }
    Ok(out)
}

pub(super) async fn ledger(
    pool: &MySqlPool,
    ids: &[TaskId],
) -> anyhow::Result<HashMap<TaskId, Vec<Exec>>> {
    let mut out: HashMap<TaskId, Vec<Exec>> = HashMap::new();
    for r in by_ids(
        pool,
        ids,
        "SELECT id, task_id, generation, attempt, executed_at, instance, started_at, outcome, claimed FROM handler_executions WHERE task_id IN (",
        " ORDER BY id",
    )
    .await?
    {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(1)?)?;
            let finished: chrono::DateTime<chrono::Utc> = r.try_get(4)?;
            out.entry(id).or_default().push(Exec {
                id: r.try_get(0)?,
                generation: r.try_get(2)?,
                attempt: r.try_get(3)?,
                finished_us: finished.timestamp_micros(),
                instance: r.try_get(5)?,
                started_us: ts_us(r.try_get(6)?),
                outcome: r.try_get(7)?,
                claimed: r.try_get(8)?,
            });
        }
    Ok(out)
}

pub(super) async fn attempts(
    pool: &MySqlPool,
    ids: &[TaskId],
) -> anyhow::Result<HashMap<TaskId, Vec<AttemptRec>>> {
    let mut out: HashMap<TaskId, Vec<AttemptRec>> = HashMap::new();
    for r in by_ids(
        pool,
        ids,
        "SELECT task_id, generation, attempt, outcome, started_at FROM task_attempts WHERE task_id IN (",
        "",
    )
    .await?
    {
            let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?;
            let started: chrono::DateTime<chrono::Utc> = r.try_get(4)?;
            out.entry(id).or_default().push(AttemptRec {
                generation: r.try_get(1)?,
                attempt: r.try_get(2)?,
                outcome: r.try_get(3)?,
                started_us: started.timestamp_micros(),
            });
        }
    Ok(out)
}

/// `cancel_requested_at` (µs) of the workflows that have one.
pub(super) async fn workflow_cancels(
    pool: &MySqlPool,
    ids: &[TaskId],
) -> anyhow::Result<HashMap<TaskId, i64>> {
    let mut out = HashMap::new();
    for r in by_ids(
        pool,
        ids,
        "SELECT workflow_id, cancel_requested_at FROM workflows WHERE workflow_id IN (",
        " AND cancel_requested_at IS NOT NULL",
    )
    .await?
    {
        let id = TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?;
        if let Some(t) = ts_us(r.try_get(1)?) {
            out.insert(id, t);
        }
    }
    Ok(out)
}

/// The stored results of these tasks (those that have one).
pub(super) async fn results(
    pool: &MySqlPool,
    ids: &[TaskId],
) -> anyhow::Result<HashMap<TaskId, Vec<u8>>> {
    let mut out = HashMap::new();
    for r in by_ids(
        pool,
        ids,
        "SELECT task_id, result FROM tasks WHERE task_id IN (",
        " AND result IS NOT NULL",
    )
    .await?
    {
        out.insert(
            TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?,
            r.try_get(1)?,
        );
    }
    Ok(out)
}
