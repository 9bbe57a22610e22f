//! The `handler_executions` ledger: one row per execution of the processor's `simulate` handler,
//! so fault tests can count how often each task really ran, on which processor instance, and
//! whether two executions of one task overlapped in time.

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::Result;

/// How an execution ended (the ledger's `outcome` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// The handler succeeded.
    Ok,
    /// The handler returned a (simulated) failure.
    Failed,
    /// The handler stopped because its cancellation token fired.
    Cancelled,
    /// The handler panicked (the row is written just before the panic).
    Panic,
}

impl ExecutionOutcome {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Panic => "panic",
        }
    }
}

/// One execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// Task.
    pub task_id: TaskId,
    /// Redrive generation.
    pub generation: u32,
    /// Attempt.
    pub attempt: u32,
    /// Who ran it: `<hostname>:<pid>` of the processor (see [`instance_id`]).
    pub instance: String,
    /// When the handler started.
    pub started_at: DateTime<Utc>,
    /// When the handler finished its work (stored as `executed_at`).
    pub executed_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// The attempt's RUNNING was committed (awaited, not fenced out) before the handler started
    /// (the processor's `HandlerContext::claimed`).
    pub claimed: bool,
}

/// This process's instance id for the ledger: `<hostname>:<pid>`
/// ([`dispatch_core::instance::name`]) as the column holds it.
pub fn instance_id() -> String {
    // The column is VARCHAR(128) ascii.
    dispatch_core::instance::name()
        .chars()
        .filter(char::is_ascii_graphic)
        .rev()
        .take(128)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
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
        "INSERT INTO handler_executions (task_id, generation, attempt, executed_at, instance, started_at, outcome, claimed) ",
    );
    qb.push_values(rows, |mut b, e| {
        b.push_bind(e.task_id.as_bytes().as_slice())
            .push_bind(e.generation)
            .push_bind(e.attempt)
            .push_bind(e.executed_at)
            .push_bind(e.instance.as_str())
            .push_bind(e.started_at)
            .push_bind(e.outcome.as_str())
            .push_bind(e.claimed);
    });
    qb.build().execute(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_name_the_host_and_this_process() {
        let id = instance_id();
        assert!(id.ends_with(&format!(":{}", std::process::id())), "{id}");
        assert!(id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()));
    }
}
