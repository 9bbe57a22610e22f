//! The `handler_executions` ledger: one row per execution of the processor's `simulate` handler,
//! so fault tests can count how often each task really ran.

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::Result;

/// One execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// Task.
    pub task_id: TaskId,
    /// Redrive generation.
    pub generation: u32,
    /// Attempt.
    pub attempt: u32,
    /// When the handler finished its work.
    pub executed_at: DateTime<Utc>,
}

/// Records several executions in one statement. Ids grow in row order, so an execution recorded
/// after another one's call returned always has the higher id (fault tests read order from ids).
///
/// # Errors
/// Database errors.
pub async fn record_many(pool: &MySqlPool, rows: &[Execution]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // Not padded (see `crate::padded`): a repeated row would be a second execution.
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT INTO handler_executions (task_id, generation, attempt, executed_at) ",
    );
    qb.push_values(rows, |mut b, e| {
        b.push_bind(e.task_id.as_bytes().as_slice())
            .push_bind(e.generation)
            .push_bind(e.attempt)
            .push_bind(e.executed_at);
    });
    qb.build().execute(pool).await?;
    Ok(())
}
