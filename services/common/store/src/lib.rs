//! MySQL (MariaDB locally) access for dispatch: explicit SQL with sqlx, no ORM, no foreign keys.
//!
//! - [`pool`]: [`DbSettings`] and [`connect`], a pool with bounded size, idle and lifetime, that
//!   retries the first connection with exponential backoff.
//! - [`migrate`]: versioned migrations with up *and* down scripts (`migrations/`).
//! - [`tasks`]: the `tasks` table: version-fenced batch upserts, lookups and listing.
//! - [`outbox`]: the submit outbox the gateway falls back to and the relay drains.
//! - [`outbox_relay`]: the gateway's per-key ordered relay claim, its leader lock, and task lookups.
//! - [`dead_letters`]: the DLQ index operators filter, redrive and purge.
//! - [`dead_letters_admin`]: AdminService's side of it: list, purge, claim rows for a redrive.
//! - [`attempts`]: the per-attempt history the processor's batch writer records.
//! - [`scheduler`]: claiming due scheduled tasks (`FOR UPDATE SKIP LOCKED`).
//! - [`pauses`]: operator pauses of consumption, shared by every processor instance.
//! - [`ledger`]: the `simulate` handler's execution ledger (fault tests count executions).

pub mod attempts;
pub mod dead_letters;
pub mod dead_letters_admin;
pub mod ledger;
pub mod migrate;
pub mod outbox;
pub mod outbox_relay;
pub mod pauses;
pub mod pool;
pub mod scheduler;
pub mod tasks;

pub use pool::{DbSettings, connect};
pub use sqlx::MySqlPool;

/// Any store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migration failure.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not decode into the domain (corruption or a newer writer).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
