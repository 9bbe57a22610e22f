//! Task commands: `get`, `watch`, `list`, `cancel` (`submit` is in [`super::submit`]).

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;

use crate::client::{Conn, status_error};
use crate::{CliError, Format, output};

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
