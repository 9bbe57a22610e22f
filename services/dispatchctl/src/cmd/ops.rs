//! `dispatchctl pause|resume|stats`: consumption control and a snapshot of the processor.

use clap::ArgGroup;
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;

use crate::client::{Conn, status_error};
use crate::{CliError, Format, output};

/// What to pause or resume: one priority topic or one task type.
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["priority", "task_type"])))]
pub struct TargetArgs {
    /// A priority topic: its partitions stop being fetched.
    #[arg(long, value_parser = ["critical", "default", "low"])]
    pub priority: Option<String>,
    /// A task type: its records are held, not run; other types keep flowing.
    #[arg(long = "type", visible_alias = "task-type")]
    pub task_type: Option<String>,
}

impl TargetArgs {
    fn to_proto(&self) -> anyhow::Result<pb::PauseRequest> {
        use pb::pause_request::Target;
        let target = match (&self.priority, &self.task_type) {
            (Some(p), None) => Target::Priority(match p.as_str() {
                "critical" => pb::Priority::Critical,
                "low" => pb::Priority::Low,
                _ => pb::Priority::Default,
            } as i32),
            (None, Some(t)) => Target::TaskType(t.clone()),
            _ => {
                return Err(
                    CliError::Invalid("give exactly one of --priority or --type".into()).into(),
                );
            }
        };
        Ok(pb::PauseRequest {
            target: Some(target),
        })
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn print_paused(r: &pb::PauseResponse, format: Format) {
    let json =
        json!({"paused_priorities": r.paused_priorities, "paused_task_types": r.paused_task_types});
    output::print(
        format,
        &["PAUSED PRIORITIES", "PAUSED TYPES"],
        vec![vec![list(&r.paused_priorities), list(&r.paused_task_types)]],
        &json,
    );
}

/// Runs `pause` (or `resume` when `resume`).
///
/// # Errors
/// Invalid input, unreachable processor, auth.
pub async fn pause(t: TargetArgs, resume: bool, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let req = conn.admin_request(t.to_proto()?)?;
    let mut c = AdminServiceClient::new(conn.channel(&conn.admin).await?);
    let r = if resume {
        c.resume_consumption(req).await
    } else {
        c.pause_consumption(req).await
    }
    .map_err(|s| status_error(if resume { "resume" } else { "pause" }, s))?
    .into_inner();
    print_paused(&r, format);
    Ok(())
}

/// Stats as JSON.
pub fn stats_json(s: &pb::Stats) -> serde_json::Value {
    // serde_json maps are ordered by key: stable output.
    json!({
        "in_flight": s.in_flight,
        "dlq_size": s.dlq_size,
        "outbox_backlog": s.outbox_backlog,
        "paused_priorities": s.paused_priorities,
        "paused_task_types": s.paused_task_types,
        "retry_depths": s.retry_depths.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "breakers": s.breakers.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "partitions": s.partitions.iter().map(|p| json!({
            "topic": p.topic, "partition": p.partition, "high_watermark": p.high_watermark,
            "committed_offset": p.committed_offset, "lag": p.lag, "owner": p.owner,
        })).collect::<Vec<_>>(),
        "group": s.group,
        "answered_by": s.answered_by,
        "total_lag": s.partitions.iter().map(|p| p.lag).sum::<i64>(),
        "instances": s.instances.iter().map(|i| json!({
            "client_id": i.client_id, "member_id": i.member_id, "host": i.host,
            "partitions": i.partitions, "lag": i.lag,
        })).collect::<Vec<_>>(),
        "pauses": s.pauses.iter().map(|p| json!({
            "kind": p.kind, "target": p.target, "paused_at": p.paused_at.as_ref().map(timestamp),
        })).collect::<Vec<_>>(),
    })
}

fn timestamp(t: &dispatch_proto::Timestamp) -> String {
    dispatch_core::time::from_proto(t)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Runs `stats`.
///
/// # Errors
/// Unreachable processor, auth.
pub async fn stats(conn: &Conn, format: Format) -> anyhow::Result<()> {
    let req = conn.admin_request(pb::GetStatsRequest {})?;
    let s = AdminServiceClient::new(conn.channel(&conn.admin).await?)
        .get_stats(req)
        .await
        .map_err(|s| status_error("stats", s))?
        .into_inner();
    if format == Format::Json {
        output::print(format, &[], Vec::new(), &stats_json(&s));
        return Ok(());
    }
    println!(
        "{}",
        output::table(
            &[
                "IN FLIGHT",
                "DLQ SIZE",
                "OUTBOX BACKLOG",
                "PAUSED PRIORITIES",
                "PAUSED TYPES"
            ],
            vec![vec![
                s.in_flight.to_string(),
                s.dlq_size.to_string(),
                s.outbox_backlog.to_string(),
                list(&s.paused_priorities),
                list(&s.paused_task_types),
            ]],
        )
    );
    println!(
        "{}",
        output::table(
            &["GROUP", "TOTAL LAG", "INSTANCES", "ANSWERED BY"],
            vec![vec![
                s.group.clone(),
                s.partitions.iter().map(|p| p.lag).sum::<i64>().to_string(),
                s.instances.len().to_string(),
                s.answered_by.clone(),
            ]],
        )
    );
    println!(
        "{}",
        output::table(
            &["INSTANCE", "HOST", "PARTITIONS", "LAG", "MEMBER ID"],
            s.instances
                .iter()
                .map(|i| {
                    vec![
                        i.client_id.clone(),
                        i.host.clone(),
                        i.partitions.to_string(),
                        i.lag.to_string(),
                        i.member_id.clone(),
                    ]
                })
                .collect(),
        )
    );
    if !s.pauses.is_empty() {
        println!(
            "{}",
            output::table(
                &["PAUSED KIND", "TARGET", "SINCE"],
                s.pauses
                    .iter()
                    .map(|p| {
                        vec![
                            p.kind.clone(),
                            p.target.clone(),
                            p.paused_at.as_ref().map(timestamp).unwrap_or_default(),
                        ]
                    })
                    .collect(),
            )
        );
    }
    let mut depths: Vec<_> = s.retry_depths.iter().collect();
    depths.sort();
    println!(
        "{}",
        output::table(
            &["RETRY TOPIC", "DEPTH"],
            depths
                .into_iter()
                .map(|(t, d)| vec![t.clone(), d.to_string()])
                .collect(),
        )
    );
    println!(
        "{}",
        output::table(
            &[
                "TOPIC",
                "PARTITION",
                "HIGH WATERMARK",
                "COMMITTED",
                "LAG",
                "OWNER"
            ],
            s.partitions
                .iter()
                .map(|p| {
                    vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        p.high_watermark.to_string(),
                        p.committed_offset.to_string(),
                        p.lag.to_string(),
                        if p.owner.is_empty() {
                            "-".into()
                        } else {
                            p.owner.clone()
                        },
                    ]
                })
                .collect(),
        )
    );
    if !s.breakers.is_empty() {
        let mut b: Vec<_> = s.breakers.iter().collect();
        b.sort();
        println!(
            "{}",
            output::table(
                &["HANDLER", "BREAKER"],
                b.into_iter()
                    .map(|(h, st)| vec![h.clone(), st.clone()])
                    .collect(),
            )
        );
    }
    Ok(())
}
