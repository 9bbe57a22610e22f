//! Operator views of the outbox: listing rows and requeueing dead ones (AdminService).

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::Result;
use crate::tasks::{task_id, text};

/// Row states. `discarded` is set by hand only (docs/runbook.md, DispatchOutboxKeyStuck): a dead
/// row that can never be published, taken out of its key's way.
pub const STATES: [&str; 4] = ["pending", "dead", "published", "discarded"];

/// An outbox row without its record value and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Row id (publication order).
    pub id: u64,
    /// The task it carries.
    pub task_id: TaskId,
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub key: Vec<u8>,
    /// `pending`, `dead` or `published`.
    pub state: String,
    /// Publish attempts so far.
    pub attempts: u32,
    /// The last publish error.
    pub last_error: String,
    /// When the gateway accepted it.
    pub created_at: DateTime<Utc>,
    /// When the relay tries it next (pending rows).
    pub next_attempt_at: DateTime<Utc>,
    /// When it was published.
    pub published_at: Option<DateTime<Utc>>,
}

/// Up to `limit` rows in one of `states` with an id above `after_id`, in id order.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn list(
    pool: &MySqlPool,
    states: &[&str],
    after_id: u64,
    limit: u32,
) -> Result<Vec<OutboxRow>> {
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT id, task_id, topic, record_key, state, attempts, last_error, created_at, \
         next_attempt_at, published_at FROM outbox WHERE id > ",
    );
    qb.push_bind(after_id).push(" AND state IN (");
    let mut sep = qb.separated(", ");
    for s in states {
        sep.push_bind(*s);
    }
    qb.push(") ORDER BY id LIMIT ").push_bind(limit);
    let rows = qb.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(OutboxRow {
                id: r.try_get("id")?,
                task_id: task_id(r, "task_id")?,
                topic: r.try_get("topic")?,
                key: r.try_get("record_key")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                last_error: text(r, "last_error")?,
                created_at: r.try_get("created_at")?,
                next_attempt_at: r.try_get("next_attempt_at")?,
                published_at: r.try_get("published_at")?,
            })
        })
        .collect()
}

/// Makes dead rows pending again: `ids` (those of them that are dead), or every dead row when
/// `ids` is `None`. Attempts start over and the rows are due at once; `last_error` stays for the
/// post-mortem until the next failure. With `dry_run`, only counts. Returns how many.
///
/// # Errors
/// Database errors.
pub async fn requeue_dead(pool: &MySqlPool, ids: Option<&[u64]>, dry_run: bool) -> Result<u64> {
    if ids.is_some_and(<[u64]>::is_empty) {
        return Ok(0);
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(if dry_run {
        "SELECT COUNT(*) FROM outbox WHERE state = 'dead'"
    } else {
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = NOW(6) \
         WHERE state = 'dead'"
    });
    if let Some(ids) = ids {
        qb.push(" AND id IN (");
        let mut sep = qb.separated(", ");
        for id in ids {
            sep.push_bind(*id);
        }
        qb.push(")");
    }
    if dry_run {
        let (n,): (i64,) = qb.build_query_as().fetch_one(pool).await?;
        return Ok(u64::try_from(n).unwrap_or(0));
    }
    Ok(qb.build().execute(pool).await?.rows_affected())
}
