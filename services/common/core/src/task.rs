//! Validated domain newtypes. Each `parse` is the only way in, so holding one proves it is valid.

use chrono::{DateTime, Utc};
use dispatch_proto::v1 as pb;

use crate::ids::TaskId;
use crate::retry::RetryPolicy;

/// Limits enforced at the boundary (documented in task.proto).
pub mod limits {
    /// Maximum business key length in bytes.
    pub const BUSINESS_KEY_MAX_BYTES: usize = 256;
    /// Maximum task type length.
    pub const TASK_TYPE_MAX_CHARS: usize = 128;
    /// Maximum payload size: 256 KiB.
    pub const PAYLOAD_MAX_BYTES: usize = 256 * 1024;
    /// Maximum idempotency key length.
    pub const IDEMPOTENCY_KEY_MAX_CHARS: usize = 128;
    /// Maximum tenant name length.
    pub const TENANT_MAX_CHARS: usize = 64;
    /// How far in the past `run_at` may be (clock skew tolerance), in seconds.
    pub const RUN_AT_PAST_TOLERANCE_SECS: i64 = 300;
    /// Maximum items in one SubmitTasks call.
    pub const BATCH_MAX_ITEMS: usize = 1000;
    /// Default maximum of a per-task timeout (`TaskSpec.timeout_ms`): 1 h. The gateway's
    /// `limits.max_task_timeout_ms` replaces it.
    pub const TASK_TIMEOUT_MAX_MS: u32 = 3_600_000;
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// Consumes into the inner string.
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// The tenant a task belongs to (from the API key, never from the request body).
    /// 1..=64 characters of `[A-Za-z0-9._-]`.
    Tenant
);
string_newtype!(
    /// Orders tasks: same key, same partition, submission order. 1..=256 bytes UTF-8, no control
    /// characters.
    BusinessKey
);
string_newtype!(
    /// Selects the handler. 1..=128 characters of `[a-z0-9._-]`.
    TaskType
);
string_newtype!(
    /// Client-chosen dedupe key, 1..=128 printable ASCII characters.
    IdempotencyKey
);

impl Tenant {
    /// # Errors
    /// A description of the problem.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > limits::TENANT_MAX_CHARS {
            return Err(format!(
                "must be 1..={} characters",
                limits::TENANT_MAX_CHARS
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err("may contain only [A-Za-z0-9._-]".into());
        }
        Ok(Self(s.to_owned()))
    }
}

impl BusinessKey {
    /// # Errors
    /// A description of the problem.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        if s.len() > limits::BUSINESS_KEY_MAX_BYTES {
            return Err(format!(
                "is {} bytes; at most {} bytes of UTF-8 are allowed",
                s.len(),
                limits::BUSINESS_KEY_MAX_BYTES
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(s.to_owned()))
    }

    /// From raw bytes (a Kafka key): must be UTF-8.
    ///
    /// # Errors
    /// A description of the problem.
    pub fn parse_bytes(b: &[u8]) -> Result<Self, String> {
        let s = std::str::from_utf8(b).map_err(|_| "is not valid UTF-8".to_string())?;
        Self::parse(s)
    }
}

impl TaskType {
    /// # Errors
    /// A description of the problem.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        if s.len() > limits::TASK_TYPE_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters",
                limits::TASK_TYPE_MAX_CHARS
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err("may contain only [a-z0-9._-]".into());
        }
        Ok(Self(s.to_owned()))
    }
}

impl IdempotencyKey {
    /// # Errors
    /// A description of the problem.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > limits::IDEMPOTENCY_KEY_MAX_CHARS {
            return Err(format!(
                "must be 1..={} characters",
                limits::IDEMPOTENCY_KEY_MAX_CHARS
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may contain only printable ASCII without spaces".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// The opaque task payload, at most 256 KiB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload(Vec<u8>);

impl Payload {
    /// # Errors
    /// A description of the problem.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() > limits::PAYLOAD_MAX_BYTES {
            return Err(format!(
                "is {} bytes; at most {} bytes are allowed",
                bytes.len(),
                limits::PAYLOAD_MAX_BYTES
            ));
        }
        Ok(Self(bytes))
    }
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// Consumes into the bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

/// Which first-attempt topic a task goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// dispatch.tasks.critical
    Critical,
    /// dispatch.tasks.default
    #[default]
    Default,
    /// dispatch.tasks.low
    Low,
}

impl Priority {
    /// All priorities, highest first.
    pub const ALL: [Priority; 3] = [Self::Critical, Self::Default, Self::Low];

