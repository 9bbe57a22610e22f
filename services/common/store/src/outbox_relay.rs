//! The gateway's outbox SQL beyond [`crate::outbox`]: a per-key ordered relay claim, the relay's
//! leader lock, and the lookups the gateway's sticky routing and idempotency fallback need.
//!
//! Why not [`crate::outbox::relay_batch`]: it claims every *due* row, so while an older row of a
//! key waits out its backoff a newer row of the same key can be published first. The gateway
//! promises per-key order across the outbox, so [`relay_ordered`] blocks a `(topic, key)` behind
//! its oldest pending row: a row is published only when no older pending row of its key is still
//! waiting.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use dispatch_core::{Envelope, TaskId};
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};

use crate::outbox::{OutboxRecord, decode_headers};
use crate::{Result, StoreError};

/// Whether any outbox row is still waiting to be published.
///
/// # Errors
/// Database errors.
pub async fn has_pending(pool: &MySqlPool) -> Result<bool> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT EXISTS(SELECT 1 FROM outbox WHERE state = 'pending' LIMIT 1)")
            .fetch_one(pool)
            .await?;
    Ok(n != 0)
}

/// Where a task id is already known durably.
#[derive(Debug, Clone, PartialEq)]
pub enum KnownTask {
    /// A row in `tasks` (the processor has seen it).
    Stored {
        /// Owner.
        tenant: String,
    },
    /// A row in the outbox, with the envelope it carries.
    Outboxed {
        /// Row id.
        outbox_id: u64,
        /// Destination topic.
        topic: String,
        /// The record's envelope.
        envelope: Box<Envelope>,
    },
}

/// Looks a task id up in `tasks`, then in the outbox (its submit row; cancel rows are not tasks).
///
/// # Errors
/// Database errors; a corrupt outbox value.
pub async fn find_task(pool: &MySqlPool, id: TaskId) -> Result<Option<KnownTask>> {
    Ok(find_tasks(pool, &[id]).await?.remove(&id))
}

/// [`find_task`] for several ids, in two statements (a batch of idempotent submits while Redis
/// cannot vouch for them). A placeholder row (written by a cancel that overtook its submit, with
/// no task type) is not a task: the submit it waits for must still be accepted.
///
/// # Errors
/// Database errors; a corrupt outbox value.
pub async fn find_tasks(pool: &MySqlPool, ids: &[TaskId]) -> Result<HashMap<TaskId, KnownTask>> {
    let mut found = HashMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT task_id, tenant FROM tasks WHERE task_type <> '' AND task_id IN (",
    );
    let mut sep = qb.separated(", ");
    for id in crate::padded(ids).iter() {
        sep.push_bind(id.as_bytes().to_vec());
    }
    qb.push(")");
    for r in qb.build().fetch_all(pool).await? {
        let id = TaskId::from_slice(r.try_get::<Vec<u8>, _>("task_id")?.as_slice())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        found.insert(
            id,
            KnownTask::Stored {
                tenant: r.try_get("tenant")?,
            },
        );
    }
    let rest: Vec<TaskId> = ids
        .iter()
        .filter(|id| !found.contains_key(id))
        .copied()
        .collect();
    if rest.is_empty() {
        return Ok(found);
    }
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("SELECT id, task_id, topic, record_value FROM outbox WHERE task_id IN (");
    let mut sep = qb.separated(", ");
    for id in crate::padded(&rest).iter() {
        sep.push_bind(id.as_bytes().to_vec());
    }
    qb.push(") ORDER BY id");
    for r in qb.build().fetch_all(pool).await? {
        let id = TaskId::from_slice(r.try_get::<Vec<u8>, _>("task_id")?.as_slice())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if found.contains_key(&id) {
            continue; // one submit row per topic; the oldest is the task's first
        }
        let value: Vec<u8> = r.try_get("record_value")?;
        let envelope = Envelope::decode(&value)
            .map_err(|e| StoreError::Corrupt(format!("outbox value: {e}")))?;
        found.insert(
            id,
            KnownTask::Outboxed {
                outbox_id: r.try_get("id")?,
                topic: r.try_get("topic")?,
                envelope: Box::new(envelope),
            },
        );
    }
    Ok(found)
}

/// The relay's leader lock name: one per database (MariaDB named locks are server-wide, and
/// several dispatch databases may share one server).
const LOCK_SQL: &str = "SELECT GET_LOCK(CONCAT('dispatch_outbox_relay.', DATABASE()), 0)";

