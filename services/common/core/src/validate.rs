//! Parse a submitted `TaskSpec` into a [`NewTask`], collecting every violation.
//!
//! Over 400 lines because of its tests: the code ends where `mod tests` starts, near line 302, and
//! every rule has its case; the property tests (`mod props`) would move to a file of their own
//! first.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use dispatch_proto::v1 as pb;

use crate::error::Violations;
use crate::ids::TaskId;
use crate::retry::RetryPolicy;
use crate::task::{
    BusinessKey, IdempotencyKey, NewTask, Payload, Priority, TaskType, Tenant, limits,
};
use crate::time;

/// Limits of a submitted spec that the deployment chooses (the gateway's `[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecLimits {
    /// Largest per-task timeout (`TaskSpec.timeout_ms`) of a type without its own maximum.
    pub max_task_timeout_ms: u32,
    /// Task type -> its own largest per-task timeout, instead of `max_task_timeout_ms`.
    pub task_type_max_timeout_ms: BTreeMap<String, u32>,
    /// How far ahead of now `run_at` and `deadline` may be, in seconds (the gateway's
    /// `limits.max_schedule_horizon_secs`).
    pub max_schedule_horizon_secs: u64,
}

/// The default schedule horizon: one year (365 days).
pub const DEFAULT_SCHEDULE_HORIZON_SECS: u64 = 365 * 24 * 3600;

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_task_timeout_ms: limits::TASK_TIMEOUT_MAX_MS,
            task_type_max_timeout_ms: BTreeMap::new(),
            max_schedule_horizon_secs: DEFAULT_SCHEDULE_HORIZON_SECS,
        }
    }
}

impl SpecLimits {
    /// The largest per-task timeout allowed for `task_type`, and whose limit it is.
    fn max_timeout_ms(&self, task_type: Option<&TaskType>) -> (u32, String) {
        match task_type.and_then(|t| {
            self.task_type_max_timeout_ms
                .get(t.as_str())
                .map(|m| (t, *m))
        }) {
            Some((t, max)) => (max, format!("the maximum for task type {t}")),
            None => (self.max_task_timeout_ms, "the maximum".to_owned()),
        }
    }
}

/// Parses `spec` for `tenant` at `now` under the default [`SpecLimits`]. Field paths are
/// prefixed with `prefix` (e.g. `task` or `tasks[3]`).
///
/// # Errors
/// Every field violation found.
pub fn parse_task_spec(
    prefix: &str,
    tenant: &Tenant,
    spec: pb::TaskSpec,
    now: DateTime<Utc>,
) -> Result<NewTask, Violations> {
    parse_task_spec_with(prefix, tenant, spec, now, &SpecLimits::default())
}

