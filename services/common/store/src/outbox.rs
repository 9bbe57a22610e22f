//! The outbox: records the gateway accepted while Kafka was unavailable (submits and cancels).
//!
//! The gateway inserts one row per accepted record in its own transaction; the relay publishes
//! them per key in id order, each after the previous is acknowledged, and a key whose oldest row
//! cannot be published stays blocked behind it ([`crate::outbox_relay`]): a failed row is
//! retried with backoff and becomes `dead` after too many attempts, still blocking its key until
//! an operator requeues it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dispatch_core::{Headers, TaskId};
use sqlx::{MySqlPool, Row};

use crate::{Result, StoreError};

/// A record to publish later.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    /// Row id (0 before insert).
    pub id: u64,
    /// The task it carries.
    pub task_id: TaskId,
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub key: Vec<u8>,
    /// Record value.
    pub value: Vec<u8>,
    /// Record headers.
    pub headers: Headers,
    /// Publish attempts so far.
    pub attempts: u32,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
}

fn encode_headers(h: &Headers) -> String {
    use base64::Engine as _;
    let map: BTreeMap<&str, String> = h
        .iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

/// Decodes the `headers` column (JSON of name -> base64 value).
pub(crate) fn decode_headers(s: &str) -> Result<Headers> {
    use base64::Engine as _;
    let map: BTreeMap<String, String> =
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("outbox headers: {e}")))?;
    let mut h = Headers::default();
    for (k, v) in map {
        let v = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| StoreError::Corrupt(format!("outbox header {k}: {e}")))?;
        h.set(&k, v);
    }
    Ok(h)
}

/// Inserts a submit record and returns its id. A second insert of the same (task, topic) returns
/// the first row's id (idempotent: a client retrying while Kafka is down gets one row).
///
/// # Errors
/// Database errors.
pub async fn insert(pool: &MySqlPool, r: &OutboxRecord) -> Result<u64> {
    insert_kind(pool, r, Kind::Submit).await
}

/// Inserts a cancel record and returns its id. Every cancel is a row of its own (it carries no
/// dedupe key): a cancel after a redrive must not be mistaken for an earlier one.
///
/// # Errors
/// Database errors.
pub async fn insert_cancel(pool: &MySqlPool, r: &OutboxRecord) -> Result<u64> {
    insert_kind(pool, r, Kind::Cancel).await
}

/// What an outbox row carries (`outbox.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A task's first record.
    Submit,
    /// A cancel command.
    Cancel,
}

impl Kind {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Cancel => "cancel",
        }
    }
}

async fn insert_kind(pool: &MySqlPool, r: &OutboxRecord, kind: Kind) -> Result<u64> {
    let (tx, id) = prepare(pool, r, kind).await?;
    tx.commit().await?;
    Ok(id)
}

/// Inserts a record in a transaction left open, and returns it with the row's id: the caller
/// commits, or drops it (the row is rolled back). The gateway commits only while the caller's
/// deadline still allows an answer, so a submit answered DEADLINE_EXCEEDED leaves no row.
///
/// # Errors
/// Database errors.
pub async fn prepare(
    pool: &MySqlPool,
    r: &OutboxRecord,
    kind: Kind,
) -> Result<(sqlx::Transaction<'static, sqlx::MySql>, u64)> {
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO outbox (task_id, topic, record_key, record_value, headers, next_attempt_at, created_at, kind, dedupe) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
    )
    .bind(r.task_id.as_bytes().as_slice())
    .bind(&r.topic)
    .bind(&r.key)
    .bind(&r.value)
    .bind(encode_headers(&r.headers))
    .bind(now)
    .bind(now)
    .bind(kind.as_str())
    .bind((kind == Kind::Submit).then_some(1u8))
    .execute(&mut *tx)
    .await?;
    let (id,): (u64,) = sqlx::query_as("SELECT LAST_INSERT_ID()")
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, id))
}

/// Outbox health: pending rows, dead rows, age of the oldest pending row in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows waiting to be published.
    pub pending: u64,
    /// Rows that failed too often (need an operator).
    pub dead: u64,
    /// Age of the oldest pending row.
    pub oldest_pending_age_seconds: f64,
}

/// Reads the backlog.
///
/// # Errors
/// Database errors.
pub async fn backlog(pool: &MySqlPool) -> Result<Backlog> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(state = 'pending'), 0) AS UNSIGNED), CAST(COALESCE(SUM(state = 'dead'), 0) AS UNSIGNED), \
         MIN(IF(state = 'pending', created_at, NULL)) FROM outbox WHERE state IN ('pending', 'dead')",
    )
    .fetch_one(pool)
    .await?;
    let oldest: Option<DateTime<Utc>> = row.try_get(2)?;
    Ok(Backlog {
        pending: row.try_get(0)?,
        dead: row.try_get(1)?,
        oldest_pending_age_seconds: oldest
            .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0),
    })
}

/// Deletes up to `limit` rows published before `before`, oldest first, and returns how many.
///
/// A published row is only kept so that the gateway can still recognise its task (idempotency
/// without Redis, cancel routing) until the processor stored it in `tasks`, which takes seconds;
/// the relay purges them after a retention of a day or so, a bounded batch per statement. The
/// statement reads only the rows it deletes (`ix_outbox_state_published`), so its locks never
/// reach the rows and gaps the gateway and the relay write.
///
/// # Errors
/// Database errors.
pub async fn purge_published<'c>(
    db: impl sqlx::MySqlExecutor<'c>,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM outbox WHERE state = 'published' AND published_at < ? \
         ORDER BY published_at LIMIT ?",
    )
    .bind(before)
    .bind(limit)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
