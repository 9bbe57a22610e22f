//! `dispatchctl dlq list|show|redrive|purge`: dead letters through the processor's AdminService.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use dispatch_core::ErrorClass;
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::client::{Conn, status_error};
use crate::cmd::tasks::ts;
use crate::{CliError, Format, output};

/// Which dead letters (every given flag must match).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Task type.
    #[arg(long = "type", visible_alias = "task-type")]
    pub task_type: Option<String>,
    /// Error class.
    #[arg(long, value_parser = ErrorClass::NAMES)]
    pub error_class: Option<String>,
    /// Died at or after: RFC 3339 (2026-01-02T03:04:05Z) or an age (90s, 30m, 1h, 2d, 1w).
    #[arg(long)]
    pub since: Option<String>,
    /// Died before: RFC 3339 or an age.
    #[arg(long)]
    pub until: Option<String>,
}

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// DLQ actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// List dead letters (newest first; purged ones are hidden).
    List {
        /// Filters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Page size (1..=1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Page token from a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one task's latest dead letter, with its payload.
    Show {
        /// Task id.
        task_id: String,
    },
    /// Move dead letters back to the first retry level (each at most once).
    Redrive {
        /// Filters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Required to redrive without any filter.
        #[arg(long)]
        all: bool,
        /// Count what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Move at most this many (1..=100000).
        #[arg(long, visible_alias = "max-count", default_value_t = 1_000)]
        max: u32,
        /// Records per second (1..=100000).
        #[arg(long, visible_alias = "rate-per-second", default_value_t = 100)]
        rate: u32,
    },
    /// Mark dead letters purged: they no longer list or redrive.
    Purge {
        /// Filters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Required to purge without any filter.
        #[arg(long)]
        all: bool,
        /// Count what would be purged; purge nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// An RFC 3339 time or an age before `now` (`90s`, `30m`, `1h`, `2d`, `1w`).
///
/// # Errors
/// Neither form.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    const UNITS: [(&str, u64); 5] = [
        ("s", 1),
        ("m", 60),
        ("h", 3_600),
        ("d", 86_400),
        ("w", 604_800),
    ];
    crate::units::scaled(s, &UNITS)
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(chrono::Duration::try_seconds)
        .and_then(|age| now.checked_sub_signed(age))
        .ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor an age like 30m, 1h or 2d"))
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.tenant.is_none()
            && self.task_type.is_none()
            && self.error_class.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn to_proto(&self) -> anyhow::Result<pb::DeadLetterFilter> {
        let now = Utc::now();
        let time = |flag: &str, v: &Option<String>| -> anyhow::Result<_> {
            v.as_deref()
                .map(|s| {
                    parse_time(s, now)
                        .map(dispatch_core::time::to_proto)
                        .map_err(|e| CliError::Invalid(format!("--{flag}: {e}")).into())
                })
                .transpose()
        };
        Ok(pb::DeadLetterFilter {
            tenant: self.tenant.clone().unwrap_or_default(),
            task_type: self.task_type.clone().unwrap_or_default(),
            error_class: self.error_class.clone().unwrap_or_default(),
            dead_after: time("since", &self.since)?,
            dead_before: time("until", &self.until)?,
        })
    }
}

/// A dead letter as JSON (`payload` only when `with_payload`: UTF-8 text, else base64).
pub fn dead_letter_json(d: &pb::DeadLetter, with_payload: bool) -> serde_json::Value {
    let mut v = json!({
        "task_id": d.task_id, "tenant": d.tenant, "task_type": d.task_type,
        "business_key": d.business_key, "error_class": d.error_class, "error": d.error,
        "attempts": d.attempts, "original_topic": d.original_topic,
        "original_partition": d.original_partition, "original_offset": d.original_offset,
        "dlq_partition": d.dlq_partition, "dlq_offset": d.dlq_offset, "dead_at": ts(&d.dead_at),
        "redrive_id": d.redrive_id, "purged": d.purged,
    });
    if with_payload && let Some(m) = v.as_object_mut() {
        match std::str::from_utf8(&d.payload) {
            Ok(s) => m.insert("payload".into(), json!(s)),
            Err(_) => {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD.encode(&d.payload);
                m.insert("payload_base64".into(), json!(b))
            }
        };
    }
    v
}

fn row(d: &pb::DeadLetter) -> Vec<String> {
    vec![
        d.task_id.clone(),
        d.tenant.clone(),
        d.task_type.clone(),
        d.business_key.clone(),
        d.error_class.clone(),
        d.attempts.to_string(),
        ts(&d.dead_at),
        if d.redrive_id.is_empty() {
            "-".into()
        } else {
            d.redrive_id.clone()
        },
        d.error.chars().take(50).collect(),
    ]
}

const HEADERS: [&str; 9] = [
    "TASK ID",
    "TENANT",
    "TYPE",
    "KEY",
    "CLASS",
    "ATTEMPTS",
    "DEAD AT",
    "REDRIVE ID",
    "ERROR",
];

