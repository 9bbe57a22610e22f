//! Task commands: `submit`, `get`, `watch`, `list`, `cancel`.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use serde::{Deserialize, Serialize};

use crate::client::{Conn, status_error};
use crate::{CliError, Format, output};

/// `submit`: one task from flags, or many from a JSON array / NDJSON file.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Business key (ordering key).
    #[arg(long, required_unless_present = "file")]
    pub key: Option<String>,
    /// Task type.
    #[arg(long = "type", required_unless_present = "file")]
    pub task_type: Option<String>,
    /// Payload (UTF-8 text; use --payload-file for bytes).
    #[arg(long, default_value = "")]
    pub payload: String,
    /// Priority: critical, default or low.
    #[arg(long, default_value = "default")]
    pub priority: String,
    /// Idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A JSON array or NDJSON file of tasks ({"key","type","payload","priority","idempotency_key"}).
    #[arg(long, conflicts_with_all = ["key", "task_type"])]
    pub file: Option<std::path::PathBuf>,
    /// Tasks per SubmitTasks call in bulk mode (1..=1000).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// One task in a bulk file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTask {
    key: String,
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn priority(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "critical" => pb::Priority::Critical,
        "default" | "" => pb::Priority::Default,
        "low" => pb::Priority::Low,
        other => {
            return Err(CliError::Invalid(format!(
                "unknown priority {other:?}: use critical, default or low"
            ))
            .into());
        }
    } as i32)
}

fn spec(
    key: String,
    task_type: String,
    payload: Vec<u8>,
    prio: &str,
    idem: Option<String>,
) -> anyhow::Result<pb::TaskSpec> {
    Ok(pb::TaskSpec {
        business_key: key,
        task_type,
        payload,
        priority: priority(prio)?,
        idempotency_key: idem.unwrap_or_default(),
        ..Default::default()
    })
}

fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<pb::TaskSpec>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let items: Vec<(usize, FileTask)> = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<FileTask>>(&text)
            .map_err(|e| CliError::Invalid(format!("{}: {e}", path.display())))?
            .into_iter()
            .enumerate()
            .map(|(i, t)| (i + 1, t))
            .collect()
    } else {
        let mut v = Vec::new();
        for (i, line) in std::io::BufReader::new(text.as_bytes()).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let t: FileTask = serde_json::from_str(&line).map_err(|e| {
                CliError::Invalid(format!("{} line {}: {e}", path.display(), i + 1))
            })?;
            v.push((i + 1, t));
        }
        v
    };
    items
        .into_iter()
        .map(|(line, t)| {
            let payload = match t.payload {
                serde_json::Value::String(s) => s.into_bytes(),
                serde_json::Value::Null => Vec::new(),
                other => other.to_string().into_bytes(),
            };
            spec(
                t.key,
                t.task_type,
                payload,
                t.priority.as_deref().unwrap_or("default"),
                t.idempotency_key,
            )
            .map_err(|e| anyhow::anyhow!("{} line {line}: {e:#}", path.display()))
        })
        .collect()
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    total: u64,
    accepted: u64,
    duplicate: u64,
    failed: u64,
    via_outbox: u64,
    failures: Vec<String>,
}

