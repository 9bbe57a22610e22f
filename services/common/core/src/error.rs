//! Field violations and their one mapping to a gRPC status.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path such as `task.business_key`.
    pub field: String,
    /// What is wrong, e.g. "is required".
    pub description: String,
}

/// Every violation found in one request (validation never stops at the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records the error of a `Result`, returning its value if any.
    pub fn check<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.add(field, e)).ok()
    }

    /// Whether nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A one-line summary: `task.business_key is required; task.payload is ...`.
    pub fn summary(&self) -> String {
        self.0
            .iter()
            .map(|v| format!("{} {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// INVALID_ARGUMENT carrying a `google.rpc.BadRequest` with every field violation.
    pub fn to_status(&self) -> Status {
        let mut details = ErrorDetails::new();
        for v in &self.0 {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {}", self.summary()),
            details,
        )
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl std::error::Error for Violations {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_bad_request_details() {
        let mut v = Violations::default();
        v.add("task.business_key", "is required");
        v.add("task.payload", "is too large");
        let status = v.to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[0].field, "task.business_key");
        assert!(status.message().contains("task.payload is too large"));
    }
}
