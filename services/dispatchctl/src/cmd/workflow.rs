//! `dispatchctl workflow submit|get|cancel`: workflows (tasks with dependencies) through the
//! gateway's SubmitWorkflow and CancelWorkflow and the reader's GetWorkflow (API key).
//!
//! `submit --file` reads one JSON document:
//!
//! ```json
//! {"idempotency_key": "nightly-2026-12-03",
//!  "nodes": [{"name": "extract", "task": {"key": "k", "type": "etl.extract"}},
//!            {"name": "load", "task": {"key": "k", "type": "etl.load"},
//!             "depends_on": [{"name": "extract", "on_failure": "cancel"}]}]}
//! ```
//!
//! A node's `task` has the form of a `submit --file` task; `on_failure` is `cancel` (the
//! default) or `run`. A document that does not have this shape is refused before anything is
//! sent, naming the JSON path of the problem (`nodes[1].depends_on[0].on_failure: ...`).
//!
//! Over 400 lines because of its tests (from `mod tests`, near line 375) and the JSON document's
//! parser, which names the path of every problem; the parser would move out first.

use std::io::Read as _;

use clap::Subcommand;
use dispatch_core::TaskId;
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use serde_json::{Map, Value, json};

use crate::client::{Conn, status_error};
use crate::cmd::submit::task_from_json;
use crate::cmd::tasks::{state_name, ts};
use crate::{CliError, Format, output};

/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// Workflow actions.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Submit a workflow from a JSON file (`-` reads standard input): {"idempotency_key",
    /// "nodes": [{"name", "task": {the form of a submit --file task}, "depends_on": [{"name",
    /// "on_failure": "cancel" or "run"}]}]}.
    Submit {
        /// The workflow's JSON file, or `-` for standard input.
        #[arg(long)]
        file: String,
    },
    /// Show a workflow and every node's state (from the reader).
    Get {
        /// Workflow id.
        workflow_id: String,
    },
    /// Cancel every node of a workflow that has not finished.
    Cancel {
        /// Workflow id.
        workflow_id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs a workflow action.
///
/// # Errors
/// Invalid input, not found, auth, unreachable.
pub async fn run(a: Args, conn: &Conn, format: Format) -> anyhow::Result<()> {
    match a.action {
        Action::Submit { file } => submit(&file, conn, format).await,
        Action::Get { workflow_id } => get(&workflow_id, conn, format).await,
        Action::Cancel {
            workflow_id,
            reason,
        } => cancel(&workflow_id, reason, conn, format).await,
    }
}

/// Reads `path` (`-`: standard input).
fn read(path: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Invalid(format!("cannot read standard input: {e}")))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("cannot read {path}: {e}")))?;
    }
    Ok(text)
}

/// An object's fields, refusing any not in `known`.
fn object<'a>(v: &'a Value, path: &str, known: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let Some(m) = v.as_object() else {
        return Err(format!("{path}: must be an object"));
    };
    if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
        let list = known.join(", ");
        return Err(format!("{path}.{k}: unknown field; expected one of {list}"));
    }
    Ok(m)
}

/// A string field (`required`: absent is an error; else absent is "").
fn string(m: &Map<String, Value>, path: &str, key: &str, required: bool) -> Result<String, String> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None | Some(Value::Null) => Err(format!("{path}.{key}: is required")),
        Some(_) => Err(format!("{path}.{key}: must be a string")),
    }
}

/// An array field (absent: empty).
fn array<'a>(m: &'a Map<String, Value>, path: &str, key: &str) -> Result<&'a [Value], String> {
    match m.get(key) {
        Some(Value::Array(a)) => Ok(a),
        None | Some(Value::Null) => Ok(&[]),
        Some(_) => Err(format!("{path}.{key}: must be an array")),
    }
}

