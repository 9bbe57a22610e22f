//! `dispatchctl schedule create|get|list|pause|resume|trigger|delete`: the tenant's schedules
//! through the gateway's ScheduleService (API key).

use clap::Subcommand;
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::schedule_service_client::ScheduleServiceClient;
use serde_json::json;

use crate::client::{Conn, status_error};
use crate::output::time;
use crate::{CliError, Format, output};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// Schedule actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create a schedule: a cron expression (--cron) or a fixed interval (--every) and the task
    /// each fire submits.
    Create(Box<CreateArgs>),
    /// Show a schedule.
    Get {
        /// Schedule name.
        name: String,
    },
    /// List the tenant's schedules in name order.
    List {
        /// Page size (1..=1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Schedules after this name (the previous page's "next page" name).
        #[arg(long, default_value = "")]
        after: String,
    },
    /// Stop firing until resumed (times passing meanwhile are not caught up).
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Fire again, from the next time after now.
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Fire once now (also when paused, whatever the overlap policy).
    Trigger {
        /// Schedule name.
        name: String,
    },
    /// Delete a schedule (tasks it fired are unaffected).
    Delete {
        /// Schedule name.
        name: String,
    },
}

/// `schedule create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Schedule name, unique for the tenant (1..=100 characters of [A-Za-z0-9._-]).
    pub name: String,
    /// Cron expression, 6 fields with seconds first ("*/10 * * * * *") or 5 ("0 9 * * MON-FRI").
    #[arg(long, required_unless_present = "every", conflicts_with = "every")]
    pub cron: Option<String>,
    /// Fixed interval, such as 30s, 5m, 1h or 1d (1 s..=366 d).
    #[arg(long, value_parser = parse_duration_ms)]
    pub every: Option<u64>,
    /// IANA time zone of the cron fields (default UTC).
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// The fired task's business key.
    #[arg(long)]
    pub key: String,
    /// The fired task's type.
    #[arg(long = "type")]
    pub task_type: String,
    /// The fired task's payload (its UTF-8 bytes).
    #[arg(long, default_value = "")]
    pub payload: String,
    /// Priority: critical, default or low.
    #[arg(long, default_value = "default")]
    pub priority: String,
    /// The fired task's attempt timeout, such as 500ms, 30s or 5m.
    #[arg(long, value_parser = crate::cmd::submit::parse_timeout)]
    pub timeout: Option<u32>,
    /// While the previous fire's task is unfinished: skip the fire, or allow it.
    #[arg(long, default_value = "skip", value_parser = ["skip", "allow"])]
    pub overlap: String,
    /// Fire times missed while no scheduler ran: one (fire once), all (up to --catchup-limit), skip.
    #[arg(long, default_value = "one", value_parser = ["one", "all", "skip"])]
    pub catchup: String,
    /// The bound of --catchup all (1..=100).
    #[arg(long, default_value_t = 10)]
    pub catchup_limit: u32,
    /// Run each fire's task up to this long after its fire time, such as 500ms or 30s.
    #[arg(long, value_parser = parse_duration_ms)]
    pub jitter: Option<u64>,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
}

/// `30s`, `5m`, `1h`, `1d`, `500ms` (or bare milliseconds) -> milliseconds.
///
/// # Errors
/// Not such a duration.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 6] = [
        ("", 1),
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    crate::units::scaled(s, &UNITS)
        .ok_or_else(|| format!("{s:?} is not a duration like 500ms, 30s, 5m, 1h or 1d"))
}

fn timing(s: &pb::ScheduleSpec) -> String {
    match &s.timing {
        Some(pb::schedule_spec::Timing::Cron(c)) => format!("cron {c} {}", s.time_zone),
        Some(pb::schedule_spec::Timing::IntervalMs(ms)) => format!("every {ms}ms"),
        None => "-".into(),
    }
}

fn policy_name(p: &str) -> String {
    p.rsplit('_').next().unwrap_or(p).to_ascii_lowercase()
}

fn schedule_json(s: &pb::Schedule) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    let t = spec.template.clone().unwrap_or_default();
    json!({
        "schedule_id": s.schedule_id, "name": spec.name, "timing": timing(&spec),
        "time_zone": spec.time_zone, "paused": spec.paused,
        "overlap": policy_name(spec.overlap_policy().as_str_name()),
        "catchup": policy_name(spec.catchup_policy().as_str_name()),
        "catchup_limit": spec.catchup_limit, "jitter_ms": spec.jitter_ms,
        "task": {"key": t.business_key, "type": t.task_type,
                 "payload": String::from_utf8_lossy(&t.payload), "timeout_ms": t.timeout_ms},
        "next_fire_at": time(s.next_fire_at.as_ref()),
        "last_fire_at": time(s.last_fire_at.as_ref()), "last_task_id": s.last_task_id,
        "fires": s.fires, "overlap_skipped": s.overlap_skipped, "missed": s.missed,
        "version": s.version,
    })
}

const HEADERS: [&str; 8] = [
    "NAME",
    "TIMING",
    "PAUSED",
    "OVERLAP",
    "CATCHUP",
    "NEXT FIRE",
    "FIRES",
    "MISSED",
];

