//! The gateway's outbox SQL beyond [`crate::outbox`]: what the relay publishes next and what it
//! records afterwards, the relay's leader lock, and the lookups the gateway's routing and
//! idempotency fallback need.
//!
//! **A row never loses its place.** The relay publishes the rows of one `(topic, key)` strictly
//! in id order, the next only after the previous is acknowledged. A key whose oldest row cannot
//! be published is *blocked*: its head row waits out a backoff ([`blocked_keys`], `failing`), or
//! is `dead` after too many attempts and waits for an operator (`dead`); either way no later row
//! of the key is published before it ([`pending_window`] leaves blocked keys out), and the gateway
//! routes new records of a dead-blocked key to the outbox too ([`routing`]).
//!
//! The relay claims nothing with row locks: only the leader publishes (a named lock, checked
//! before every record, [`holds_relay_lock`]), reads a window of due rows, publishes, and
//! records the verdicts in a short transaction ([`record_verdicts`]) that only touches rows still
//! pending, so the gateway's outbox inserts never wait on a relay that waits on Kafka.
//!
//! Over 400 lines because the rule above (a blocked key publishes nothing past its head row) is
//! spelled out across several queries that must agree, kept side by side: routing, the blocked
//! keys, the pending window, the verdicts and the leader lock; the task lookups for the idempotency
//! fallback ([`find_task`], [`find_tasks`]), which do not read the outbox, would move out first.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use dispatch_core::{Envelope, TaskId};
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};

use crate::outbox::{OutboxRecord, decode_headers};
use crate::tasks::task_id;
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

/// What routes a new record: the keys with a pending row (a new record of such a key goes to the
/// outbox, behind it) and the keys blocked behind a dead row (their records go to the outbox until
/// an operator acts); past `limit` keys of either kind, everything goes to the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// A pending row of a key without a dead row exists.
    pub pending: bool,
    /// `(topic, key)` of every pending row (at most `limit`; see `pending_overflow`).
    pub pending_keys: HashSet<(String, Vec<u8>)>,
    /// More pending keys than `limit`: route everything to the outbox.
    pub pending_overflow: bool,
    /// `(topic, key)` of every dead row (at most `limit`; see `dead_overflow`).
    pub dead_keys: HashSet<(String, Vec<u8>)>,
    /// More dead keys than `limit`: route everything to the outbox.
    pub dead_overflow: bool,
}

/// Reads [`Routing`] (one snapshot: a read-only transaction).
///
/// # Errors
/// Database errors.
pub async fn routing(pool: &MySqlPool, limit: u32) -> Result<Routing> {
    let mut tx = pool.begin().await?;
    let rows =
        sqlx::query("SELECT DISTINCT topic, record_key FROM outbox WHERE state = 'dead' LIMIT ?")
            .bind(limit.saturating_add(1))
            .fetch_all(&mut *tx)
            .await?;
    let mut out = Routing::default();
    for r in &rows {
        out.dead_keys
            .insert((r.try_get("topic")?, r.try_get("record_key")?));
    }
    if out.dead_keys.len() > limit as usize {
        out.dead_overflow = true;
        out.pending = true;
        tx.commit().await?;
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT DISTINCT topic, record_key FROM outbox WHERE state = 'pending' LIMIT ?",
    )
    .bind(limit.saturating_add(1))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for r in &rows {
        out.pending_keys
            .insert((r.try_get("topic")?, r.try_get("record_key")?));
    }
    out.pending_overflow = out.pending_keys.len() > limit as usize;
    out.pending =
        out.pending_overflow || out.pending_keys.difference(&out.dead_keys).next().is_some();
    Ok(out)
}