/// Runs `submit`.
///
/// # Errors
/// Invalid input, unreachable gateway, or a rejected single submit.
pub async fn submit(a: SubmitArgs, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let mut client = TaskServiceClient::new(conn.channel(&conn.gateway).await?);
    let Some(file) = &a.file else {
        let (Some(key), Some(ty)) = (a.key, a.task_type) else {
            return Err(
                CliError::Invalid("--key and --type are required (or --file)".into()).into(),
            );
        };
        let task = spec(
            key,
            ty,
            a.payload.into_bytes(),
            &a.priority,
            a.idempotency_key,
        )?;
        let r = client
            .submit_task(conn.request(pb::SubmitTaskRequest { task: Some(task) })?)
            .await
            .map_err(|s| status_error("submit", s))?
            .into_inner();
        let row = vec![
            r.task_id.clone(),
            via(r.accepted_via).into(),
            format!("{}/{}@{}", r.topic, r.partition, r.offset),
            r.duplicate.to_string(),
            r.version.to_string(),
        ];
        output::print(
            format,
            &["TASK ID", "VIA", "WHERE", "DUPLICATE", "VERSION"],
            vec![row],
            &accepted_json(&r),
        );
        return Ok(());
    };
    let specs = read_file(file)?;
    if !(1..=1000).contains(&a.batch) {
        return Err(CliError::Invalid("--batch must be 1..=1000".into()).into());
    }
    let total = specs.len() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if format == Format::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut summary = Summary {
        total,
        ..Default::default()
    };
    let failed = Arc::new(AtomicU64::new(0));
    let mut offset = 0usize;
    for chunk in specs.chunks(a.batch) {
        let resp = client
            .submit_tasks(conn.request(pb::SubmitTasksRequest {
                tasks: chunk.to_vec(),
            })?)
            .await
            .map_err(|s| status_error("submit", s))?
            .into_inner();
        for r in resp.results {
            match r.outcome {
                Some(pb::submit_result::Outcome::Accepted(acc)) => {
                    summary.accepted += 1;
                    summary.duplicate += u64::from(acc.duplicate);
                    summary.via_outbox +=
                        u64::from(acc.accepted_via == pb::AcceptedVia::Outbox as i32);
                }
                Some(pb::submit_result::Outcome::Error(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    summary.failed += 1;
                    if summary.failures.len() < 20 {
                        summary.failures.push(format!(
                            "item {}: {}",
                            offset + r.index as usize + 1,
                            e.message
                        ));
                    }
                }
                None => summary.failed += 1,
            }
        }
        offset += chunk.len();
        bar.set_position(offset as u64);
        bar.set_message(format!("failed {}", failed.load(Ordering::Relaxed)));
    }
    bar.finish_and_clear();
    let row = vec![
        summary.total.to_string(),
        summary.accepted.to_string(),
        summary.duplicate.to_string(),
        summary.failed.to_string(),
        summary.via_outbox.to_string(),
    ];
    output::print(
        format,
        &["TOTAL", "ACCEPTED", "DUPLICATE", "FAILED", "VIA OUTBOX"],
        vec![row],
        &summary,
    );
    if format == Format::Table {
        for f in &summary.failures {
            eprintln!("  {f}");
        }
    }
    if summary.failed > 0 {
        return Err(CliError::Invalid(format!(
            "{} of {} tasks were rejected",
            summary.failed, summary.total
        ))
        .into());
    }
    Ok(())
}

fn via(v: i32) -> &'static str {
    match pb::AcceptedVia::try_from(v) {
        Ok(pb::AcceptedVia::Kafka) => "kafka",
        Ok(pb::AcceptedVia::Outbox) => "outbox",
        _ => "?",
    }
}

fn accepted_json(r: &pb::SubmitTaskResponse) -> serde_json::Value {
    serde_json::json!({
        "task_id": r.task_id, "duplicate": r.duplicate, "accepted_via": via(r.accepted_via),
        "topic": r.topic, "partition": r.partition, "offset": r.offset, "outbox_id": r.outbox_id, "version": r.version,
    })
}