/// [`parse_task_spec`] under the deployment's `limits`.
///
/// # Errors
/// Every field violation found.
pub fn parse_task_spec_with(
    prefix: &str,
    tenant: &Tenant,
    spec: pb::TaskSpec,
    now: DateTime<Utc>,
    spec_limits: &SpecLimits,
) -> Result<NewTask, Violations> {
    let mut v = Violations::default();
    let f = |name: &str| format!("{prefix}.{name}");

    let business_key = v.check(&f("business_key"), BusinessKey::parse(&spec.business_key));
    let task_type = v.check(&f("task_type"), TaskType::parse(&spec.task_type));
    let payload = v.check(&f("payload"), Payload::parse(spec.payload));
    let priority = v.check(&f("priority"), Priority::from_proto_i32(spec.priority));
    let idempotency_key = if spec.idempotency_key.is_empty() {
        Some(None)
    } else {
        v.check(
            &f("idempotency_key"),
            IdempotencyKey::parse(&spec.idempotency_key),
        )
        .map(Some)
    };

    let horizon_secs = spec_limits.max_schedule_horizon_secs;
    let horizon = now + Duration::seconds(i64::try_from(horizon_secs).unwrap_or(i64::MAX / 2_000));
    let beyond = |t: DateTime<Utc>| {
        (t > horizon).then(|| {
            format!(
                "is {}, more than {horizon_secs} s ({}) ahead; the limit is \
                 limits.max_schedule_horizon_secs = {horizon_secs}",
                t.to_rfc3339(),
                human_secs(horizon_secs)
            )
        })
    };
    let run_at = match spec.run_at.as_ref() {
        None => Some(None),
        Some(ts) => match time::from_proto(ts) {
            None => {
                v.add(f("run_at"), "is not a valid timestamp");
                None
            }
            Some(t) if t < now - Duration::seconds(limits::RUN_AT_PAST_TOLERANCE_SECS) => {
                v.add(
                    f("run_at"),
                    format!(
                        "is more than {} s in the past",
                        limits::RUN_AT_PAST_TOLERANCE_SECS
                    ),
                );
                None
            }
            Some(t) => match beyond(t) {
                Some(m) => {
                    v.add(f("run_at"), m);
                    None
                }
                None => Some(Some(t)),
            },
        },
    };
    let deadline = match spec.deadline.as_ref() {
        None => Some(None),
        Some(ts) => match time::from_proto(ts) {
            None => {
                v.add(f("deadline"), "is not a valid timestamp");
                None
            }
            Some(d) => {
                let start = run_at.flatten().unwrap_or(now);
                if d <= start {
                    v.add(
                        f("deadline"),
                        "must be after run_at (or after now when run_at is unset)",
                    );
                    None
                } else if let Some(m) = beyond(d) {
                    v.add(f("deadline"), m);
                    None
                } else {
                    Some(Some(d))
                }
            }
        },
    };
    let retry = parse_retry(&f("retry_policy"), spec.retry_policy, &mut v);
    let timeout_ms = match spec.timeout_ms {
        0 => Some(None),
        ms => {
            let (max, whose) = spec_limits.max_timeout_ms(task_type.as_ref());
            if ms > max {
                v.add(
                    f("timeout_ms"),
                    format!(
                        "is {ms} ms; must be at most {max} ms ({}), {whose}",
                        human_ms(max)
                    ),
                );
                None
            } else {
                Some(Some(ms))
            }
        }
    };

    match (
        business_key,
        task_type,
        payload,
        priority,
        idempotency_key,
        run_at,
        deadline,
        retry,
        timeout_ms,
    ) {
        (
            Some(business_key),
            Some(task_type),
            Some(payload),
            Some(priority),
            Some(idem),
            Some(run_at),
            Some(deadline),
            Some(retry),
            Some(timeout_ms),
        ) if v.is_empty() => {
            let task_id = match &idem {
                Some(_) if cfg!(feature = "fault-random-keyed-ids") => TaskId::new(),
                Some(key) => TaskId::from_idempotency_key(tenant.as_str(), key.as_str()),
                None => TaskId::new(),
            };
            Ok(NewTask {
                task_id,
                tenant: tenant.clone(),
                business_key,
                task_type,
                payload,
                priority,
                idempotency_key: idem,
                run_at,
                deadline,
                retry,
                timeout_ms,
                submitted_at: now,
            })
        }
        _ => Err(v),
    }
}

/// `secs` for people: whole days when it is some, else seconds.
fn human_secs(secs: u64) -> String {
    if secs >= 86_400 && secs.is_multiple_of(86_400) {
        format!("{} days", secs / 86_400)
    } else {
        format!("{secs} s")
    }
}

fn parse_retry(field: &str, p: Option<pb::RetryPolicy>, v: &mut Violations) -> Option<RetryPolicy> {
    let d = RetryPolicy::DEFAULT;
    let Some(p) = p else { return Some(d) };
    let before = v.0.len();
    let max_attempts = if p.max_attempts == 0 {
        d.max_attempts
    } else {
        p.max_attempts
    };
    if max_attempts > RetryPolicy::MAX_ATTEMPTS_LIMIT {
        v.add(
            format!("{field}.max_attempts"),
            format!("must be 1..={}", RetryPolicy::MAX_ATTEMPTS_LIMIT),
        );
    }
    let initial = if p.initial_backoff_ms == 0 {
        d.initial_backoff_ms
    } else {
        p.initial_backoff_ms
    };
    let limit = RetryPolicy::INITIAL_BACKOFF_LIMIT_MS;
    if initial > limit {
        v.add(
            format!("{field}.initial_backoff_ms"),
            format!(
                "is {initial} ms; must be at most {limit} ms ({}), the longest supported initial backoff",
                human_ms(limit)
            ),
        );
    }
    let max = if p.max_backoff_ms == 0 {
        d.max_backoff_ms.max(initial)
    } else {
        p.max_backoff_ms
    };
    let limit = RetryPolicy::MAX_BACKOFF_LIMIT_MS;
    if max > limit {
        v.add(
            format!("{field}.max_backoff_ms"),
            format!(
                "is {max} ms; must be at most {limit} ms ({}), the longest supported backoff",
                human_ms(limit)
            ),
        );
    } else if max < initial {
        v.add(
            format!("{field}.max_backoff_ms"),
            format!("is {max} ms; must not be below initial_backoff_ms ({initial} ms)"),
        );
    }
    (v.0.len() == before).then_some(RetryPolicy {
        max_attempts,
        initial_backoff_ms: initial,
        max_backoff_ms: max,
    })
}