/// A workflow document as a request; the error names the JSON path of the first problem.
///
/// # Errors
/// Not JSON, or not a workflow's shape.
pub fn parse_request(text: &str) -> Result<pb::SubmitWorkflowRequest, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let top = object(&doc, "$", &["idempotency_key", "nodes"]).map_err(|e| {
        e.strip_prefix("$.")
            .map_or_else(|| e.clone(), str::to_owned)
    })?;
    let idempotency_key = string(top, "", "idempotency_key", false)
        .map_err(|e| e.trim_start_matches('.').to_owned())?;
    let nodes = match top.get("nodes") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err("nodes: must be an array".into()),
        None => return Err("nodes: is required".into()),
    };
    let mut out = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let path = format!("nodes[{i}]");
        let m = object(n, &path, &["name", "task", "depends_on"])?;
        let name = string(m, &path, "name", true)?;
        let task = match m.get("task") {
            None | Some(Value::Null) => return Err(format!("{path}.task: is required")),
            Some(t) => task_from_json(t.clone()).map_err(|e| format!("{path}.task: {e}"))?,
        };
        let mut depends_on = Vec::new();
        for (j, d) in array(m, &path, "depends_on")?.iter().enumerate() {
            let dpath = format!("{path}.depends_on[{j}]");
            let dm = object(d, &dpath, &["name", "on_failure"])?;
            let on_failure = match string(dm, &dpath, "on_failure", false)?.as_str() {
                "" | "cancel" => pb::DependencyFailure::Cancel,
                "run" => pb::DependencyFailure::Run,
                other => {
                    return Err(format!(
                        "{dpath}.on_failure: {other:?} is neither \"cancel\" nor \"run\""
                    ));
                }
            };
            depends_on.push(pb::WorkflowDependency {
                name: string(dm, &dpath, "name", true)?,
                on_failure: on_failure as i32,
            });
        }
        out.push(pb::WorkflowNode {
            name,
            task: Some(task),
            depends_on,
        });
    }
    Ok(pb::SubmitWorkflowRequest {
        nodes: out,
        idempotency_key,
    })
}

/// Runs `workflow submit`.
///
/// # Errors
/// Invalid input (locally or from the gateway), auth, unreachable.
pub async fn submit(file: &str, conn: &Conn, format: Format) -> anyhow::Result<()> {
    let name = if file == "-" { "standard input" } else { file };
    let req = parse_request(&read(file)?).map_err(|e| CliError::Invalid(format!("{name}: {e}")))?;
    let mut c = TaskServiceClient::new(conn.channel(&conn.gateway).await?);
    let r = c
        .submit_workflow(conn.request(req)?)
        .await
        .map_err(|s| status_error("workflow submit", s))?
        .into_inner();
    let json = json!({
        "workflow_id": r.workflow_id,
        "duplicate": r.duplicate,
        "nodes": r.nodes.iter().map(|n| json!({"name": n.name, "task_id": n.task_id})).collect::<Vec<_>>(),
    });
    if format == Format::Table {
        let dup = if r.duplicate { " (duplicate)" } else { "" };
        println!("workflow {}{dup}", r.workflow_id);
    }
    output::print(
        format,
        &["NODE", "TASK ID"],
        r.nodes
            .iter()
            .map(|n| vec![n.name.clone(), n.task_id.clone()])
            .collect(),
        &json,
    );
    Ok(())
}