/// Tries to take the relay leader lock on `conn` without waiting. The lock lives as long as the
/// connection (or until [`release_relay_lock`]); keep `conn` out of any pool while holding it.
///
/// # Errors
/// Database errors.
pub async fn try_relay_lock(conn: &mut MySqlConnection) -> Result<bool> {
    let (got,): (Option<i64>,) = sqlx::query_as(LOCK_SQL).fetch_one(&mut *conn).await?;
    Ok(got == Some(1))
}

/// Whether `conn` still holds the relay lock (false if the lock was lost or the connection died).
///
/// # Errors
/// Database errors (the connection is gone: the lock is lost).
pub async fn holds_relay_lock(conn: &mut MySqlConnection) -> Result<bool> {
    let (held,): (Option<i64>,) = sqlx::query_as(
        "SELECT IS_USED_LOCK(CONCAT('dispatch_outbox_relay.', DATABASE())) = CONNECTION_ID()",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(held == Some(1))
}

/// Releases the relay lock held by `conn`.
///
/// # Errors
/// Database errors.
pub async fn release_relay_lock(conn: &mut MySqlConnection) -> Result<()> {
    sqlx::query("SELECT RELEASE_LOCK(CONCAT('dispatch_outbox_relay.', DATABASE()))")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Claims pending rows in id order (a window of `limit` rows), keeps those that are due and not
/// behind an older pending row of the same `(topic, key)`, runs `publish` on them while holding
/// the row locks, and applies its verdicts in the same transaction: published rows are marked
/// `published`; failed rows get `attempts + 1`, `next_attempt_at = now + backoff(attempts)`, and
/// become `dead` after `max_attempts`. Returns (published, failed).
///
/// # Errors
/// Database errors (the transaction rolls back and the rows stay pending).
pub async fn relay_ordered<F, Fut>(
    pool: &MySqlPool,
    limit: u32,
    max_attempts: u32,
    backoff: impl Fn(u32) -> std::time::Duration,
    publish: F,
) -> Result<(usize, usize)>
where
    F: FnOnce(Vec<OutboxRecord>) -> Fut,
    Fut: std::future::Future<Output = Vec<std::result::Result<(), String>>>,
{
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT id, task_id, topic, record_key, record_value, headers, attempts, created_at, next_attempt_at \
         FROM outbox WHERE state = 'pending' ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let now = Utc::now();
    let mut blocked: HashSet<(String, Vec<u8>)> = HashSet::new();
    let mut records = Vec::new();
    for r in &rows {
        let topic: String = r.try_get("topic")?;
        let key: Vec<u8> = r.try_get("record_key")?;
        let due: DateTime<Utc> = r.try_get("next_attempt_at")?;
        let route = (topic, key);
        if blocked.contains(&route) {
            continue;
        }
        if due > now {
            blocked.insert(route);
            continue;
        }
        let (topic, key) = route;
        records.push(OutboxRecord {
            id: r.try_get("id")?,
            task_id: TaskId::from_slice(r.try_get::<Vec<u8>, _>("task_id")?.as_slice())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            topic,
            key,
            value: r.try_get("record_value")?,
            // TEXT with a binary collation reads as BLOB: decode the bytes.
            headers: decode_headers(&String::from_utf8_lossy(
                &r.try_get::<Vec<u8>, _>("headers")?,
            ))?,
            attempts: r.try_get("attempts")?,
            created_at: r.try_get("created_at")?,
        });
    }
    if records.is_empty() {
        return Ok((0, 0));
    }
    let meta: Vec<(u64, u32)> = records.iter().map(|r| (r.id, r.attempts)).collect();
    let verdicts = publish(records).await;
    let now = Utc::now();
    let mut published: Vec<u64> = Vec::new();
    let mut failed = 0;
    for ((id, attempts), verdict) in meta.into_iter().zip(verdicts) {
        match verdict {
            Ok(()) => published.push(id),
            Err(e) => {
                failed += 1;
                let attempts = attempts + 1;
                let state = if attempts >= max_attempts {
                    "dead"
                } else {
                    "pending"
                };
                let next = now + chrono::Duration::from_std(backoff(attempts)).unwrap_or_default();
                sqlx::query(
                    "UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                )
                .bind(state)
                .bind(attempts)
                .bind(next)
                .bind(e.chars().take(1024).collect::<String>())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    for chunk in published.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let sql = format!(
            "UPDATE outbox SET state = 'published', published_at = ?, attempts = attempts + 1 WHERE id IN ({marks})"
        );
        let mut q = sqlx::query(&sql).bind(now);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((published.len(), failed))
}
