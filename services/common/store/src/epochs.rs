//! Partition lease epochs: one counter per (consumer group, topic, partition), raised at every
//! assignment, so the successive owners of a partition are ordered. A write made for a record of
//! the partition carries its owner's epoch, and the `tasks` fence drops a write of an owner that
//! has been replaced (see `dispatch_core::version`).
//!
//! A new epoch is at least the wall clock in milliseconds: an owner that cannot reach MySQL when
//! it is assigned falls back to the clock, and stays ordered after the owners before it unless
//! clocks disagree by more than the time between the two assignments.

use sqlx::MySqlPool;

/// The clock fallback for an epoch (milliseconds since the epoch).
pub fn clock_epoch() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(1)
}

/// Raises and returns the epoch of each of `partitions` (topic, partition) for `group`, recording
/// `owner`. One transaction.
///
/// # Errors
/// Database errors.
pub async fn next(
    pool: &MySqlPool,
    group: &str,
    owner: &str,
    partitions: &[(String, i32)],
) -> crate::Result<Vec<u64>> {
    let floor = clock_epoch();
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        sqlx::query(
            "INSERT INTO partition_epochs (consumer_group, topic, partition_id, epoch, owner, updated_at) \
             VALUES (?, ?, ?, ?, ?, NOW(6)) \
             ON DUPLICATE KEY UPDATE epoch = GREATEST(epoch + 1, VALUES(epoch)), \
             owner = VALUES(owner), updated_at = VALUES(updated_at)",
        )
        .bind(group)
        .bind(topic)
        .bind(partition)
        .bind(floor)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        let epoch: u64 = sqlx::query_scalar(
            "SELECT epoch FROM partition_epochs WHERE consumer_group = ? AND topic = ? AND partition_id = ?",
        )
        .bind(group)
        .bind(topic)
        .bind(partition)
        .fetch_one(&mut *tx)
        .await?;
        out.push(epoch);
    }
    tx.commit().await?;
    Ok(out)
}
