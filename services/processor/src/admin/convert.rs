//! The boundary: AdminService requests parsed into domain values, domain values into replies.

use dispatch_core::{ErrorClass, Priority, TaskType, Tenant, Violations};
use dispatch_proto::v1 as pb;
use dispatch_store::dead_letters_admin::{DeadLetterFilter, StoredDeadLetter};

use crate::control::{Paused, Stats, Target};

/// Largest page of ListDeadLetters.
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest redrive.
pub const MAX_REDRIVE: u32 = 100_000;
/// Redrive size when none is asked for.
pub const DEFAULT_REDRIVE: u32 = 1_000;
/// Redrive rate when none is asked for.
pub const DEFAULT_RATE: u32 = 100;

/// Parses a filter, adding what is wrong to `v`.
pub fn filter(f: Option<pb::DeadLetterFilter>, v: &mut Violations) -> DeadLetterFilter {
    let f = f.unwrap_or_default();
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    let tenant = nonempty(f.tenant).and_then(|t| {
        v.check("filter.tenant", Tenant::parse(&t))
            .map(|t| t.as_str().to_owned())
    });
    let task_type = nonempty(f.task_type).and_then(|t| {
        v.check("filter.task_type", TaskType::parse(&t))
            .map(|t| t.as_str().to_owned())
    });
    let error_class = nonempty(f.error_class).and_then(|c| {
        if ErrorClass::parse(&c).is_some() {
            Some(c)
        } else {
            v.add(
                "filter.error_class",
                format!(
                    "unknown error class {c:?}; use one of {}",
                    ErrorClass::NAMES.join(", ")
                ),
            );
            None
        }
    });
    let mut time = |field: &str, t: Option<dispatch_proto::Timestamp>| {
        t.and_then(|t| {
            let parsed = dispatch_core::time::from_proto(&t);
            if parsed.is_none() {
                v.add(field, "is not a valid timestamp");
            }
            parsed
        })
    };
    let dead_after = time("filter.dead_after", f.dead_after);
    let dead_before = time("filter.dead_before", f.dead_before);
    if let (Some(a), Some(b)) = (dead_after, dead_before)
        && a >= b
    {
        v.add("filter.dead_before", "must be later than filter.dead_after");
    }
    DeadLetterFilter {
        tenant,
        task_type,
        error_class,
        dead_after,
        dead_before,
    }
}

/// `0 -> default`, else within `1..=max`.
pub fn bounded(field: &str, n: u32, default: u32, max: u32, v: &mut Violations) -> u32 {
    match n {
        0 => default,
        n if n <= max => n,
        n => {
            v.add(field, format!("is {n}; at most {max} is allowed"));
            default
        }
    }
}

/// A page token is the id the next page starts below.
pub fn page_token(t: &str, v: &mut Violations) -> Option<u64> {
    if t.is_empty() {
        return None;
    }
    let id = t.parse::<u64>().ok();
    if id.is_none() {
        v.add("page_token", "is not a token this server issued");
    }
    id
}

/// A stored dead letter on the wire (without its payload).
pub fn dead_letter(d: &StoredDeadLetter) -> pb::DeadLetter {
    let r = &d.row;
    pb::DeadLetter {
        task_id: r.task_id.to_string(),
        tenant: r.tenant.clone(),
        task_type: r.task_type.clone(),
        business_key: r.business_key.clone(),
        error_class: r.error_class.clone(),
        error: r.error.clone(),
        attempts: r.attempts,
        original_topic: r.original_topic.clone(),
        original_partition: r.original_partition,
        original_offset: r.original_offset,
        dlq_partition: r.dlq_partition,
        dlq_offset: r.dlq_offset,
        dead_at: Some(dispatch_core::time::to_proto(r.dead_at)),
        redrive_id: d.redrive_id.clone().unwrap_or_default(),
        purged: d.purged_at.is_some(),
        payload: Vec::new(),
    }
}

/// Parses a PauseRequest.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn target(r: pb::PauseRequest) -> Result<Target, Violations> {
    let mut v = Violations::default();
    let t = match r.target {
        Some(pb::pause_request::Target::Priority(p)) => match pb::Priority::try_from(p) {
            Ok(pb::Priority::Unspecified) | Err(_) => {
                v.add("priority", "use CRITICAL, DEFAULT or LOW");
                None
            }
            Ok(_) => v
                .check("priority", Priority::from_proto_i32(p))
                .map(Target::Priority),
        },
        Some(pb::pause_request::Target::TaskType(t)) => v
            .check("task_type", TaskType::parse(&t))
            .map(|t| Target::TaskType(t.as_str().to_owned())),
        None => {
            v.add("target", "set exactly one of priority or task_type");
            None
        }
    };
    t.ok_or(v)
}

/// What is paused, on the wire.
pub fn paused(p: &Paused) -> pb::PauseResponse {
    pb::PauseResponse {
        paused_priorities: p.priorities.iter().map(|p| p.as_str().to_owned()).collect(),
        paused_task_types: p.task_types.clone(),
    }
}

/// Stats on the wire.
pub fn stats(mut s: Stats, dlq_size: u64, outbox_backlog: u64) -> pb::Stats {
    let p = paused(&s.paused);
    s.partitions
        .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let mut lag_of: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for part in &s.partitions {
        *lag_of.entry(part.owner.as_str()).or_default() += part.lag;
    }
    let instances = s
        .members
        .iter()
        .map(|m| pb::InstanceStats {
            client_id: m.client_id.clone(),
            member_id: m.member_id.clone(),
            host: m.host.clone(),
            partitions: u32::try_from(m.partitions.len()).unwrap_or(u32::MAX),
            lag: lag_of.get(m.client_id.as_str()).copied().unwrap_or(0),
        })
        .collect();
    let pauses = s
        .pauses
        .iter()
        .map(|x| {
            let (kind, target) = match &x.target {
                dispatch_store::pauses::PauseTarget::Priority(t) => ("priority", t),
                dispatch_store::pauses::PauseTarget::TaskType(t) => ("task_type", t),
            };
            pb::PauseInfo {
                kind: kind.into(),
                target: target.clone(),
                paused_at: Some(dispatch_core::time::to_proto(x.paused_at)),
            }
        })
        .collect();
    pb::Stats {
        partitions: s
            .partitions
            .into_iter()
            .map(|p| pb::PartitionStats {
                topic: p.topic,
                partition: p.partition,
                high_watermark: p.high_watermark,
                committed_offset: p.committed_offset,
                lag: p.lag,
                owner: p.owner,
            })
            .collect(),
        in_flight: s.in_flight,
        retry_depths: s.retry_depths.into_iter().collect(),
        dlq_size,
        outbox_backlog,
        breakers: s.breakers.into_iter().collect(),
        paused_priorities: p.paused_priorities,
        paused_task_types: p.paused_task_types,
        instances,
        pauses,
        answered_by: s.client_id,
        group: s.group,
    }
}