/// ` AND (topic, record_key) NOT IN (...)` for a non-empty `keys`.
fn push_not_in(qb: &mut QueryBuilder<'_, MySql>, keys: &HashSet<(String, Vec<u8>)>) {
    if keys.is_empty() {
        return;
    }
    qb.push(" AND (topic, record_key) NOT IN (");
    let mut first = true;
    for (topic, key) in keys {
        if !first {
            qb.push(", ");
        }
        first = false;
        qb.push("(")
            .push_bind(topic.clone())
            .push(", ")
            .push_bind(key.clone())
            .push(")");
    }
    qb.push(")");
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
    crate::tasks::push_ids(&mut qb, ids);
    for r in qb.build().fetch_all(pool).await? {
        let id = task_id(&r, "task_id")?;
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
    crate::tasks::push_ids(&mut qb, &rest);
    qb.push(" ORDER BY id");
    for r in qb.build().fetch_all(pool).await? {
        let id = task_id(&r, "task_id")?;
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

/// The relay's leader lock (see [`crate::leader`]).
const RELAY_LOCK: &str = "dispatch_outbox_relay";

/// Tries to take the relay leader lock on `conn` without waiting. The lock lives as long as the
/// connection (or until [`release_relay_lock`]); keep `conn` out of any pool while holding it.
///
/// # Errors
/// Database errors.
pub async fn try_relay_lock(conn: &mut MySqlConnection) -> Result<bool> {
    crate::leader::try_lock(conn, RELAY_LOCK).await
}

/// Whether `conn` still holds the relay lock (false if the lock was lost or the connection died).
///
/// # Errors
/// Database errors (the connection is gone: the lock is lost).
pub async fn holds_relay_lock(conn: &mut MySqlConnection) -> Result<bool> {
    crate::leader::holds_lock(conn, RELAY_LOCK).await
}

/// Releases the relay lock held by `conn`.
///
/// # Errors
/// Database errors.
pub async fn release_relay_lock(conn: &mut MySqlConnection) -> Result<()> {
    crate::leader::release_lock(conn, RELAY_LOCK).await
}

/// Keys whose oldest row cannot be published now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocked {
    /// The head row failed and waits out its backoff.
    pub failing: HashSet<(String, Vec<u8>)>,
    /// A row is dead: the key waits for an operator (requeue).
    pub dead: HashSet<(String, Vec<u8>)>,
}

impl Blocked {
    /// Whether `(topic, key)` is blocked.
    pub fn contains(&self, topic: &str, key: &[u8]) -> bool {
        let k = (topic.to_owned(), key.to_vec());
        self.failing.contains(&k) || self.dead.contains(&k)
    }

    /// Every blocked key.
    pub fn all(&self) -> HashSet<(String, Vec<u8>)> {
        self.failing.union(&self.dead).cloned().collect()
    }
}

/// The keys blocked at `now` (at most `limit` of them): a dead row, or a pending row (its head:
/// only heads are attempted) whose retry is not due yet.
///
/// # Errors
/// Database errors.
/// Makes every pending row that waits out a publish backoff due now; returns how many. The
/// relay calls it once publishing works again (Kafka is back), so rows that failed during the
/// outage do not wait up to `outbox.relay_backoff_max_ms` after it.
///
/// # Errors
/// Database errors.
pub async fn retry_now(pool: &MySqlPool, now: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
    )
    .bind(now)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub async fn blocked_keys(pool: &MySqlPool, now: DateTime<Utc>, limit: u32) -> Result<Blocked> {
    let rows = sqlx::query(
        "SELECT DISTINCT topic, record_key, state FROM outbox \
         WHERE state = 'dead' OR (state = 'pending' AND next_attempt_at > ?) LIMIT ?",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Blocked::default();
    for r in &rows {
        let k = (r.try_get("topic")?, r.try_get("record_key")?);
        let state: String = r.try_get("state")?;
        if state == "dead" {
            out.dead.insert(k);
        } else {
            out.failing.insert(k);
        }
    }
    Ok(out)
}

/// The first `limit` pending rows in id order of the keys not in `blocked` (and not due later
/// than `now`: a row in backoff blocks its key). Reads without locks: only the relay leader
/// publishes, and [`record_verdicts`] touches only rows still pending.
///
/// # Errors
/// Database errors; a corrupt row.
pub async fn pending_window(
    pool: &MySqlPool,
    blocked: &Blocked,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<OutboxRecord>> {
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT id, task_id, topic, record_key, record_value, headers, attempts, created_at, next_attempt_at \
         FROM outbox WHERE state = 'pending'",
    );
    push_not_in(&mut qb, &blocked.all());
    qb.push(" ORDER BY id LIMIT ").push_bind(limit);
    let rows = qb.build().fetch_all(pool).await?;
    // A row of a key seen blocked in this window (not due) blocks the key's later rows too.
    let mut late: HashSet<(String, Vec<u8>)> = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let topic: String = r.try_get("topic")?;
        let key: Vec<u8> = r.try_get("record_key")?;
        let due: DateTime<Utc> = r.try_get("next_attempt_at")?;
        let route = (topic, key);
        if late.contains(&route) || blocked.contains(&route.0, &route.1) {
            continue;
        }
        if due > now {
            late.insert(route);
            continue;
        }
        let (topic, key) = route;
        out.push(OutboxRecord {
            id: r.try_get("id")?,
            task_id: task_id(r, "task_id")?,
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
    Ok(out)
}

/// The outcome of one publish attempt of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Row id.
    pub id: u64,
    /// Its attempts before this one.
    pub attempts: u32,
    /// Acknowledged, or the error.
    pub outcome: std::result::Result<(), String>,
}

/// Records publish outcomes in one short transaction, on rows still pending only (an operator,
/// or a newer relay leader, may have moved a row on meanwhile): published rows are marked
/// `published`; a failed row gets `attempts + 1` and `next_attempt_at = now + backoff(attempts)`
/// (its key stays blocked until then), and becomes `dead` after `max_attempts` (its key stays
/// blocked until an operator requeues it). Returns (published, failed).
///
/// # Errors
/// Database errors (nothing recorded: published rows are published again later, which the
/// processor dedupes by task id; failed rows are retried at once).
pub async fn record_verdicts(
    pool: &MySqlPool,
    verdicts: &[Verdict],
    max_attempts: u32,
    backoff: impl Fn(u32) -> std::time::Duration,
) -> Result<(usize, usize)> {
    if verdicts.is_empty() {
        return Ok((0, 0));
    }
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    let mut published: Vec<u64> = Vec::new();
    let mut failed = 0;
    for v in verdicts {
        match &v.outcome {
            Ok(()) => published.push(v.id),
            Err(e) => {
                failed += 1;
                let attempts = v.attempts + 1;
                let state = if attempts >= max_attempts {
                    "dead"
                } else {
                    "pending"
                };
                let next = now + chrono::Duration::from_std(backoff(attempts)).unwrap_or_default();
                sqlx::query(
                    "UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ? \
                     WHERE id = ? AND state = 'pending'",
                )
                .bind(state)
                .bind(attempts)
                .bind(next)
                .bind(e.chars().take(1024).collect::<String>())
                .bind(v.id)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    for chunk in published.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        let sql = format!(
            "UPDATE outbox SET state = 'published', published_at = ?, attempts = attempts + 1 \
             WHERE state = 'pending' AND id IN ({marks})"
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
