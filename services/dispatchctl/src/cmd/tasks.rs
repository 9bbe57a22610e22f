//! Task commands: `get`, `watch`, `list`, `cancel` (`submit` is in [`super::submit`]).

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;

use crate::client::{Conn, status_error};
use crate::{CliError, Format, output};

/// A task state's lower-case name (`waiting`, `succeeded`, ...).
pub(crate) fn state_name(s: i32) -> String {
    pb::TaskState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

/// A timestamp in RFC 3339 with milliseconds (empty when unset).
pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(dispatch_core::time::from_proto)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Adds `bytes` to `m` under `name` when there are any: UTF-8 text as `name`, other bytes as
/// `<name>_base64` (the dead-letter convention).
fn insert_bytes(m: &mut serde_json::Map<String, serde_json::Value>, name: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => m.insert(name.into(), s.into()),
        Err(_) => {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD.encode(bytes);
            m.insert(format!("{name}_base64"), b.into())
        }
    };
}

/// A task as JSON. `payload` and `result` appear when the answer carries them (GetTask always,
/// ListTasks only in the FULL view): UTF-8 text as is, other bytes as `payload_base64` /
/// `result_base64`.
pub fn task_json(t: &pb::Task) -> serde_json::Value {
    let mut v = serde_json::json!({
        "task_id": t.task_id, "tenant": t.tenant, "business_key": t.business_key, "task_type": t.task_type,
        "state": state_name(t.state), "attempts": t.attempts, "max_attempts": t.max_attempts,
        "version": t.version, "last_error": t.last_error, "created_at": ts(&t.created_at),
        "updated_at": ts(&t.updated_at), "finished_at": ts(&t.finished_at),
    });
    if let Some(m) = v.as_object_mut() {
        insert_bytes(m, "payload", &t.payload);
        insert_bytes(m, "result", &t.result);
    }
    v
}

/// A table cell for opaque bytes: the first [`BYTES_CELL_CHARS`] characters of the UTF-8 text
/// on one line, else their length.
fn bytes_cell(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let one_line: String = s
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if one_line.chars().count() > BYTES_CELL_CHARS {
                let cut: String = one_line.chars().take(BYTES_CELL_CHARS - 1).collect();
                format!("{cut}…")
            } else {
                one_line
            }
        }
        Err(_) => format!("<{} bytes>", bytes.len()),
    }
}

/// Characters of a payload or result shown in a table cell.
const BYTES_CELL_CHARS: usize = 40;

fn task_row(t: &pb::Task, bytes: Columns) -> Vec<String> {
    let mut row = vec![
        t.task_id.clone(),
        t.business_key.clone(),
        t.task_type.clone(),
        state_name(t.state),
        format!("{}/{}", t.attempts, t.max_attempts),
        t.version.to_string(),
        ts(&t.updated_at),
        t.last_error.chars().take(60).collect(),
    ];
    if bytes.payload {
        row.push(bytes_cell(&t.payload));
    }
    if bytes.result {
        row.push(bytes_cell(&t.result));
    }
    row
}

/// Which of the PAYLOAD and RESULT columns a table has: each one when a task in it carries
/// that field (a BASIC list carries neither).
#[derive(Debug, Clone, Copy)]
struct Columns {
    payload: bool,
    result: bool,
}

impl Columns {
    fn of(tasks: &[pb::Task]) -> Self {
        Self {
            payload: tasks.iter().any(|t| !t.payload.is_empty()),
            result: tasks.iter().any(|t| !t.result.is_empty()),
        }
    }

    fn headers(self) -> Vec<&'static str> {
        let mut h = TASK_HEADERS.to_vec();
        if self.payload {
            h.push("PAYLOAD");
        }
        if self.result {
            h.push("RESULT");
        }
        h
    }
}

fn print_tasks(format: Format, tasks: &[pb::Task], json: &serde_json::Value) {
    let cols = Columns::of(tasks);
    output::print(
        format,
        &cols.headers(),
        tasks.iter().map(|t| task_row(t, cols)).collect(),
        json,
    );
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
    print_tasks(format, std::slice::from_ref(&t), &task_json(&t));
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
    /// Ask for the FULL view: each task's payload and result too (by default the reader answers
    /// the BASIC view, without them). A FULL page may hold fewer tasks than --limit when they
    /// would pass the reader's response size bound; --page-token then goes on from there.
    #[arg(long)]
    pub full: bool,
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
            view: if a.full {
                pb::TaskView::Full
            } else {
                pb::TaskView::Basic
            } as i32,
            ..Default::default()
        })?)
        .await
        .map_err(|s| status_error("list", s))?
        .into_inner();
    let json = serde_json::json!({
        "tasks": r.tasks.iter().map(task_json).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    });
    print_tasks(format, &r.tasks, &json);
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