/// `3600000` -> `1 h`, `1500` -> `1.5 s`: a readable form of a millisecond limit.
fn human_ms(ms: u32) -> String {
    let ms = f64::from(ms);
    for (unit, size) in [("h", 3_600_000.0), ("min", 60_000.0), ("s", 1_000.0)] {
        if ms >= size {
            return format!("{} {unit}", ms / size);
        }
    }
    format!("{ms} ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant::parse("acme").expect("tenant")
    }

    fn spec() -> pb::TaskSpec {
        pb::TaskSpec {
            business_key: "order-1".into(),
            task_type: "email.send".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        }
    }

    fn fields(r: Result<NewTask, Violations>) -> Vec<String> {
        r.expect_err("should fail")
            .0
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let t = parse_task_spec("task", &tenant(), spec(), Utc::now()).expect("valid");
        assert_eq!(t.priority, Priority::Default);
        assert_eq!(t.retry, RetryPolicy::DEFAULT);
        assert_eq!(t.task_id.uuid().get_version_num(), 7);
        assert!(t.idempotency_key.is_none());
    }

    #[test]
    fn run_at_and_deadline_have_a_horizon() {
        let now = Utc::now();
        let at = |t: DateTime<Utc>| Some(time::to_proto(t));
        let parse =
            |s: pb::TaskSpec, l: &SpecLimits| parse_task_spec_with("task", &tenant(), s, now, l);
        let year_9999 = DateTime::parse_from_rfc3339("9999-12-31T00:00:00Z")
            .expect("date")
            .with_timezone(&Utc);
        // Year 9999, as run_at or as deadline: refused, naming the field and the limit.
        for (field, s) in [
            (
                "task.run_at",
                pb::TaskSpec {
                    run_at: at(year_9999),
                    ..spec()
                },
            ),
            (
                "task.deadline",
                pb::TaskSpec {
                    deadline: at(year_9999),
                    ..spec()
                },
            ),
        ] {
            let v = parse(s, &SpecLimits::default()).expect_err(field);
            assert_eq!(v.0.len(), 1, "{v:?}");
            assert_eq!(v.0[0].field, field);
            assert!(
                v.0[0].description.contains("31536000 s (365 days)")
                    && v.0[0]
                        .description
                        .contains("limits.max_schedule_horizon_secs"),
                "{}",
                v.0[0].description
            );
        }
        // Within the default year: accepted.
        let s = pb::TaskSpec {
            run_at: at(now + Duration::days(364)),
            deadline: at(now + Duration::days(364) + Duration::hours(1)),
            ..spec()
        };
        assert!(parse(s, &SpecLimits::default()).is_ok());
        // A deployment's own horizon.
        let l = SpecLimits {
            max_schedule_horizon_secs: 3_600,
            ..SpecLimits::default()
        };
        let s = pb::TaskSpec {
            run_at: at(now + Duration::hours(2)),
            ..spec()
        };
        let v = parse(s, &l).expect_err("past an hour");
        assert!(
            v.0[0].description.contains("more than 3600 s"),
            "{}",
            v.0[0].description
        );
    }

    #[test]
    fn idempotency_key_makes_the_id_deterministic() {
        let mut s = spec();
        s.idempotency_key = "k-1".into();
        let a = parse_task_spec("task", &tenant(), s.clone(), Utc::now()).expect("valid");
        let b = parse_task_spec("task", &tenant(), s, Utc::now()).expect("valid");
        assert_eq!(a.task_id, b.task_id);
    }

    #[test]
    fn collects_every_violation_with_paths() {
        let s = pb::TaskSpec {
            business_key: String::new(),
            task_type: "Bad Type".into(),
            payload: vec![0; 300 * 1024],
            priority: 99,
            idempotency_key: "has space".into(),
            ..Default::default()
        };
        let got = fields(parse_task_spec("tasks[7]", &tenant(), s, Utc::now()));
        assert_eq!(
            got,
            [
                "tasks[7].business_key",
                "tasks[7].task_type",
                "tasks[7].payload",
                "tasks[7].priority",
                "tasks[7].idempotency_key"
            ]
        );
    }

    #[test]
    fn time_rules() {
        let now = Utc::now();
        let mut s = spec();
        s.run_at = Some(time::to_proto(now - Duration::hours(1)));
        assert_eq!(
            fields(parse_task_spec("task", &tenant(), s, now)),
            ["task.run_at"]
        );

        let mut s = spec();
        s.run_at = Some(time::to_proto(now - Duration::seconds(10)));
        assert!(
            parse_task_spec("task", &tenant(), s, now).is_ok(),
            "skew tolerated"
        );

        let mut s = spec();
        s.run_at = Some(time::to_proto(now + Duration::hours(2)));
        s.deadline = Some(time::to_proto(now + Duration::hours(1)));
        assert_eq!(
            fields(parse_task_spec("task", &tenant(), s, now)),
            ["task.deadline"]
        );

        let mut s = spec();
        s.deadline = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: -5,
        });
        assert_eq!(
            fields(parse_task_spec("task", &tenant(), s, now)),
            ["task.deadline"]
        );
    }

    #[test]
    fn retry_policy_bounds() {
        let mut s = spec();
        s.retry_policy = Some(pb::RetryPolicy {
            max_attempts: 26,
            initial_backoff_ms: 10,
            max_backoff_ms: 5,
        });
        assert_eq!(
            fields(parse_task_spec("task", &tenant(), s, Utc::now())),
            [
                "task.retry_policy.max_attempts",
                "task.retry_policy.max_backoff_ms"
            ]
        );
        let mut s = spec();
        s.retry_policy = Some(pb::RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        });
        let t = parse_task_spec("task", &tenant(), s, Utc::now()).expect("valid");
        assert_eq!(t.retry.max_attempts, 2);
        assert_eq!(
            t.retry.initial_backoff_ms,
            RetryPolicy::DEFAULT.initial_backoff_ms
        );
    }

    /// The violations of `spec` edited by `edit`, as (field, description).
    fn violations(edit: impl FnOnce(&mut pb::TaskSpec), l: &SpecLimits) -> Vec<(String, String)> {
        let mut s = spec();
        edit(&mut s);
        match parse_task_spec_with("task", &tenant(), s, Utc::now(), l) {
            Ok(_) => Vec::new(),
            Err(v) => v.0.into_iter().map(|v| (v.field, v.description)).collect(),
        }
    }

    #[test]
    fn retry_delays_beyond_the_supported_range_name_the_field_and_the_limit() {
        let l = SpecLimits::default();
        let policy = |initial, max| {
            move |s: &mut pb::TaskSpec| {
                s.retry_policy = Some(pb::RetryPolicy {
                    max_attempts: 3,
                    initial_backoff_ms: initial,
                    max_backoff_ms: max,
                })
            }
        };
        // The bounds themselves are allowed.
        assert!(violations(policy(3_600_000, 86_400_000), &l).is_empty());
        let v = violations(policy(3_600_001, 86_400_000), &l);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "task.retry_policy.initial_backoff_ms");
        assert!(v[0].1.contains("at most 3600000 ms (1 h)"), "{}", v[0].1);
        let v = violations(policy(1_000, 86_400_001), &l);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "task.retry_policy.max_backoff_ms");
        assert!(v[0].1.contains("at most 86400000 ms (24 h)"), "{}", v[0].1);
        assert_eq!(RetryPolicy::INITIAL_BACKOFF_LIMIT_MS, 3_600_000);
        assert_eq!(RetryPolicy::MAX_BACKOFF_LIMIT_MS, 86_400_000);
    }

    #[test]
    fn a_per_task_timeout_is_bounded_by_the_maximum_of_its_type() {
        let l = SpecLimits::default();
        // Unset (0) is no per-task timeout; up to the maximum (1 h by default) is accepted.
        let t = parse_task_spec("task", &tenant(), spec(), Utc::now()).expect("valid");
        assert_eq!(t.timeout_ms, None);
        let mut s = spec();
        s.timeout_ms = 3_600_000;
        let t = parse_task_spec("task", &tenant(), s, Utc::now()).expect("valid");
        assert_eq!(t.timeout_ms, Some(3_600_000));

        let v = violations(|s| s.timeout_ms = 3_600_001, &l);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "task.timeout_ms");
        assert!(
            v[0].1.contains("at most 3600000 ms (1 h)"),
            "names the limit: {}",
            v[0].1
        );
        // In a batch the item's path is named.
        let mut s = spec();
        s.timeout_ms = u32::MAX;
        let got = fields(parse_task_spec("tasks[4]", &tenant(), s, Utc::now()));
        assert_eq!(got, ["tasks[4].timeout_ms"]);

        // A deployment's maximum, and a type's own maximum (higher or lower) instead of it.
        let l = SpecLimits {
            max_task_timeout_ms: 60_000,
            task_type_max_timeout_ms: BTreeMap::from([
                ("email.send".to_owned(), 5_000),
                ("report.build".to_owned(), 7_200_000),
            ]),
            ..SpecLimits::default()
        };
        let v = violations(|s| s.timeout_ms = 5_001, &l);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "task.timeout_ms");
        assert!(
            v[0].1.contains("at most 5000 ms (5 s)") && v[0].1.contains("email.send"),
            "{}",
            v[0].1
        );
        let other = |ms| {
            move |s: &mut pb::TaskSpec| {
                s.task_type = "report.build".into();
                s.timeout_ms = ms;
            }
        };
        assert!(violations(other(7_200_000), &l).is_empty());
        assert_eq!(violations(other(7_200_001), &l).len(), 1);
        let plain = |ms| {
            move |s: &mut pb::TaskSpec| {
                s.task_type = "sms.send".into();
                s.timeout_ms = ms;
            }
        };
        assert!(violations(plain(60_000), &l).is_empty());
        let v = violations(plain(60_001), &l);
        assert!(v[0].1.contains("at most 60000 ms (1 min)"), "{}", v[0].1);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn any_ts() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
        proptest::option::of(
            (any::<i64>(), any::<i32>())
                .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        )
    }

    proptest! {
        /// Any request, however malformed, yields a task or field violations: never a panic, and
        /// a rejected request always names at least one field.
        #[test]
        fn parse_never_panics_and_rejections_name_fields(
            key in ".{0,300}",
            ty in ".{0,140}",
            payload_len in 0usize..300_000,
            priority in any::<i32>(),
            idem in ".{0,140}",
            run_at in any_ts(),
            deadline in any_ts(),
            attempts in any::<u32>(),
            initial in any::<u32>(),
            max in any::<u32>(),
            timeout in any::<u32>(),
        ) {
            let spec = pb::TaskSpec {
                business_key: key,
                task_type: ty,
                payload: vec![0; payload_len],
                priority,
                idempotency_key: idem,
                run_at,
                deadline,
                retry_policy: Some(pb::RetryPolicy { max_attempts: attempts, initial_backoff_ms: initial, max_backoff_ms: max }),
                timeout_ms: timeout,
            };
            let tenant = Tenant::parse("acme").expect("tenant");
            match parse_task_spec("task", &tenant, spec, Utc::now()) {
                Ok(t) => {
                    prop_assert!(t.payload.as_bytes().len() <= limits::PAYLOAD_MAX_BYTES);
                    prop_assert!(t.business_key.as_str().len() <= limits::BUSINESS_KEY_MAX_BYTES);
                    prop_assert!(t.retry.max_attempts >= 1 && t.retry.max_attempts <= RetryPolicy::MAX_ATTEMPTS_LIMIT);
                    prop_assert!(t.retry.initial_backoff_ms <= RetryPolicy::INITIAL_BACKOFF_LIMIT_MS);
                    prop_assert!(t.retry.max_backoff_ms <= RetryPolicy::MAX_BACKOFF_LIMIT_MS);
                    prop_assert!(t.timeout_ms.is_none_or(|ms| ms > 0 && ms <= limits::TASK_TIMEOUT_MAX_MS));
                }
                Err(v) => {
                    prop_assert!(!v.is_empty());
                    prop_assert!(v.0.iter().all(|f| f.field.starts_with("task.")));
                }
            }
        }
    }
}
