//! Leader election by MySQL named lock (`GET_LOCK`), shared by every single-leader loop: the
//! gateway's outbox relay ([`crate::outbox_relay`]) and the processor's retention purge
//! ([`crate::retention`]).
//!
//! A lock is per database (the name is suffixed with `DATABASE()`: named locks are server-wide,
//! and several dispatch databases may share one server) and lives as long as the connection that
//! took it. Keep that connection out of any pool while holding the lock; a crashed leader's
//! connection closes and the lock goes with it.

use sqlx::MySqlConnection;

use crate::Result;

/// Tries to take the lock `name` on `conn` without waiting. `name` is a short ASCII prefix such
/// as `dispatch_retention` (MySQL limits lock names to 64 characters, database name included).
///
/// # Errors
/// Database errors.
pub async fn try_lock(conn: &mut MySqlConnection, name: &str) -> Result<bool> {
    let (got,): (Option<i64>,) = sqlx::query_as("SELECT GET_LOCK(CONCAT(?, '.', DATABASE()), 0)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(got == Some(1))
}

/// Whether `conn` still holds the lock `name` (false if it was lost or the connection died).
///
/// # Errors
/// Database errors (the connection is gone: the lock is lost).
pub async fn holds_lock(conn: &mut MySqlConnection, name: &str) -> Result<bool> {
    let (held,): (Option<i64>,) =
        sqlx::query_as("SELECT IS_USED_LOCK(CONCAT(?, '.', DATABASE())) = CONNECTION_ID()")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    Ok(held == Some(1))
}

/// Releases the lock `name` held by `conn`.
///
/// # Errors
/// Database errors.
pub async fn release_lock(conn: &mut MySqlConnection, name: &str) -> Result<()> {
    sqlx::query("SELECT RELEASE_LOCK(CONCAT(?, '.', DATABASE()))")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
