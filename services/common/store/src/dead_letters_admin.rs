//! Operator access to the DLQ index (`dead_letters`): filter, page, purge, and claim rows for a
//! redrive.
//!
//! A row is *open* while it is neither purged nor redriven. Listing shows every row that is not
//! purged (a redriven row shows its `redrive_id`); purging marks open rows; a redrive claims open,
//! non-poison rows with `FOR UPDATE SKIP LOCKED` inside a transaction ([`claim`]), produces them and
//! marks the moved ones in the same transaction ([`Claim::mark`]), so two concurrent redrives never
//! move the same dead letter and a crash before the commit leaves the rows open (the records it
//! already produced are fenced by the processor: same generation, same versions).

use chrono::{DateTime, Utc};
use dispatch_core::TaskId;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction};

use crate::Result;
use crate::dead_letters::DeadLetterRow;
use crate::tasks::{task_id, text};

/// Selects dead letters; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Owner.
    pub tenant: Option<String>,
    /// Task type.
    pub task_type: Option<String>,
    /// `permanent`, `exhausted`, `deadline`, `poison`, `unknown_type`.
    pub error_class: Option<String>,
    /// Died at or after this.
    pub dead_after: Option<DateTime<Utc>>,
    /// Died before this.
    pub dead_before: Option<DateTime<Utc>>,
}

/// A dead letter with its operator bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Row id (stable, increasing: the paging cursor).
    pub id: u64,
    /// What the processor indexed.
    pub row: DeadLetterRow,
    /// The redrive that moved it.
    pub redrive_id: Option<String>,
    /// When it was redriven.
    pub redriven_at: Option<DateTime<Utc>>,
    /// When it was purged.
    pub purged_at: Option<DateTime<Utc>>,
}

/// One page of [`list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Newest first.
    pub rows: Vec<StoredDeadLetter>,
    /// Rows matching the filter (all pages).
    pub total: u64,
    /// Pass as `before_id` for the next page; `None` on the last page.
    pub next_before_id: Option<u64>,
}

const COLUMNS: &str = "id, task_id, tenant, task_type, business_key, generation, error_class, error, attempts, \
     original_topic, original_partition, original_offset, dlq_partition, dlq_offset, dead_at, \
     redrive_id, redriven_at, purged_at";

/// Appends ` AND ...` for every set field of `f`.
fn push_filter(qb: &mut QueryBuilder<'_, MySql>, f: &DeadLetterFilter) {
    if let Some(t) = &f.tenant {
        qb.push(" AND tenant = ").push_bind(t.clone());
    }
    if let Some(t) = &f.task_type {
        qb.push(" AND task_type = ").push_bind(t.clone());
    }
    if let Some(c) = &f.error_class {
        qb.push(" AND error_class = ").push_bind(c.clone());
    }
    if let Some(t) = f.dead_after {
        qb.push(" AND dead_at >= ").push_bind(t);
    }
    if let Some(t) = f.dead_before {
        qb.push(" AND dead_at < ").push_bind(t);
    }
}

/// Rows an operator may still redrive or purge.
const OPEN: &str = " AND purged_at IS NULL AND redrive_id IS NULL";

fn decode(r: &MySqlRow) -> Result<StoredDeadLetter> {
    Ok(StoredDeadLetter {
        id: r.try_get("id")?,
        row: DeadLetterRow {
            task_id: task_id(r, "task_id")?,
            tenant: r.try_get("tenant")?,
            task_type: r.try_get("task_type")?,
            business_key: text(r, "business_key")?,
            generation: r.try_get("generation")?,
            error_class: r.try_get("error_class")?,
            error: text(r, "error")?,
            attempts: r.try_get("attempts")?,
            original_topic: r.try_get("original_topic")?,
            original_partition: r.try_get("original_partition")?,
            original_offset: r.try_get("original_offset")?,
            dlq_partition: r.try_get("dlq_partition")?,
            dlq_offset: r.try_get("dlq_offset")?,
            dead_at: r.try_get("dead_at")?,
        },
        redrive_id: r.try_get("redrive_id")?,
        redriven_at: r.try_get("redriven_at")?,
        purged_at: r.try_get("purged_at")?,
    })
}

/// Unpurged dead letters matching `f`, newest first, `limit` per page, before row `before_id`.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn list(
    pool: &MySqlPool,
    f: &DeadLetterFilter,
    before_id: Option<u64>,
    limit: u32,
) -> Result<Page> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE purged_at IS NULL"
    ));
    push_filter(&mut qb, f);
    if let Some(b) = before_id {
        qb.push(" AND id < ").push_bind(b);
    }
    // One extra row tells whether another page follows.
    qb.push(" ORDER BY id DESC LIMIT ")
        .push_bind(u64::from(limit) + 1);
    let mut rows = qb
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>>>()?;
    let next_before_id = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let mut count = QueryBuilder::new(
        "SELECT CAST(COUNT(*) AS UNSIGNED) FROM dead_letters WHERE purged_at IS NULL",
    );
    push_filter(&mut count, f);
    let total: u64 = count.build().fetch_one(pool).await?.try_get(0)?;
    Ok(Page {
        rows,
        total,
        next_before_id,
    })
}

