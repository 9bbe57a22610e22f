//! The fingerprint of a submit's parameters, stored with its idempotency key so that a second
//! submit with the same key but other parameters is refused (as Stripe-style idempotency does).
//!
//! One 8-byte hash per compared field, so a conflict names the field that differs without the
//! parameters themselves being stored: the payload never leaves MySQL's `tasks` row and the
//! record. The fields are those that decide what runs and when: business key, task type, priority,
//! payload, `run_at`, `deadline`, the effective retry policy (so an omitted policy and the
//! explicit defaults are the same) and the per-task `timeout_ms`. The tenant and the key are the
//! identity, not parameters. New fields are appended: a fingerprint stored before compares on
//! the fields it has.

use dispatch_core::NewTask;
use sha2::{Digest, Sha256};

/// Names of the compared fields, in fingerprint order (as in `TaskSpec`).
pub const FIELDS: [&str; 8] = [
    "business_key",
    "task_type",
    "priority",
    "payload",
    "run_at",
    "deadline",
    "retry_policy",
    "timeout_ms",
];

/// Encoding version (first byte).
const VERSION: u8 = 1;

/// Per-field hashes of a submit's parameters. A stored fingerprint may hold fewer fields than
/// [`FIELDS`] (written before a field was appended): only the fields both hold are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    fields: [[u8; 8]; FIELDS.len()],
    len: usize,
}

fn hash(field: &str, parts: &[&[u8]]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(b"dispatch.v1/fingerprint\0");
    h.update(field.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> Vec<u8> {
    match t {
        None => Vec::new(),
        Some(t) => {
            let mut v = t.timestamp().to_be_bytes().to_vec();
            v.extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
            v
        }
    }
}

impl Fingerprint {
    /// The fingerprint of a validated task.
    pub fn of(t: &NewTask) -> Self {
        let r = &t.retry;
        let retry = [
            r.max_attempts.to_be_bytes(),
            r.initial_backoff_ms.to_be_bytes(),
            r.max_backoff_ms.to_be_bytes(),
        ]
        .concat();
        Self {
            fields: [
                hash(FIELDS[0], &[t.business_key.as_str().as_bytes()]),
                hash(FIELDS[1], &[t.task_type.as_str().as_bytes()]),
                hash(FIELDS[2], &[t.priority.as_str().as_bytes()]),
                hash(FIELDS[3], &[t.payload.as_bytes()]),
                hash(FIELDS[4], &[&time(t.run_at)]),
                hash(FIELDS[5], &[&time(t.deadline)]),
                hash(FIELDS[6], &[&retry]),
                hash(
                    FIELDS[7],
                    &[&t.timeout_ms.map(u32::to_be_bytes).unwrap_or_default()],
                ),
            ],
            len: FIELDS.len(),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 8 * self.len);
        v.push(VERSION);
        for f in &self.fields[..self.len] {
            v.extend_from_slice(f);
        }
        v
    }

    /// Parses [`Fingerprint::encode`]; `None` for anything else (another version, corruption).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let (&version, rest) = b.split_first()?;
        let len = rest.len() / 8;
        if version != VERSION || rest.len() % 8 != 0 || len == 0 || len > FIELDS.len() {
            return None;
        }
        let mut fields = [[0u8; 8]; FIELDS.len()];
        for (slot, chunk) in fields.iter_mut().zip(rest.chunks_exact(8)) {
            slot.copy_from_slice(chunk);
        }
        Some(Self { fields, len })
    }

    /// The fields in which `other` differs from `self`, in [`FIELDS`] order (of the fields both
    /// hold).
    pub fn diff(&self, other: &Self) -> Vec<&'static str> {
        if cfg!(feature = "fault-idempotency-no-compare") {
            return Vec::new();
        }
        let n = self.len.min(other.len);
        FIELDS[..n]
            .iter()
            .zip(self.fields[..n].iter().zip(other.fields[..n].iter()))
            .filter(|(_, (a, b))| a != b)
            .map(|(name, _)| *name)
            .collect()
    }

    /// The fields in which the stored fingerprint `stored` differs from `self`; every field when
    /// `stored` cannot be read (a conflict must still be reported, and cannot be narrowed).
    pub fn diff_stored(&self, stored: &[u8]) -> Vec<&'static str> {
        match Self::decode(stored) {
            Some(s) => self.diff(&s),
            None => FIELDS.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use dispatch_core::validate::parse_task_spec;
    use dispatch_core::{Tenant, time::to_proto};
    use dispatch_proto::v1 as pb;

    fn task(edit: impl FnOnce(&mut pb::TaskSpec)) -> NewTask {
        let mut s = pb::TaskSpec {
            business_key: "order-1".into(),
            task_type: "email.send".into(),
            payload: b"{}".to_vec(),
            idempotency_key: "k-1".into(),
            ..Default::default()
        };
        edit(&mut s);
        let tenant = Tenant::parse("acme").expect("tenant");
        parse_task_spec("task", &tenant, s, Utc::now()).expect("valid")
    }

    #[test]
    fn equal_parameters_have_equal_fingerprints_and_each_field_is_named() {
        let base = Fingerprint::of(&task(|_| {}));
        assert_eq!(base, Fingerprint::of(&task(|_| {})));
        // Within the scheduling horizon (limits.max_schedule_horizon_secs, one year).
        let at = Utc::now() + chrono::Duration::days(30);
        type Edit = Box<dyn Fn(&mut pb::TaskSpec)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "business_key",
                Box::new(|s| s.business_key = "order-2".into()),
            ),
            ("task_type", Box::new(|s| s.task_type = "sms.send".into())),
            (
                "priority",
                Box::new(|s| s.priority = pb::Priority::Low as i32),
            ),
            ("payload", Box::new(|s| s.payload = b"{ }".to_vec())),
            ("run_at", Box::new(move |s| s.run_at = Some(to_proto(at)))),
            (
                "deadline",
                Box::new(move |s| s.deadline = Some(to_proto(at + chrono::Duration::days(1)))),
            ),
            (
                "retry_policy",
                Box::new(|s| {
                    s.retry_policy = Some(pb::RetryPolicy {
                        max_attempts: 9,
                        ..Default::default()
                    })
                }),
            ),
            ("timeout_ms", Box::new(|s| s.timeout_ms = 5_000)),
        ];
        for (field, edit) in cases {
            let other = Fingerprint::of(&task(|s| edit(s)));
            assert_eq!(base.diff(&other), [field]);
            assert_eq!(base.diff_stored(&other.encode()), [field]);
        }
        // The idempotency key is the identity, not a parameter.
        assert_eq!(
            base,
            Fingerprint::of(&task(|s| s.idempotency_key = "k-2".into()))
        );
    }

    #[test]
    fn encoding_round_trips_and_unknown_encodings_conflict_on_every_field() {
        let f = Fingerprint::of(&task(|_| {}));
        assert_eq!(Fingerprint::decode(&f.encode()), Some(f));
        assert_eq!(Fingerprint::decode(&[]), None);
        assert_eq!(Fingerprint::decode(&[2; 57]), None);
        assert_eq!(f.diff_stored(b"garbage"), FIELDS.to_vec());
        // Written before later fields were appended: the fields it holds are compared.
        let mut short = f.encode();
        short.truncate(1 + 8 * 3);
        assert!(f.diff_stored(&short).is_empty());
        let other = Fingerprint::of(&task(|s| s.task_type = "sms.send".into()));
        let mut short = other.encode();
        short.truncate(1 + 8 * 3);
        assert_eq!(f.diff_stored(&short), ["task_type"]);
    }
}
