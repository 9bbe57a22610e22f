//! `consumption_pauses`: what operators paused, shared by every processor instance.
//!
//! AdminService writes here; each processor polls [`list`] and applies the result, so a pause
//! holds on whichever instance owns the partitions or runs the task type, and outlives restarts.

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, Row};

use crate::{Result, StoreError};

/// What a pause holds back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PauseTarget {
    /// A priority topic, by its name (`critical`, `default`, `low`).
    Priority(String),
    /// A task type.
    TaskType(String),
}

impl PauseTarget {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Self::Priority(p) => ("priority", p),
            Self::TaskType(t) => ("task_type", t),
        }
    }
}

/// A stored pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// What is held.
    pub target: PauseTarget,
    /// Since when.
    pub paused_at: DateTime<Utc>,
}

/// Records a pause; pausing what is already paused keeps the original time.
///
/// # Errors
/// Database errors.
pub async fn pause(pool: &MySqlPool, target: &PauseTarget, now: DateTime<Utc>) -> Result<()> {
    let (kind, name) = target.parts();
    sqlx::query("INSERT IGNORE INTO consumption_pauses (kind, target, paused_at) VALUES (?, ?, ?)")
        .bind(kind)
        .bind(name)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

/// Removes a pause; returns whether one was there.
///
/// # Errors
/// Database errors.
pub async fn resume(pool: &MySqlPool, target: &PauseTarget) -> Result<bool> {
    let (kind, name) = target.parts();
    let r = sqlx::query("DELETE FROM consumption_pauses WHERE kind = ? AND target = ?")
        .bind(kind)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Every pause, ordered by kind and target.
///
/// # Errors
/// Database errors; a row of an unknown kind (written by a newer version) is [`StoreError::Corrupt`].
pub async fn list(pool: &MySqlPool) -> Result<Vec<Pause>> {
    let rows =
        sqlx::query("SELECT kind, target, paused_at FROM consumption_pauses ORDER BY kind, target")
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            let name: String = r.try_get("target")?;
            let target = match kind.as_str() {
                "priority" => PauseTarget::Priority(name),
                "task_type" => PauseTarget::TaskType(name),
                other => return Err(StoreError::Corrupt(format!("unknown pause kind {other:?}"))),
            };
            Ok(Pause {
                target,
                paused_at: r.try_get("paused_at")?,
            })
        })
        .collect()
}
