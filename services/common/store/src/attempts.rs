//! The `task_attempts` table: one row per attempt, written by the processor's batch writer in the
//! same transaction as the task's state.

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use sqlx::{MySql, QueryBuilder};

use crate::Result;

/// One finished (or abandoned) attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    /// Task.
    pub task_id: TaskId,
    /// Redrive generation.
    pub generation: u32,
    /// 1-based attempt.
    pub attempt: u32,
    /// `succeeded`, `retryable`, `permanent`, `timeout`, `cancelled`.
    pub outcome: String,
    /// Error text (truncated to 1024 characters).
    pub error: String,
    /// When the handler started.
    pub started_at: DateTime<Utc>,
    /// When it returned.
    pub finished_at: DateTime<Utc>,
}

/// Inserts `rows` in one statement on `conn` (call inside the writer's transaction). A replayed
/// attempt (same task, generation, attempt) replaces the earlier row.
///
/// # Errors
/// Database errors.
pub async fn insert_batch(
    conn: &mut sqlx::MySqlConnection,
    rows: &[impl std::borrow::Borrow<AttemptRow> + Sync],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<&AttemptRow> = rows.iter().map(std::borrow::Borrow::borrow).collect();
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT INTO task_attempts (task_id, generation, attempt, outcome, error, started_at, finished_at, duration_ms) ",
    );
    let rows = crate::padded(&rows);
    qb.push_values(rows.iter(), |mut b, r| {
        let ms = (r.finished_at - r.started_at)
            .num_milliseconds()
            .clamp(0, i64::from(u32::MAX));
        b.push_bind(r.task_id.as_bytes().as_slice())
            .push_bind(r.generation)
            .push_bind(r.attempt)
            .push_bind(&r.outcome)
            .push_bind(r.error.chars().take(1024).collect::<String>())
            .push_bind(r.started_at)
            .push_bind(r.finished_at)
            .push_bind(ms as u32);
    });
    qb.push(
        " ON DUPLICATE KEY UPDATE outcome = VALUES(outcome), error = VALUES(error), \
         started_at = VALUES(started_at), finished_at = VALUES(finished_at), duration_ms = VALUES(duration_ms)",
    );
    qb.build().execute(&mut *conn).await?;
    Ok(())
}