fn state_name(s: i32) -> String {
    pb::TaskState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A task as JSON (payload as UTF-8 when it is, else base64-free length).
pub fn task_json(t: &pb::Task) -> serde_json::Value {
    serde_json::json!({
        "task_id": t.task_id, "tenant": t.tenant, "business_key": t.business_key, "task_type": t.task_type,
        "state": state_name(t.state), "attempts": t.attempts, "max_attempts": t.max_attempts,
        "version": t.version, "last_error": t.last_error, "created_at": ts(&t.created_at),
        "updated_at": ts(&t.updated_at), "finished_at": ts(&t.finished_at),
        "payload": String::from_utf8(t.payload.clone()).unwrap_or_else(|_| format!("<{} bytes>", t.payload.len())),
    })
}

fn task_row(t: &pb::Task) -> Vec<String> {
    vec![
        t.task_id.clone(),
        t.business_key.clone(),
        t.task_type.clone(),
        state_name(t.state),
        format!("{}/{}", t.attempts, t.max_attempts),
        t.version.to_string(),
        ts(&t.updated_at),
        t.last_error.chars().take(60).collect(),
    ]
}

const TASK_HEADERS: [&str; 8] = [
    "TASK ID",
    "KEY",
    "TYPE",
    "STATE",
    "ATTEMPTS",
    "VERSION",
    "UPDATED",
    "LAST ERROR",
];

/// Runs `get`.
///
/// # Errors
/// Not found, auth, unreachable.
pub async fn get(id: String, min_version: u64, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let mut c = TaskQueryServiceClient::new(conn.channel(&conn.reader).await?);
    let r = c
        .get_task(conn.request(pb::GetTaskRequest {
            task_id: id.clone(),
            min_version,
        })?)
        .await
        .map_err(|s| status_error(&format!("get {id}"), s))?
        .into_inner();
    let t = r
        .task
        .ok_or_else(|| anyhow::anyhow!("reader answered without a task"))?;
    output::print(format, &TASK_HEADERS, vec![task_row(&t)], &task_json(&t));
    Ok(())
}

/// Runs `watch`: prints each state change until the task is terminal.
///
/// # Errors
/// Not found, auth, unreachable.
pub async fn watch(id: String, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let mut c = TaskQueryServiceClient::new(conn.channel(&conn.reader).await?);
    let mut req = conn.request(pb::WatchTaskRequest {
        task_id: id.clone(),
        min_version: 0,
    })?;
    req.set_timeout(std::time::Duration::from_secs(24 * 3600));
    let mut stream = c
        .watch_task(req)
        .await
        .map_err(|s| status_error(&format!("watch {id}"), s))?
        .into_inner();
    while let Some(ev) = stream
        .message()
        .await
        .map_err(|s| status_error(&format!("watch {id}"), s))?
    {
        match format {
            Format::Json => println!(
                "{}",
                serde_json::json!({"task_id": ev.task_id, "state": state_name(ev.state), "version": ev.version, "at": ts(&ev.occurred_at)})
            ),
            Format::Table => println!(
                "{}  {:<10} version {}",
                ts(&ev.occurred_at),
                state_name(ev.state),
                ev.version
            ),
        }
    }
    Ok(())
}

/// `list` filters.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Business key.
    #[arg(long)]
    pub key: Option<String>,
    /// States (repeatable): scheduled, pending, running, retrying, succeeded, dead, cancelled.
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Task type.
    #[arg(long = "type")]
    pub task_type: Option<String>,
    /// Page size (1..=500).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Page token from a previous page.
    #[arg(long)]
    pub page_token: Option<String>,
}

/// Runs `list`.
///
/// # Errors
/// Invalid filters, auth, unreachable.
pub async fn list(a: ListArgs, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let states = a
        .states
        .iter()
        .map(|s| {
            pb::TaskState::from_str_name(&format!("TASK_STATE_{}", s.to_ascii_uppercase()))
                .map(|s| s as i32)
                .ok_or_else(|| CliError::Invalid(format!("unknown state {s:?}")).into())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut c = TaskQueryServiceClient::new(conn.channel(&conn.reader).await?);
    let r = c
        .list_tasks(conn.request(pb::ListTasksRequest {
            business_key: a.key.unwrap_or_default(),
            states,
            task_type: a.task_type.unwrap_or_default(),
            page_size: a.limit,
            page_token: a.page_token.unwrap_or_default(),
            ..Default::default()
        })?)
        .await
        .map_err(|s| status_error("list", s))?
        .into_inner();
    let json = serde_json::json!({
        "tasks": r.tasks.iter().map(task_json).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    });
    output::print(
        format,
        &TASK_HEADERS,
        r.tasks.iter().map(task_row).collect(),
        &json,
    );
    if format == Format::Table && !r.next_page_token.is_empty() {
        eprintln!("more: --page-token {}", r.next_page_token);
    }
    Ok(())
}

/// Runs `cancel`.
///
/// # Errors
/// Not found, auth, unreachable.
pub async fn cancel(
    id: String,
    key: Option<String>,
    reason: Option<String>,
    conn: &Conn,
    format: Format,
) -> anyhow::Result<()> {
    let mut c = TaskServiceClient::new(conn.channel(&conn.gateway).await?);
    let r = c
        .cancel_task(conn.request(pb::CancelTaskRequest {
            task_id: id.clone(),
            business_key: key.unwrap_or_default(),
            reason: reason.unwrap_or_default(),
        })?)
        .await
        .map_err(|s| status_error(&format!("cancel {id}"), s))?
        .into_inner();
    let json = serde_json::json!({"task_id": r.task_id, "accepted": r.accepted, "state": state_name(r.state)});
    output::print(
        format,
        &["TASK ID", "ACCEPTED", "STATE"],
        vec![vec![
            r.task_id.clone(),
            r.accepted.to_string(),
            state_name(r.state),
        ]],
        &json,
    );
    Ok(())
}