    /// Lower-case name (topic suffix, metric label, DB column).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Default => "default",
            Self::Low => "low",
        }
    }

    /// Parses [`Priority::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// From the wire enum value; UNSPECIFIED means default, unknown values are an error.
    ///
    /// # Errors
    /// A description of the problem.
    pub fn from_proto_i32(v: i32) -> Result<Self, String> {
        match pb::Priority::try_from(v) {
            Ok(pb::Priority::Unspecified | pb::Priority::Default) => Ok(Self::Default),
            Ok(pb::Priority::Critical) => Ok(Self::Critical),
            Ok(pb::Priority::Low) => Ok(Self::Low),
            Err(_) => Err(format!(
                "unknown priority {v}; use CRITICAL, DEFAULT or LOW"
            )),
        }
    }

    /// To the protobuf enum.
    pub fn to_proto(self) -> pb::Priority {
        match self {
            Self::Critical => pb::Priority::Critical,
            Self::Default => pb::Priority::Default,
            Self::Low => pb::Priority::Low,
        }
    }
}

/// A validated task, ready to be enveloped and produced.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Random v7, or derived from the idempotency key.
    pub task_id: TaskId,
    /// From the caller's credentials.
    pub tenant: Tenant,
    /// Record key.
    pub business_key: BusinessKey,
    /// Handler selector.
    pub task_type: TaskType,
    /// Opaque bytes.
    pub payload: Payload,
    /// Topic selector.
    pub priority: Priority,
    /// Optional dedupe key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Not before (None = now).
    pub run_at: Option<DateTime<Utc>>,
    /// No attempt starts after this.
    pub deadline: Option<DateTime<Utc>>,
    /// Effective retry policy.
    pub retry: RetryPolicy,
    /// The task's own attempt timeout in milliseconds (None: only the type's timeout applies).
    pub timeout_ms: Option<u32>,
    /// When the gateway accepted it.
    pub submitted_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_key_limits() {
        assert!(BusinessKey::parse("order-42").is_ok());
        assert!(BusinessKey::parse("заказ-42").is_ok(), "any UTF-8");
        assert!(BusinessKey::parse("").is_err());
        assert!(BusinessKey::parse(&"k".repeat(256)).is_ok());
        assert!(BusinessKey::parse(&"k".repeat(257)).is_err());
        assert!(BusinessKey::parse("a\nb").is_err());
        assert!(BusinessKey::parse_bytes(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn task_type_limits() {
        assert!(TaskType::parse("email.send-v2_1").is_ok());
        assert!(TaskType::parse("Email").is_err());
        assert!(TaskType::parse("a b").is_err());
        assert!(TaskType::parse(&"t".repeat(128)).is_ok());
        assert!(TaskType::parse(&"t".repeat(129)).is_err());
        assert!(TaskType::parse("").is_err());
    }

    #[test]
    fn payload_limit_is_256_kib() {
        assert!(Payload::parse(vec![0; 256 * 1024]).is_ok());
        assert!(Payload::parse(vec![0; 256 * 1024 + 1]).is_err());
    }

    #[test]
    fn priority_parsing() {
        assert_eq!(Priority::from_proto_i32(0), Ok(Priority::Default));
        assert_eq!(Priority::from_proto_i32(1), Ok(Priority::Critical));
        assert_eq!(Priority::from_proto_i32(3), Ok(Priority::Low));
        assert!(Priority::from_proto_i32(42).is_err());
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn idempotency_key_and_tenant() {
        assert!(IdempotencyKey::parse("abc-123").is_ok());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"x".repeat(129)).is_err());
        assert!(Tenant::parse("acme").is_ok());
        assert!(Tenant::parse("ac me").is_err());
    }
}
