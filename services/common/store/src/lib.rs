//! MySQL (MariaDB locally) access for dispatch: explicit SQL with sqlx, no ORM, no foreign keys.
//!
//! - [`pool`]: [`DbSettings`] and [`connect`], a pool with bounded size, idle and lifetime, that
//!   retries the first connection with exponential backoff.
//! - [`migrate`]: versioned migrations with up *and* down scripts (`migrations/`).
//! - [`tasks`]: the `tasks` table: fenced batch upserts, lookups and listing.
//! - [`epochs`]: partition lease epochs, which order the successive owners of a partition.
//! - [`idempotency_keys`]: what each idempotency key was first submitted with (gateway).
//! - [`leader`]: leader election by MySQL named lock (outbox relay, retention).
//! - [`outbox`]: the submit outbox the gateway falls back to and the relay drains.
//! - [`outbox_admin`]: AdminService's side of it: list rows, requeue dead ones.
//! - [`outbox_relay`]: the gateway's per-key ordered relay claim, its leader lock, and task lookups.
//! - [`dead_letters`]: the DLQ index operators filter, redrive and purge.
//! - [`dead_letters_admin`]: AdminService's side of it: list, purge, claim rows for a redrive.
//! - [`attempts`]: the per-attempt history the processor's batch writer records.
//! - [`schedules`]: ScheduleService's schedules and the schedule loop's claims, fires and passes.
//! - [`scheduler`]: claiming due scheduled tasks (`FOR UPDATE SKIP LOCKED`).
//! - [`trace_context`]: the trace context a SCHEDULED task keeps until it is published.
//! - [`pauses`]: operator pauses of consumption, shared by every processor instance.
//! - [`retention`]: purging finished tasks, their attempts, ledger and dead-letter rows after a
//!   per-tenant retention, and the horizons GetTask tells a purged task by.
//! - [`ledger`]: the `simulate` handler's execution ledger (fault tests count executions).
//! - [`workflows`]: SubmitWorkflow's atomic insert, GetWorkflow's view, and the processor's
//!   workflow advancer (release, cancel).

pub mod attempts;
pub mod dead_letters;
pub mod dead_letters_admin;
pub mod epochs;
pub mod idempotency_keys;
pub mod leader;
pub mod ledger;
pub mod migrate;
pub mod outbox;
pub mod outbox_admin;
pub mod outbox_relay;
pub mod pauses;
pub mod pool;
pub mod retention;
pub mod scheduler;
pub mod schedules;
pub mod tasks;
pub mod trace_context;
pub mod workflows;

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

/// The sizes multi-row statements are padded to.
const SHAPES: [usize; 20] = [
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
];

/// `rows` padded to the next of a few fixed sizes by repeating the last row.
///
/// Every statement is prepared (and cached per connection) by its text, and a multi-row statement
/// has one text per row count: batches of every size between 1 and 500 made MariaDB parse a
/// statement with thousands of placeholders for most batches. Padded, a connection prepares a
/// handful of shapes once. Only for statements where a repeated row is a no-op: a version-fenced
/// upsert (the repeat finds its own row with an equal version), an attempt upsert with identical
/// values, a lookup by `IN (...)`.
pub(crate) fn padded<T: Clone>(rows: &[T]) -> std::borrow::Cow<'_, [T]> {
    let n = rows.len();
    match (rows.last(), SHAPES.iter().find(|&&s| s >= n)) {
        (Some(last), Some(&shape)) if shape > n => {
            let mut v = rows.to_vec();
            v.resize(shape, last.clone());
            std::borrow::Cow::Owned(v)
        }
        _ => std::borrow::Cow::Borrowed(rows),
    }
}

#[cfg(test)]
mod tests {
    use super::padded;

    #[test]
    fn padding_repeats_the_last_row_up_to_the_next_shape() {
        assert!(padded::<u8>(&[]).is_empty());
        assert_eq!(padded(&[7]).as_ref(), &[7]);
        assert_eq!(padded(&[1, 2, 3, 4, 5]).as_ref(), &[1, 2, 3, 4, 5, 5]);
        let big: Vec<u32> = (0..300).collect();
        let p = padded(&big);
        assert_eq!(p.len(), 384);
        assert_eq!(&p[..300], big.as_slice());
        assert!(p[300..].iter().all(|&x| x == 299));
        let huge: Vec<u32> = (0..2000).collect();
        assert_eq!(padded(&huge).len(), 2000, "beyond the largest shape: as is");
    }
}
