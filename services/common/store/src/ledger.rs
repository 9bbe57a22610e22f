//! The `handler_executions` ledger: one row per execution of the processor's `simulate` handler,
//! so fault tests can count how often each task really ran.

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use sqlx::MySqlPool;

use crate::Result;

/// Records one execution.
///
/// # Errors
/// Database errors.
pub async fn record(
    pool: &MySqlPool,
    task_id: TaskId,
    generation: u32,
    attempt: u32,
    executed_at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO handler_executions (task_id, generation, attempt, executed_at) VALUES (?, ?, ?, ?)",
    )
    .bind(task_id.as_bytes().as_slice())
    .bind(generation)
    .bind(attempt)
    .bind(executed_at)
    .execute(pool)
    .await?;
    Ok(())
}
