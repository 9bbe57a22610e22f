//! A workflow end to end: SubmitWorkflow at the gateway, the nodes run by the processor in
//! dependency order (a failure cancelling its `cancel` dependents, a `run` dependent running
//! anyway), GetWorkflow at the reader showing every node's outcome, and a node's dependents
//! reading its result.

use dispatch_proto::v1 as pb;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::Stack;

use crate::support::{SETTLE, spec};

fn node(name: &str, payload: &str, deps: &[(&str, pb::DependencyFailure)]) -> pb::WorkflowNode {
    pb::WorkflowNode {
        name: name.into(),
        task: Some(spec("simulate", payload.as_bytes())),
        depends_on: deps
            .iter()
            .map(|(d, on_failure)| pb::WorkflowDependency {
                name: (*d).into(),
                on_failure: *on_failure as i32,
            })
            .collect(),
    }
}

#[tokio::test]
async fn a_workflow_runs_in_dependency_order_and_shows_every_outcome() -> anyhow::Result<()> {
    use pb::DependencyFailure::{Cancel, Run};
    let stack = Stack::start().await?;
    let mut tasks = stack.tasks().await?;
    let submitted = tasks
        .submit_workflow(authed(
            pb::SubmitWorkflowRequest {
                nodes: vec![
                    node("fetch", r#"{"latency_ms":100}"#, &[]),
                    node("broken", r#"{"fail_attempts":9,"permanent":true}"#, &[]),
                    node(
                        "resize",
                        r#"{"with_dependencies":true}"#,
                        &[("fetch", Cancel)],
                    ),
                    node("publish", "", &[("resize", Cancel), ("broken", Cancel)]),
                    node(
                        "report",
                        r#"{"with_dependencies":true}"#,
                        &[("broken", Run), ("resize", Cancel)],
                    ),
                ],
                idempotency_key: format!("wf-{}", uuid::Uuid::now_v7().simple()),
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    assert!(!submitted.duplicate);
    let names: Vec<&str> = submitted.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["fetch", "broken", "resize", "publish", "report"]);

    let q = stack.queries().await?;
    let id = submitted.workflow_id.clone();
    let done = dispatch_testkit::eventually("the workflow finished", SETTLE, || {
        let (mut q, id) = (q.clone(), id.clone());
        async move {
            let w = q
                .get_workflow(authed(pb::GetWorkflowRequest { workflow_id: id }, KEY_ACME))
                .await
                .ok()?
                .into_inner()
                .workflow?;
            (w.state != pb::WorkflowState::Running as i32).then_some(w)
        }
    })
    .await?;
    assert_eq!(done.state, pb::WorkflowState::Failed as i32, "{done:?}");
    let state = |name: &str| {
        done.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| pb::TaskState::try_from(n.state).unwrap_or_default())
    };
    use pb::TaskState::{Cancelled, Dead, Succeeded};
    assert_eq!(state("fetch"), Some(Succeeded));
    assert_eq!(state("broken"), Some(Dead));
    assert_eq!(state("resize"), Some(Succeeded));
    assert_eq!(
        state("publish"),
        Some(Cancelled),
        "a cancel edge to a dead node"
    );
    assert_eq!(
        state("report"),
        Some(Succeeded),
        "a run edge to a dead node"
    );

    // What `report` read of its dependencies, through GetTask.
    let report_id = &submitted.nodes[4].task_id;
    let report = crate::support::await_state(&stack, KEY_ACME, report_id, 0, Succeeded).await?;
    let result: serde_json::Value = serde_json::from_slice(&report.result)?;
    let read: Vec<(String, String)> = result["dependencies"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["name"].as_str().unwrap_or("").to_owned(),
                        d["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        read,
        [
            ("broken".to_owned(), "dead".to_owned()),
            ("resize".to_owned(), "succeeded".to_owned())
        ]
    );
    stack.stop().await?;
    Ok(())
}
