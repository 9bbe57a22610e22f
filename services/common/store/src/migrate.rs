//! Versioned migrations (`migrations/*.up.sql` and `*.down.sql`), embedded at compile time.

use sqlx::MySqlPool;
use sqlx::migrate::Migrator;

/// Every migration of this crate.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// One migration and whether it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Version (timestamp prefix of the file name).
    pub version: i64,
    /// Description (rest of the file name).
    pub description: String,
    /// Applied to this database.
    pub applied: bool,
}

/// Applies every pending migration.
///
/// # Errors
/// A failing script or a checksum mismatch with what was applied.
pub async fn up(pool: &MySqlPool) -> crate::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Reverts the latest `steps` applied migrations (running their down scripts).
///
/// # Errors
/// A failing down script.
pub async fn down(pool: &MySqlPool, steps: usize) -> crate::Result<()> {
    let applied = status(pool)
        .await?
        .into_iter()
        .filter(|m| m.applied)
        .map(|m| m.version)
        .collect::<Vec<_>>();
    if steps == 0 || applied.is_empty() {
        return Ok(());
    }
    // `undo` reverts everything above `target`.
    let target = if steps >= applied.len() {
        0
    } else {
        applied[applied.len() - steps - 1]
    };
    MIGRATOR.undo(pool, target).await?;
    Ok(())
}

/// Every known migration and whether it is applied.
///
/// # Errors
/// The database could not be read.
pub async fn status(pool: &MySqlPool) -> crate::Result<Vec<MigrationStatus>> {
    let exists: Option<(String,)> = sqlx::query_as(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    let applied: Vec<(i64,)> = if exists.is_some() {
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.iter().any(|(v,)| *v == m.version),
        })
        .collect())
}
