//! The one rule for failures whose detail is not the caller's business (store errors, internal
//! errors, a dependency's own error text): the detail is logged here, in the RPC's span, and the
//! caller gets a generic message with the right code. Database error text (SQL, host names,
//! driver messages) never reaches a tenant.

use std::fmt::Display;

use dispatch_store::StoreError;
use tonic::{Code, Status};

/// What a caller reads when the store cannot answer.
pub const STORE_UNAVAILABLE: &str = "task store unavailable; retry shortly";

/// What a caller reads when a stored row cannot be read back.
pub const STORE_CORRUPT: &str = "a stored record could not be read; see the server log";

/// What a caller reads when Kafka did not take or give what the request needed.
pub const KAFKA_UNAVAILABLE: &str = "kafka unavailable; retry shortly";

/// What a caller reads for a bug or a broken runtime.
pub const INTERNAL: &str = "internal error; see the server log";

/// `code` with the generic `public` message; `detail` is logged (warn, or error for INTERNAL
/// and DATA_LOSS).
pub fn hidden(code: Code, public: &str, detail: &dyn Display) -> Status {
    if matches!(code, Code::Internal | Code::DataLoss) {
        tracing::error!(code = ?code, error = %detail, "request failed");
    } else {
        tracing::warn!(code = ?code, error = %detail, "request failed");
    }
    Status::new(code, public)
}

/// A store failure: UNAVAILABLE with [`STORE_UNAVAILABLE`], or INTERNAL with
/// [`STORE_CORRUPT`] for a row that does not decode; the error is logged.
pub fn store_error(e: &StoreError) -> Status {
    match e {
        StoreError::Corrupt(_) => hidden(Code::Internal, STORE_CORRUPT, e),
        StoreError::Db(_) | StoreError::Migrate(_) => {
            hidden(Code::Unavailable, STORE_UNAVAILABLE, e)
        }
    }
}

/// A bug or a broken runtime: INTERNAL with [`INTERNAL`]; the detail is logged.
pub fn internal(detail: &dyn Display) -> Status {
    hidden(Code::Internal, INTERNAL, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_detail_out_of_the_status() {
        let db = StoreError::Db(sqlx::Error::Protocol(
            "Access denied for user 'dispatch'@'10.0.0.7'".into(),
        ));
        let s = store_error(&db);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), STORE_UNAVAILABLE);
        let s = store_error(&StoreError::Corrupt("tasks.state = 9".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("state = 9"), "{}", s.message());
        let s = internal(&"JoinError: panicked at src/x.rs:1");
        assert_eq!((s.code(), s.message()), (Code::Internal, INTERNAL));
    }
}