fn workflow_state(s: i32) -> String {
    pb::WorkflowState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("WORKFLOW_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

fn on_failure(v: i32) -> &'static str {
    match pb::DependencyFailure::try_from(v) {
        Ok(pb::DependencyFailure::Run) => "run",
        _ => "cancel",
    }
}

/// A workflow as JSON: states as lower-case names, times in RFC 3339.
pub fn workflow_json(w: &pb::Workflow) -> Value {
    json!({
        "workflow_id": w.workflow_id,
        "tenant": w.tenant,
        "state": workflow_state(w.state),
        "idempotency_key": w.idempotency_key,
        "created_at": ts(&w.created_at),
        "cancel_requested": w.cancel_requested,
        "nodes": w.nodes.iter().map(|n| json!({
            "name": n.name,
            "task_id": n.task_id,
            "state": state_name(n.state),
            "depends_on": n.depends_on.iter().map(|d| json!({"name": d.name, "on_failure": on_failure(d.on_failure)})).collect::<Vec<_>>(),
            "business_key": n.business_key,
            "task_type": n.task_type,
            "attempts": n.attempts,
            "last_error": n.last_error,
            "finished_at": ts(&n.finished_at),
        })).collect::<Vec<_>>(),
    })
}

/// The heading line of `workflow get`'s table output.
pub fn workflow_heading(w: &pb::Workflow) -> String {
    let mut s = format!(
        "workflow {}  {}  created {}",
        w.workflow_id,
        workflow_state(w.state),
        ts(&w.created_at)
    );
    if !w.idempotency_key.is_empty() {
        s.push_str(&format!("  key {}", w.idempotency_key));
    }
    if w.cancel_requested {
        s.push_str("  cancel requested");
    }
    s
}

/// Headers of `workflow get`'s node table.
pub const NODE_HEADERS: [&str; 9] = [
    "NODE",
    "TASK ID",
    "TYPE",
    "KEY",
    "STATE",
    "ATTEMPTS",
    "DEPENDS ON",
    "FINISHED",
    "LAST ERROR",
];

/// One row per node: a dependency behind a `run` edge is marked `(run)`.
pub fn node_rows(w: &pb::Workflow) -> Vec<Vec<String>> {
    w.nodes
        .iter()
        .map(|n| {
            let deps = n
                .depends_on
                .iter()
                .map(|d| match on_failure(d.on_failure) {
                    "run" => format!("{} (run)", d.name),
                    _ => d.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                n.name.clone(),
                n.task_id.clone(),
                n.task_type.clone(),
                n.business_key.clone(),
                state_name(n.state),
                n.attempts.to_string(),
                deps,
                ts(&n.finished_at),
                n.last_error.chars().take(60).collect(),
            ]
        })
        .collect()
}

/// A workflow id, checked before anything is sent.
fn workflow_id(id: &str) -> anyhow::Result<()> {
    TaskId::parse(id)
        .map(|_| ())
        .map_err(|e| CliError::Invalid(format!("{id:?} is not a workflow id: {e}")).into())
}

/// Runs `workflow get`.
///
/// # Errors
/// Invalid id, not found, auth, unreachable.
pub async fn get(id: &str, conn: &Conn, format: Format) -> anyhow::Result<()> {
    workflow_id(id)?;
    let mut c = TaskQueryServiceClient::new(conn.channel(&conn.reader).await?);
    let w = c
        .get_workflow(conn.request(pb::GetWorkflowRequest {
            workflow_id: id.to_owned(),
        })?)
        .await
        .map_err(|s| status_error(&format!("workflow get {id}"), s))?
        .into_inner()
        .workflow
        .ok_or_else(|| anyhow::anyhow!("reader answered without a workflow"))?;
    if format == Format::Table {
        println!("{}", workflow_heading(&w));
    }
    output::print(format, &NODE_HEADERS, node_rows(&w), &workflow_json(&w));
    Ok(())
}

/// Runs `workflow cancel`.
///
/// # Errors
/// Invalid id, not found, auth, unreachable.
pub async fn cancel(
    id: &str,
    reason: Option<String>,
    conn: &Conn,
    format: Format,
) -> anyhow::Result<()> {
    workflow_id(id)?;
    let mut c = TaskServiceClient::new(conn.channel(&conn.gateway).await?);
    let r = c
        .cancel_workflow(conn.request(pb::CancelWorkflowRequest {
            workflow_id: id.to_owned(),
            reason: reason.unwrap_or_default(),
        })?)
        .await
        .map_err(|s| status_error(&format!("workflow cancel {id}"), s))?
        .into_inner();
    output::print(
        format,
        &["WORKFLOW ID", "ACCEPTED"],
        vec![vec![r.workflow_id.clone(), r.accepted.to_string()]],
        &json!({"workflow_id": r.workflow_id, "accepted": r.accepted}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_document_becomes_a_request() {
        let r = parse_request(
            r#"{"idempotency_key": "n-1", "nodes": [
                {"name": "a", "task": {"key": "k", "type": "echo", "payload": {"x": 1}, "timeout": "30s"}},
                {"name": "b", "task": {"key": "k", "type": "echo", "priority": "low"},
                 "depends_on": [{"name": "a"}, {"name": "c", "on_failure": "run"}]}]}"#,
        )
        .expect("valid");
        assert_eq!(r.idempotency_key, "n-1");
        assert_eq!(r.nodes.len(), 2);
        let a = r.nodes[0].task.as_ref().expect("task");
        assert_eq!(
            (a.payload.as_slice(), a.timeout_ms),
            (&br#"{"x":1}"#[..], 30_000)
        );
        assert_eq!(
            r.nodes[1].task.as_ref().map(|t| t.priority),
            Some(pb::Priority::Low as i32)
        );
        let deps: Vec<(&str, i32)> = r.nodes[1]
            .depends_on
            .iter()
            .map(|d| (d.name.as_str(), d.on_failure))
            .collect();
        assert_eq!(
            deps,
            [
                ("a", pb::DependencyFailure::Cancel as i32),
                ("c", pb::DependencyFailure::Run as i32)
            ]
        );
    }

    #[test]
    fn a_malformed_document_names_the_json_path() {
        let node = r#"{"name": "a", "task": {"key": "k", "type": "echo"}}"#;
        // One node with `extra` beside its name and task.
        let one = |extra: &str| {
            format!(
                r#"{{"nodes": [{{"name": "a", "task": {{"key": "k", "type": "t"}}, {extra}}}]}}"#
            )
        };
        for (doc, starts) in [
            ("[1]".to_owned(), "$: must be an object"),
            ("{\"nodes\": 3}".to_owned(), "nodes: must be an array"),
            ("{}".to_owned(), "nodes: is required"),
            (
                "{\"nodes\": [], \"extra\": 1}".to_owned(),
                "extra: unknown field",
            ),
            (
                "{\"idempotency_key\": 7, \"nodes\": []}".to_owned(),
                "idempotency_key: must be a string",
            ),
            ("{\"nodes\": [".to_owned(), "not JSON"),
            (
                format!("{{\"nodes\": [{node}, 5]}}"),
                "nodes[1]: must be an object",
            ),
            (
                format!("{{\"nodes\": [{node}, {{\"task\": {{}}}}]}}"),
                "nodes[1].name: is required",
            ),
            (
                format!("{{\"nodes\": [{node}, {{\"name\": \"b\"}}]}}"),
                "nodes[1].task: is required",
            ),
            (
                format!(
                    "{{\"nodes\": [{node}, {{\"name\": \"b\", \"task\": {{\"key\": \"k\"}}}}]}}"
                ),
                "nodes[1].task: missing field `type`",
            ),
            (
                format!(
                    "{{\"nodes\": [{node}, {{\"name\": \"b\", \"task\": {{\"key\": \"k\", \"type\": \"t\", \"priority\": \"urgent\"}}}}]}}"
                ),
                "nodes[1].task: unknown priority",
            ),
            (
                format!(
                    "{{\"nodes\": [{node}, {{\"name\": \"b\", \"task\": {{\"key\": \"k\", \"type\": \"t\", \"timeout\": \"soon\"}}}}]}}"
                ),
                "nodes[1].task: timeout:",
            ),
            (
                one(r#""depends_on": [{"name": "x", "on_failure": "maybe"}]"#),
                "nodes[0].depends_on[0].on_failure: \"maybe\" is neither",
            ),
            (
                one(r#""depends_on": ["x"]"#),
                "nodes[0].depends_on[0]: must be an object",
            ),
            (one(r#""depends": []"#), "nodes[0].depends: unknown field"),
        ] {
            let e = parse_request(&doc).expect_err(&doc);
            assert!(e.starts_with(starts), "{doc}: {e}");
        }
    }

    fn sample() -> pb::Workflow {
        let t = Some(prost_types::Timestamp {
            seconds: 1_764_720_000,
            nanos: 0,
        });
        pb::Workflow {
            workflow_id: "0193d0a4-0000-7000-8000-000000000001".into(),
            tenant: "acme".into(),
            state: pb::WorkflowState::Failed as i32,
            idempotency_key: "n-1".into(),
            created_at: t,
            cancel_requested: false,
            nodes: vec![
                pb::WorkflowNodeStatus {
                    name: "a".into(),
                    task_id: "0193d0a4-0000-7000-8000-000000000002".into(),
                    state: pb::TaskState::Dead as i32,
                    business_key: "k".into(),
                    task_type: "echo".into(),
                    attempts: 3,
                    last_error: "boom".into(),
                    finished_at: t,
                    ..Default::default()
                },
                pb::WorkflowNodeStatus {
                    name: "b".into(),
                    task_id: "0193d0a4-0000-7000-8000-000000000003".into(),
                    state: pb::TaskState::Waiting as i32,
                    depends_on: vec![
                        pb::WorkflowDependency {
                            name: "a".into(),
                            on_failure: pb::DependencyFailure::Run as i32,
                        },
                        pb::WorkflowDependency {
                            name: "c".into(),
                            on_failure: pb::DependencyFailure::Cancel as i32,
                        },
                    ],
                    business_key: "k".into(),
                    task_type: "echo".into(),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn get_prints_a_heading_a_node_table_and_json() {
        let w = sample();
        assert_eq!(
            workflow_heading(&w),
            "workflow 0193d0a4-0000-7000-8000-000000000001  failed  created 2025-12-03T00:00:00.000Z  key n-1"
        );
        let rows = node_rows(&w);
        assert_eq!(
            rows[0],
            [
                "a",
                "0193d0a4-0000-7000-8000-000000000002",
                "echo",
                "k",
                "dead",
                "3",
                "",
                "2025-12-03T00:00:00.000Z",
                "boom"
            ]
        );
        assert_eq!(rows[1][4], "waiting");
        assert_eq!(rows[1][6], "a (run), c");
        assert_eq!(rows[1][7], "");
        let j = workflow_json(&w);
        assert_eq!(j["state"], "failed");
        assert_eq!(j["nodes"][1]["state"], "waiting");
        assert_eq!(
            j["nodes"][1]["depends_on"],
            json!([{"name": "a", "on_failure": "run"}, {"name": "c", "on_failure": "cancel"}])
        );
        assert_eq!(j["nodes"][0]["finished_at"], "2025-12-03T00:00:00.000Z");
    }
}
