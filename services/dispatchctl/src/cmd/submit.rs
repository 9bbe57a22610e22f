//! `submit`: one task from flags, or many from a JSON array / NDJSON file with a progress bar
//! (rate, ETA) and a summary of accepted / duplicate / failed.

use std::io::BufRead;

use dispatch_proto::v1 as pb;
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
    /// Payload, sent as its UTF-8 bytes (for `simulate`, a JSON plan such as '{"latency_ms":20}').
    #[arg(long, default_value = "")]
    pub payload: String,
    /// Priority: critical, default or low.
    #[arg(long, default_value = "default")]
    pub priority: String,
    /// Idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Per-task timeout of each attempt, such as 500ms, 30s, 5m or 1h (the processor runs an
    /// attempt under the shorter of this and its type's timeout; the gateway caps it, 1 h by
    /// default).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<u32>,
    /// A JSON array or NDJSON file of tasks ({"key","type","payload","priority","idempotency_key","timeout"}).
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
    #[serde(default)]
    timeout: Option<String>,
}

/// `500ms`, `30s`, `5m`, `1h` (or bare milliseconds) -> milliseconds, 1..=u32::MAX.
///
/// # Errors
/// Not such a duration.
pub fn parse_timeout(s: &str) -> Result<u32, String> {
    const UNITS: [(&str, u64); 5] = [
        ("", 1),
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
    ];
    let ms = crate::units::scaled(s, &UNITS)
        .ok_or_else(|| format!("{s:?} is not a timeout like 500ms, 30s, 5m or 1h"))?;
    if ms == 0 {
        return Err(format!("{s:?}: a timeout must be above zero"));
    }
    u32::try_from(ms).map_err(|_| format!("{s:?} is longer than {} ms", u32::MAX))
}

/// A priority's name (`critical`, `default` or `low`; empty: `default`) as its protobuf value.
///
/// # Errors
/// Another name.
pub(crate) fn priority(s: &str) -> anyhow::Result<i32> {
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
    timeout_ms: Option<u32>,
) -> anyhow::Result<pb::TaskSpec> {
    Ok(pb::TaskSpec {
        business_key: key,
        task_type,
        payload,
        priority: priority(prio)?,
        idempotency_key: idem.unwrap_or_default(),
        timeout_ms: timeout_ms.unwrap_or(0),
        ..Default::default()
    })
}

/// One item of a bulk file: its line (NDJSON) or position (JSON array), and the task or why it
/// cannot be sent.
type Item = (usize, Result<pb::TaskSpec, String>);

fn item(line: usize, t: Result<FileTask, serde_json::Error>) -> Item {
    (line, t.map_err(|e| e.to_string()).and_then(file_spec))
}

/// The TaskSpec of a file task.
fn file_spec(t: FileTask) -> Result<pb::TaskSpec, String> {
    let payload = match t.payload {
        serde_json::Value::String(s) => s.into_bytes(),
        serde_json::Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    };
    let timeout = match t.timeout.as_deref().map(parse_timeout).transpose() {
        Ok(t) => t,
        Err(e) => return Err(format!("timeout: {e}")),
    };
    spec(
        t.key,
        t.task_type,
        payload,
        t.priority.as_deref().unwrap_or("default"),
        t.idempotency_key,
        timeout,
    )
    .map_err(|e| format!("{e:#}"))
}

/// A task in the bulk file form (`{"key","type","payload","priority","idempotency_key",
/// "timeout"}`) as a TaskSpec (`workflow submit` reads its nodes' tasks this way).
///
/// # Errors
/// What is wrong with it, without a location (the caller adds one).
pub fn task_from_json(v: serde_json::Value) -> Result<pb::TaskSpec, String> {
    serde_json::from_value::<FileTask>(v)
        .map_err(|e| e.to_string())
        .and_then(file_spec)
}

/// Reads a JSON array or NDJSON file. A malformed NDJSON line is one failed item (the rest is
/// still submitted); an unreadable file or a malformed JSON array fails the command.
fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<Item>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    if text.trim_start().starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| CliError::Invalid(format!("{}: {e}", path.display())))?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| item(i + 1, serde_json::from_value(v)))
            .collect());
    }
    let mut v = Vec::new();
    for (i, line) in std::io::BufReader::new(text.as_bytes()).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        v.push(item(i + 1, serde_json::from_str(&line)));
    }
    Ok(v)
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

impl Summary {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < 20 {
            self.failures.push(what);
        }
    }
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
            a.timeout,
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
    if !(1..=1000).contains(&a.batch) {
        return Err(CliError::Invalid("--batch must be 1..=1000".into()).into());
    }
    let items = read_file(file)?;
    let name = file.display().to_string();
    let total = items.len() as u64;
    let mut summary = Summary {
        total,
        ..Default::default()
    };
    let mut valid = Vec::with_capacity(items.len());
    for (line, r) in items {
        match r {
            Ok(spec) => valid.push((line, spec)),
            Err(e) => summary.fail(format!("{name} item {line}: {e}")),
        }
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if format == Format::Json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_position(summary.failed);
    for chunk in valid.chunks(a.batch) {
        let resp = client
            .submit_tasks(conn.request(pb::SubmitTasksRequest {
                tasks: chunk.iter().map(|(_, s)| s.clone()).collect(),
            })?)
            .await
            .map_err(|s| status_error("submit", s))?
            .into_inner();
        for r in resp.results {
            let line = chunk.get(r.index as usize).map_or(0, |(l, _)| *l);
            match r.outcome {
                Some(pb::submit_result::Outcome::Accepted(acc)) if acc.duplicate => {
                    summary.duplicate += 1;
                }
                Some(pb::submit_result::Outcome::Accepted(acc)) => {
                    summary.accepted += 1;
                    summary.via_outbox +=
                        u64::from(acc.accepted_via == pb::AcceptedVia::Outbox as i32);
                }
                Some(pb::submit_result::Outcome::Error(e)) => {
                    summary.fail(format!("{name} item {line}: {}", e.message));
                }
                None => summary.fail(format!("{name} item {line}: no outcome")),
            }
        }
        bar.inc(chunk.len() as u64);
        bar.set_message(format!("failed {}", summary.failed));
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
        if summary.failed as usize > summary.failures.len() {
            eprintln!(
                "  ... and {} more",
                summary.failed as usize - summary.failures.len()
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_units() {
        assert_eq!(parse_timeout("500ms"), Ok(500));
        assert_eq!(parse_timeout("30s"), Ok(30_000));
        assert_eq!(parse_timeout("5m"), Ok(300_000));
        assert_eq!(parse_timeout("1h"), Ok(3_600_000));
        assert_eq!(parse_timeout("250"), Ok(250));
        for bad in ["", "0s", "soon", "1.5s", "-1s", "10d", "5000000h"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        let s = spec(
            "k".into(),
            "noop".into(),
            Vec::new(),
            "default",
            None,
            Some(300),
        )
        .expect("spec");
        assert_eq!(s.timeout_ms, 300);
    }
}