/// The newest dead letter of `task_id` (purged or not).
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn latest_for_task(
    pool: &MySqlPool,
    task_id: TaskId,
) -> Result<Option<StoredDeadLetter>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE task_id = ? ORDER BY id DESC LIMIT 1"
    ))
    .bind(task_id.as_bytes().as_slice())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(decode).transpose()
}

/// How many open, non-poison dead letters match `f` (what a redrive would move).
///
/// # Errors
/// Database errors.
pub async fn count_redrivable(pool: &MySqlPool, f: &DeadLetterFilter) -> Result<u64> {
    let mut qb = QueryBuilder::new(format!(
        "SELECT CAST(COUNT(*) AS UNSIGNED) FROM dead_letters WHERE error_class <> 'poison'{OPEN}"
    ));
    push_filter(&mut qb, f);
    Ok(qb.build().fetch_one(pool).await?.try_get(0)?)
}

/// Open dead letters (neither purged nor redriven): the DLQ size operators care about.
///
/// # Errors
/// Database errors.
pub async fn open_count(pool: &MySqlPool) -> Result<u64> {
    let q = format!("SELECT CAST(COUNT(*) AS UNSIGNED) FROM dead_letters WHERE 1 = 1{OPEN}");
    Ok(sqlx::query(&q).fetch_one(pool).await?.try_get(0)?)
}

/// Marks the open dead letters matching `f` purged (or, with `dry_run`, counts them).
///
/// # Errors
/// Database errors.
pub async fn purge(pool: &MySqlPool, f: &DeadLetterFilter, dry_run: bool) -> Result<u64> {
    let mut qb = if dry_run {
        QueryBuilder::new(format!(
            "SELECT CAST(COUNT(*) AS UNSIGNED) FROM dead_letters WHERE 1 = 1{OPEN}"
        ))
    } else {
        QueryBuilder::new(format!(
            "UPDATE dead_letters SET purged_at = NOW(6) WHERE 1 = 1{OPEN}"
        ))
    };
    push_filter(&mut qb, f);
    if dry_run {
        Ok(qb.build().fetch_one(pool).await?.try_get(0)?)
    } else {
        Ok(qb.build().execute(pool).await?.rows_affected())
    }
}

/// Rows locked for one redrive batch; dropping it without [`Claim::mark`] releases them.
pub struct Claim {
    tx: Transaction<'static, MySql>,
    /// The claimed rows, in id order.
    pub rows: Vec<StoredDeadLetter>,
}

/// The newest row id (0 when empty). A redrive only claims rows up to the id it saw when it
/// started, so it never chases its own records when they die again.
///
/// # Errors
/// Database errors.
pub async fn last_id(pool: &MySqlPool) -> Result<u64> {
    Ok(
        sqlx::query("SELECT CAST(COALESCE(MAX(id), 0) AS UNSIGNED) FROM dead_letters")
            .fetch_one(pool)
            .await?
            .try_get(0)?,
    )
}

/// Locks up to `limit` open, non-poison rows matching `f` with `after_id < id <= up_to_id` (in
/// id order), skipping rows another redrive holds.
///
/// # Errors
/// Database errors or a corrupt row.
pub async fn claim(
    pool: &MySqlPool,
    f: &DeadLetterFilter,
    (after_id, up_to_id): (u64, u64),
    limit: u32,
) -> Result<Claim> {
    // READ COMMITTED: lock the claimed rows only, not the gap after them, so the processor keeps
    // indexing new dead letters while a redrive holds its batch.
    let mut tx = pool
        .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
        .await?;
    let mut qb = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE error_class <> 'poison'{OPEN} AND id > "
    ));
    qb.push_bind(after_id)
        .push(" AND id <= ")
        .push_bind(up_to_id);
    push_filter(&mut qb, f);
    qb.push(" ORDER BY id LIMIT ")
        .push_bind(limit)
        .push(" FOR UPDATE SKIP LOCKED");
    let rows = qb
        .build()
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>>>()?;
    Ok(Claim { tx, rows })
}

impl Claim {
    /// Releases the claimed rows now (an awaited rollback; dropping a claim also releases them,
    /// but only once the pool gets the connection back).
    ///
    /// # Errors
    /// Database errors.
    pub async fn release(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Marks `ids` (claimed rows whose records were produced) redriven by `redrive_id` and
    /// commits, releasing the rest.
    ///
    /// # Errors
    /// Database errors (nothing is marked then).
    pub async fn mark(mut self, ids: &[u64], redrive_id: &str) -> Result<()> {
        if !ids.is_empty() {
            let mut qb = QueryBuilder::new("UPDATE dead_letters SET redrive_id = ");
            qb.push_bind(redrive_id.to_owned())
                .push(", redriven_at = NOW(6) WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(*id);
            }
            qb.push(")");
            qb.build().execute(&mut *self.tx).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
