//! `idempotency_keys`: what each (tenant, idempotency key) was first submitted with.
//!
//! The gateway binds a key to the fingerprint of its submit's parameters before it makes the task
//! durable ([`bind`]); a later submit with the same key and another fingerprint is a conflict. The
//! primary key is the task id, which the gateway derives from (tenant, idempotency key), so one
//! statement settles a race between two gateway instances: the first insert wins and the second
//! reads the winner's fingerprint. Rows are purged after a retention ([`purge`]); after that the
//! task id still dedupes (one task, one execution), but parameters are no longer compared.

use chrono::{DateTime, Utc};
use dispatch_core::{Priority, TaskId};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::{Result, StoreError};

/// One key to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Derived from (tenant, idempotency key).
    pub task_id: TaskId,
    /// Owner.
    pub tenant: String,
    /// The client's key.
    pub idempotency_key: String,
    /// The submit's record key (routes a cancel before the task is stored).
    pub business_key: String,
    /// The submit's priority (picks the cancel's topic).
    pub priority: Priority,
    /// Opaque fingerprint of the submit's parameters.
    pub fingerprint: Vec<u8>,
}

/// What [`bind`] found for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// The key was not bound: it is now, to this fingerprint (so no submit with this key is
    /// known, unless its row was purged).
    Inserted,
    /// The key is bound to this fingerprint (by an earlier submit with equal parameters, or by
    /// this call when a batch could not tell which of its rows it inserted).
    Same,
    /// The key is bound to another fingerprint (returned).
    Other(Vec<u8>),
}

/// Rows per statement.
const CHUNK: usize = 500;

/// Binds every key to its fingerprint unless it is bound already, and answers for each (in input
/// order) whether the stored fingerprint is the given one.
///
/// # Errors
/// Database errors.
pub async fn bind(pool: &MySqlPool, keys: &[Binding]) -> Result<Vec<Bound>> {
    let now = Utc::now();
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT IGNORE INTO idempotency_keys \
             (task_id, tenant, idempotency_key, business_key, priority, fingerprint, created_at) ",
        );
        // In key order: concurrent statements over overlapping keys then lock them in the same
        // order (no deadlock).
        let mut sorted: Vec<&Binding> = chunk.iter().collect();
        sorted.sort_by_key(|k| *k.task_id.as_bytes());
        qb.push_values(sorted, |mut b, k| {
            b.push_bind(k.task_id.as_bytes().to_vec())
                .push_bind(&k.tenant)
                .push_bind(&k.idempotency_key)
                .push_bind(&k.business_key)
                .push_bind(priority_code(k.priority))
                .push_bind(&k.fingerprint)
                .push_bind(now);
        });
        let inserted = qb.build().execute(pool).await?.rows_affected();
        if inserted == chunk.len() as u64 {
            out.extend(chunk.iter().map(|_| Bound::Inserted));
            continue;
        }
        // Some were bound before: read what they are bound to.
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT task_id, fingerprint FROM idempotency_keys WHERE task_id IN (",
        );
        let mut sep = qb.separated(", ");
        for k in chunk {
            sep.push_bind(k.task_id.as_bytes().to_vec());
        }
        qb.push(")");
        let rows = qb.build().fetch_all(pool).await?;
        let mut stored = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let id: Vec<u8> = r.try_get("task_id")?;
            let fp: Vec<u8> = r.try_get("fingerprint")?;
            stored.insert(id, fp);
        }
        for k in chunk {
            match stored.get(k.task_id.as_bytes().as_slice()) {
                Some(fp) if *fp != k.fingerprint => out.push(Bound::Other(fp.clone())),
                Some(_) => out.push(Bound::Same),
                // Purged between the two statements: nothing to compare with any more.
                None => out.push(Bound::Same),
            }
        }
    }
    Ok(out)
}

/// The owner and route of a task submitted with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Tenant.
    pub tenant: String,
    /// Record key.
    pub business_key: String,
    /// Topic selector.
    pub priority: Priority,
}

/// Who submitted `task_id` (only tasks submitted with an idempotency key have a row).
///
/// # Errors
/// Database errors; a corrupt priority.
pub async fn owner(pool: &MySqlPool, task_id: TaskId) -> Result<Option<Owner>> {
    let row = sqlx::query(
        "SELECT tenant, business_key, priority FROM idempotency_keys WHERE task_id = ?",
    )
    .bind(task_id.as_bytes().as_slice())
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let code: u8 = r.try_get("priority")?;
    Ok(Some(Owner {
        tenant: text(&r, "tenant")?,
        business_key: text(&r, "business_key")?,
        priority: priority_from_code(code)
            .ok_or_else(|| StoreError::Corrupt(format!("idempotency_keys.priority {code}")))?,
    }))
}

/// Deletes up to `limit` rows created before `before`; returns how many.
///
/// # Errors
/// Database errors.
pub async fn purge(pool: &MySqlPool, before: DateTime<Utc>, limit: u32) -> Result<u64> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ? LIMIT ?")
        .bind(before)
        .bind(limit)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// A text column with a binary collation (sqlx reads those as bytes).
fn text(r: &sqlx::mysql::MySqlRow, column: &str) -> Result<String> {
    let bytes: Vec<u8> = r.try_get(column)?;
    String::from_utf8(bytes)
        .map_err(|e| StoreError::Corrupt(format!("idempotency_keys.{column}: {e}")))
}

/// The stored code of a priority (the protobuf enum value).
fn priority_code(p: Priority) -> u8 {
    u8::try_from(p.to_proto() as i32).unwrap_or(0)
}

fn priority_from_code(code: u8) -> Option<Priority> {
    Priority::from_proto_i32(i32::from(code)).ok()
}
