//! The gateway's one error type and its one mapping to `tonic::Status`.

use dispatch_core::Violations;
use tonic::{Code, Status};

use crate::durable::Unavailable;
use crate::limits::Limited;

/// Metadata key of the retry hint on RESOURCE_EXHAUSTED.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Why a TaskService call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (field violations).
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// A rate limit was hit.
    #[error("rate limited ({})", .0.scope)]
    Limited(Limited),
    /// Kafka and the outbox both failed: nothing was accepted.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A cancel could not be published.
    #[error("kafka unavailable: {0}")]
    KafkaUnavailable(String),
    /// The store could not answer and nothing else could route the request.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// Unknown task (or another tenant's: indistinguishable on purpose).
    #[error("{0}")]
    NotFound(String),
    /// A bug or a panic in a request task.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The gRPC code (also used for per-item batch errors).
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Limited(_) => Code::ResourceExhausted,
            Self::Unavailable(_) | Self::KafkaUnavailable(_) | Self::StoreUnavailable(_) => {
                Code::Unavailable
            }
            Self::NotFound(_) => Code::NotFound,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Invalid(v) => v.to_status(),
            GatewayError::Limited(l) => {
                let msg = if l.too_large {
                    format!(
                        "request larger than the {} rate limit burst; split it",
                        l.scope
                    )
                } else {
                    format!("{} rate limit exceeded; retry later", l.scope)
                };
                let mut s = Status::resource_exhausted(msg);
                let ms = l.retry_after.as_micros().div_ceil(1000).max(1).to_string();
                if let Ok(v) = ms.parse() {
                    s.metadata_mut().insert(RETRY_AFTER_MS, v);
                }
                s
            }
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_limits_carry_a_retry_hint() {
        let s: Status = GatewayError::Limited(Limited {
            scope: "tenant",
            retry_after: Duration::from_micros(1500),
            too_large: false,
        })
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok()),
            Some("2"),
            "rounded up"
        );
    }

    #[test]
    fn unavailable_maps_to_unavailable() {
        let s: Status = GatewayError::Unavailable(Unavailable {
            kafka: "down".into(),
            outbox: "down".into(),
        })
        .into();
        assert_eq!(s.code(), Code::Unavailable);
    }
}
