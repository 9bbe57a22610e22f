//! The DLQ index (`dead_letters`): one row per record the processor parked on dispatch.dlq.

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use sqlx::MySqlPool;

use crate::Result;

/// A dead letter as indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    /// Task.
    pub task_id: TaskId,
    /// Owner.
    pub tenant: String,
    /// Type.
    pub task_type: String,
    /// Record key.
    pub business_key: String,
    /// Redrive generation it died in.
    pub generation: u32,
    /// `permanent`, `exhausted`, `deadline`, `poison`, `unknown_type`.
    pub error_class: String,
    /// Error text.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Provenance.
    pub original_topic: String,
    /// Provenance.
    pub original_partition: i32,
    /// Provenance.
    pub original_offset: i64,
    /// Coordinates on the DLQ topic.
    pub dlq_partition: i32,
    /// Coordinates on the DLQ topic.
    pub dlq_offset: i64,
    /// When it died.
    pub dead_at: DateTime<Utc>,
}

/// Indexes a dead letter; idempotent on its DLQ coordinates.
///
/// # Errors
/// Database errors.
pub async fn insert(pool: &MySqlPool, d: &DeadLetterRow) -> Result<()> {
    sqlx::query(
        "INSERT IGNORE INTO dead_letters (task_id, tenant, task_type, business_key, generation, error_class, error, \
         attempts, original_topic, original_partition, original_offset, dlq_partition, dlq_offset, dead_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(d.task_id.as_bytes().as_slice())
    .bind(&d.tenant)
    .bind(&d.task_type)
    .bind(&d.business_key)
    .bind(d.generation)
    .bind(&d.error_class)
    .bind(d.error.chars().take(1024).collect::<String>())
    .bind(d.attempts)
    .bind(&d.original_topic)
    .bind(d.original_partition)
    .bind(d.original_offset)
    .bind(d.dlq_partition)
    .bind(d.dlq_offset)
    .bind(d.dead_at)
    .execute(pool)
    .await?;
    Ok(())
}