async fn client(conn: &Conn) -> anyhow::Result<AdminServiceClient<Channel>> {
    Ok(AdminServiceClient::new(conn.channel(&conn.admin).await?))
}

fn refuse_unfiltered(f: &FilterArgs, all: bool, dry_run: bool, what: &str) -> anyhow::Result<()> {
    if f.is_empty() && !all && !dry_run {
        return Err(CliError::Invalid(format!(
            "refusing to {what} every dead letter: add a filter (--tenant, --type, --error-class, --since, --until) or --all"
        ))
        .into());
    }
    Ok(())
}

/// Runs the command.
///
/// # Errors
/// Invalid input, unreachable processor, auth, not found.
pub async fn run(a: Args, conn: &Conn, format: Format) -> anyhow::Result<()> {
    match a.action {
        Action::List {
            filter,
            limit,
            page_token,
        } => {
            let f = filter.to_proto()?;
            let r = client(conn)
                .await?
                .list_dead_letters(conn.admin_request(pb::ListDeadLettersRequest {
                    filter: Some(f),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })?)
                .await
                .map_err(|s| status_error("dlq list", s))?
                .into_inner();
            let json = json!({
                "dead_letters": r.dead_letters.iter().map(|d| dead_letter_json(d, false)).collect::<Vec<_>>(),
                "total": r.total,
                "next_page_token": r.next_page_token,
            });
            output::print(
                format,
                &HEADERS,
                r.dead_letters.iter().map(row).collect(),
                &json,
            );
            if format == Format::Table {
                eprintln!("{} of {} dead letters", r.dead_letters.len(), r.total);
                if !r.next_page_token.is_empty() {
                    eprintln!("more: --page-token {}", r.next_page_token);
                }
            }
        }
        Action::Show { task_id } => {
            let d = client(conn)
                .await?
                .get_dead_letter(conn.admin_request(pb::GetDeadLetterRequest {
                    task_id: task_id.clone(),
                })?)
                .await
                .map_err(|s| status_error(&format!("dlq show {task_id}"), s))?
                .into_inner();
            let json = dead_letter_json(&d, true);
            let rows = json
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                            vec![k.clone(), v]
                        })
                        .collect()
                })
                .unwrap_or_default();
            output::print(format, &["FIELD", "VALUE"], rows, &json);
        }
        Action::Redrive {
            filter,
            all,
            dry_run,
            max,
            rate,
        } => {
            refuse_unfiltered(&filter, all, dry_run, "redrive")?;
            if max == 0 || rate == 0 {
                return Err(CliError::Invalid("--max and --rate must be at least 1".into()).into());
            }
            let mut req = conn.admin_request(pb::RedriveDeadLettersRequest {
                filter: Some(filter.to_proto()?),
                dry_run,
                max_count: max,
                rate_per_second: rate,
            })?;
            // A redrive takes about max / rate seconds.
            let expected = Duration::from_secs(u64::from(max / rate + 1) * 2);
            req.set_timeout(Duration::from_millis(conn.timeout_ms) + expected);
            let r = client(conn)
                .await?
                .redrive_dead_letters(req)
                .await
                .map_err(|s| status_error("dlq redrive", s))?
                .into_inner();
            let json = json!({"redrive_id": r.redrive_id, "matched": r.matched, "redriven": r.redriven, "dry_run": r.dry_run});
            output::print(
                format,
                &["REDRIVE ID", "MATCHED", "REDRIVEN", "DRY RUN"],
                vec![vec![
                    if r.dry_run {
                        "-".into()
                    } else {
                        r.redrive_id.clone()
                    },
                    r.matched.to_string(),
                    r.redriven.to_string(),
                    r.dry_run.to_string(),
                ]],
                &json,
            );
            if format == Format::Table && !r.dry_run && r.redriven < r.matched {
                eprintln!(
                    "{} matched dead letters could not be read back from the DLQ topic (see the processor's log)",
                    r.matched - r.redriven
                );
            }
        }
        Action::Purge {
            filter,
            all,
            dry_run,
        } => {
            refuse_unfiltered(&filter, all, dry_run, "purge")?;
            let r = client(conn)
                .await?
                .purge_dead_letters(conn.admin_request(pb::PurgeDeadLettersRequest {
                    filter: Some(filter.to_proto()?),
                    dry_run,
                })?)
                .await
                .map_err(|s| status_error("dlq purge", s))?
                .into_inner();
            let json = json!({"purged": r.purged, "dry_run": r.dry_run});
            output::print(
                format,
                &["PURGED", "DRY RUN"],
                vec![vec![r.purged.to_string(), r.dry_run.to_string()]],
                &json,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = Utc::now();
        assert_eq!(
            parse_time("1h", now).expect("age"),
            now - chrono::Duration::hours(1)
        );
        assert_eq!(
            parse_time("90s", now).expect("age"),
            now - chrono::Duration::seconds(90)
        );
        assert_eq!(
            parse_time("2026-01-02T03:04:05Z", now)
                .expect("rfc3339")
                .timestamp(),
            1_767_323_045
        );
        for bad in ["", "h", "1y", "-1h", "yesterday", "99999999999999w"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }
}