fn schedule_row(s: &pb::Schedule) -> Vec<String> {
    let spec = s.spec.clone().unwrap_or_default();
    vec![
        spec.name.clone(),
        timing(&spec),
        spec.paused.to_string(),
        policy_name(spec.overlap_policy().as_str_name()),
        policy_name(spec.catchup_policy().as_str_name()),
        time(s.next_fire_at.as_ref()),
        s.fires.to_string(),
        s.missed.to_string(),
    ]
}

fn print_one(format: Format, s: Option<&pb::Schedule>) {
    if let Some(s) = s {
        output::print(format, &HEADERS, vec![schedule_row(s)], &schedule_json(s));
    }
}

/// Runs a schedule command.
///
/// # Errors
/// Invalid input, unknown schedule, unreachable gateway, auth.
pub async fn run(a: Args, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let mut c = ScheduleServiceClient::new(conn.channel(&conn.gateway).await?);
    match a.action {
        Action::Create(a) => {
            let a = *a;
            let timing = match (a.cron, a.every) {
                (Some(c), _) => pb::schedule_spec::Timing::Cron(c),
                (None, Some(ms)) => pb::schedule_spec::Timing::IntervalMs(ms),
                (None, None) => {
                    return Err(CliError::Invalid("give --cron or --every".into()).into());
                }
            };
            let spec = pb::ScheduleSpec {
                name: a.name,
                timing: Some(timing),
                time_zone: a.tz,
                template: Some(pb::TaskSpec {
                    business_key: a.key,
                    task_type: a.task_type,
                    payload: a.payload.into_bytes(),
                    priority: crate::cmd::submit::priority(&a.priority)?,
                    timeout_ms: a.timeout.unwrap_or(0),
                    ..Default::default()
                }),
                overlap_policy: match a.overlap.as_str() {
                    "allow" => pb::OverlapPolicy::Allow,
                    _ => pb::OverlapPolicy::Skip,
                } as i32,
                catchup_policy: match a.catchup.as_str() {
                    "all" => pb::CatchupPolicy::All,
                    "skip" => pb::CatchupPolicy::Skip,
                    _ => pb::CatchupPolicy::One,
                } as i32,
                catchup_limit: a.catchup_limit,
                jitter_ms: u32::try_from(a.jitter.unwrap_or(0)).unwrap_or(u32::MAX),
                paused: a.paused,
            };
            let req = conn.request(pb::CreateScheduleRequest {
                schedule: Some(spec),
            })?;
            let r = c
                .create_schedule(req)
                .await
                .map_err(|s| status_error("schedule create", s))?
                .into_inner();
            print_one(format, r.schedule.as_ref());
        }
        Action::Get { name } => {
            let r = c
                .get_schedule(conn.request(pb::GetScheduleRequest { name })?)
                .await
                .map_err(|s| status_error("schedule get", s))?
                .into_inner();
            print_one(format, r.schedule.as_ref());
        }
        Action::List { limit, after } => {
            if !(1..=1000).contains(&limit) {
                return Err(CliError::Invalid(format!("--limit {limit}: must be 1..=1000")).into());
            }
            let r = c
                .list_schedules(conn.request(pb::ListSchedulesRequest {
                    page_size: limit,
                    page_token: after,
                })?)
                .await
                .map_err(|s| status_error("schedule list", s))?
                .into_inner();
            let json = json!({
                "schedules": r.schedules.iter().map(schedule_json).collect::<Vec<_>>(),
                "next_page_token": r.next_page_token,
            });
            output::print(
                format,
                &HEADERS,
                r.schedules.iter().map(schedule_row).collect(),
                &json,
            );
            if format == Format::Table && !r.next_page_token.is_empty() {
                println!("next page: --after {}", r.next_page_token);
            }
        }
        Action::Pause { name } => {
            let r = c
                .pause_schedule(conn.request(pb::PauseScheduleRequest { name })?)
                .await
                .map_err(|s| status_error("schedule pause", s))?
                .into_inner();
            print_one(format, r.schedule.as_ref());
        }
        Action::Resume { name } => {
            let r = c
                .resume_schedule(conn.request(pb::ResumeScheduleRequest { name })?)
                .await
                .map_err(|s| status_error("schedule resume", s))?
                .into_inner();
            print_one(format, r.schedule.as_ref());
        }
        Action::Trigger { name } => {
            let r = c
                .trigger_schedule(conn.request(pb::TriggerScheduleRequest { name })?)
                .await
                .map_err(|s| status_error("schedule trigger", s))?
                .into_inner();
            output::print(
                format,
                &["TASK", "FIRE AT"],
                vec![vec![r.task_id.clone(), time(r.fire_at.as_ref())]],
                &json!({"task_id": r.task_id, "fire_at": time(r.fire_at.as_ref())}),
            );
        }
        Action::Delete { name } => {
            c.delete_schedule(conn.request(pb::DeleteScheduleRequest { name: name.clone() })?)
                .await
                .map_err(|s| status_error("schedule delete", s))?;
            output::print(
                format,
                &["DELETED"],
                vec![vec![name.clone()]],
                &json!({"deleted": name}),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert!(parse_duration_ms("1w").is_err());
        assert!(parse_duration_ms("").is_err());
    }
}
