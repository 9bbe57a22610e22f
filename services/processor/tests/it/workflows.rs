//! Workflows through the processor: the advancer releases nodes only after their dependencies
//! finished, cascades failures per edge, and carries out CancelWorkflow; with two instances
//! and one killed mid-way, every node still ends in exactly one correct terminal state.
//!
//! The workflows are written as the gateway writes them (`dispatch_store::workflows::insert`);
//! the gateway's validation has its own tests.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::workflow::OnFailure;
use dispatch_core::{NewTask, RetryPolicy, TaskId, TaskState};
use dispatch_store::workflows::{self, CancelRequest, NewNode, NewWorkflow};
use dispatch_testkit::{TestEnv, eventually, new_task};
use sqlx::{MySqlPool, Row};

use crate::harness::{settings, start, wait_all, wait_succeeded};

/// A node: name, simulate payload, dependencies `(name, on_failure)`.
type Spec<'a> = (&'a str, String, Vec<(&'a str, OnFailure)>);

fn workflow(specs: &[Spec<'_>]) -> NewWorkflow {
    let workflow_id = TaskId::new();
    let index: HashMap<&str, usize> = specs.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
    let nodes = specs
        .iter()
        .map(|(name, payload, deps)| NewNode {
            name: (*name).to_owned(),
            root: deps.is_empty(),
            task: NewTask {
                task_id: TaskId::workflow_node(workflow_id, name),
                retry: RetryPolicy {
                    max_attempts: 2,
                    initial_backoff_ms: 100,
                    max_backoff_ms: 100,
                },
                // One key per node: order between nodes comes from the edges alone.
                ..new_task(
                    "simulate",
                    &format!("wf-{workflow_id}-{name}"),
                    payload.as_bytes(),
                )
            },
        })
        .collect();
    let edges = specs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, _, deps))| deps.iter().map(move |(d, o)| (i, *d, *o)))
        .map(|(i, d, o)| (i, index[d], o))
        .collect();
    NewWorkflow {
        workflow_id,
        tenant: "acme".into(),
        idempotency_key: None,
        nodes,
        edges,
        fingerprint: [0; 32],
    }
}

fn ids(wf: &NewWorkflow) -> Vec<TaskId> {
    wf.nodes.iter().map(|n| n.task.task_id).collect()
}

/// Each node's state, finished_at and result.
async fn rows(
    pool: &MySqlPool,
    wf: &NewWorkflow,
) -> anyhow::Result<HashMap<String, (TaskState, Option<DateTime<Utc>>, Option<serde_json::Value>)>>
{
    let mut out = HashMap::new();
    for n in &wf.nodes {
        let r = sqlx::query("SELECT state, finished_at, result FROM tasks WHERE task_id = ?")
            .bind(n.task.task_id.as_bytes().as_slice())
            .fetch_one(pool)
            .await?;
        let state: String = r.try_get("state")?;
        let result: Option<Vec<u8>> = r.try_get("result")?;
        out.insert(
            n.name.clone(),
            (
                TaskState::parse(&state).expect("a state"),
                r.try_get("finished_at")?,
                result.and_then(|b| serde_json::from_slice(&b).ok()),
            ),
        );
    }
    Ok(out)
}

/// When each task's handler first started (the `simulate` ledger).
async fn started(pool: &MySqlPool) -> anyhow::Result<HashMap<TaskId, DateTime<Utc>>> {
    let rows = sqlx::query(
        "SELECT task_id, MIN(started_at) AS started_at FROM handler_executions GROUP BY task_id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                TaskId::from_slice(&r.try_get::<Vec<u8>, _>("task_id")?)?,
                r.try_get("started_at")?,
            ))
        })
        .collect()
}

/// Waits until every node of `wf` is terminal; returns the rows.
async fn wait_finished(
    pool: &MySqlPool,
    wf: &NewWorkflow,
    timeout: Duration,
) -> anyhow::Result<()> {
    let ids = ids(wf);
    eventually(
        &format!("{} nodes finished", ids.len()),
        timeout,
        || async {
            let s = crate::harness::states(pool, &ids).await.ok()?;
            (s.len() == ids.len() && s.values().all(|v| v.state.is_terminal())).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn a_chain_of_100_runs_each_node_after_the_one_before() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let names: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
    let specs: Vec<Spec<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let deps = if i == 0 {
                vec![]
            } else {
                vec![(names[i - 1].as_str(), OnFailure::Cancel)]
            };
            // Every tenth node reads its dependency (a result carries the results it read, so
            // every node reading would nest 100 deep).
            let payload = if i % 10 == 5 {
                r#"{"with_dependencies":true}"#.to_owned()
            } else {
                String::new()
            };
            (n.as_str(), payload, deps)
        })
        .collect();
    let wf = workflow(&specs);
    assert_eq!(
        workflows::insert(&env.pool, &wf, Utc::now()).await?,
        workflows::Inserted::New
    );
    let p = start(settings(&env)).await?;
    wait_succeeded(&env, &ids(&wf), Duration::from_secs(120)).await?;
    let rows = rows(&env.pool, &wf).await?;
    let started = started(&env.pool).await?;
    for (i, n) in wf.nodes.iter().enumerate().skip(1) {
        let prev = &wf.nodes[i - 1];
        let prev_finished = rows[&prev.name].1.expect("finished_at");
        assert!(
            started[&n.task.task_id] >= prev_finished,
            "{} started before {} finished",
            n.name,
            prev.name
        );
        if i % 10 != 5 {
            continue;
        }
        // What the node read of its dependency: its name, SUCCEEDED, and its very result.
        let deps = &rows[&n.name].2.as_ref().expect("a JSON result")["dependencies"];
        assert_eq!(deps[0]["name"], prev.name.as_str(), "{deps}");
        assert_eq!(deps[0]["state"], "succeeded");
        let prev_result = rows[&prev.name].2.as_ref().expect("result").to_string();
        let read: serde_json::Value =
            serde_json::from_str(deps[0]["result"].as_str().expect("result text"))?;
        assert_eq!(read.to_string(), prev_result);
    }
    p.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_fan_out_of_1000_runs_after_its_root_and_before_its_sink() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(4).await?;
    let names: Vec<String> = (0..1000).map(|i| format!("leaf-{i}")).collect();
    let mut specs: Vec<Spec<'_>> = vec![("root", r#"{"latency_ms":200}"#.into(), vec![])];
    for n in &names {
        specs.push((n.as_str(), String::new(), vec![("root", OnFailure::Cancel)]));
    }
    specs.push((
        "sink",
        String::new(),
        names
            .iter()
            .map(|n| (n.as_str(), OnFailure::Cancel))
            .collect(),
    ));
    let wf = workflow(&specs);
    workflows::insert(&env.pool, &wf, Utc::now()).await?;
    // Before anything runs: only the root is SCHEDULED.
    let before = crate::harness::states(&env.pool, &ids(&wf)).await?;
    let scheduled = before
        .values()
        .filter(|s| s.state == TaskState::Scheduled)
        .count();
    assert_eq!(scheduled, 1);
    let a = start(settings(&env)).await?;
    let b = start(settings(&env)).await?;
    wait_succeeded(&env, &ids(&wf), Duration::from_secs(180)).await?;
    let rows = rows(&env.pool, &wf).await?;
    let started = started(&env.pool).await?;
    let root_done = rows["root"].1.expect("root finished");
    let mut last_leaf = root_done;
    for n in &wf.nodes[1..=1000] {
        assert!(
            started[&n.task.task_id] >= root_done,
            "{} ran before root",
            n.name
        );
        last_leaf = last_leaf.max(rows[&n.name].1.expect("finished"));
    }
    let sink = wf.nodes.last().expect("sink");
    assert!(
        started[&sink.task.task_id] >= last_leaf,
        "sink ran before a leaf finished"
    );
    a.stop().await?;
    b.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_dependency_cancels_down_cancel_edges_and_runs_run_edges() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let wf = workflow(&[
        (
            "a",
            r#"{"fail_attempts":9,"permanent":true}"#.into(),
            vec![],
        ),
        ("b", String::new(), vec![("a", OnFailure::Cancel)]),
        ("c", String::new(), vec![("b", OnFailure::Cancel)]),
        (
            "d",
            r#"{"with_dependencies":true}"#.into(),
            vec![("a", OnFailure::Run)],
        ),
        // Waits for d (which runs) and c (cancelled) behind a run edge: it runs too.
        (
            "e",
            String::new(),
            vec![("d", OnFailure::Cancel), ("c", OnFailure::Run)],
        ),
    ]);
    workflows::insert(&env.pool, &wf, Utc::now()).await?;
    let p = start(settings(&env)).await?;
    wait_finished(&env.pool, &wf, Duration::from_secs(60)).await?;
    let rows = rows(&env.pool, &wf).await?;
    let state = |n: &str| rows[n].0;
    assert_eq!(state("a"), TaskState::Dead);
    assert_eq!(state("b"), TaskState::Cancelled);
    assert_eq!(state("c"), TaskState::Cancelled);
    assert_eq!(state("d"), TaskState::Succeeded);
    assert_eq!(state("e"), TaskState::Succeeded);
    let deps = &rows["d"].2.as_ref().expect("d's result")["dependencies"];
    assert_eq!(deps[0]["state"], "dead", "{deps}");
    // The cancelled nodes never ran.
    let ran = started(&env.pool).await?;
    for n in ["b", "c"] {
        let id = TaskId::workflow_node(wf.workflow_id, n);
        assert!(!ran.contains_key(&id), "{n} ran although cancelled");
    }
    // Their last error names why.
    let err: Vec<u8> = sqlx::query_scalar("SELECT last_error FROM tasks WHERE task_id = ?")
        .bind(
            TaskId::workflow_node(wf.workflow_id, "b")
                .as_bytes()
                .as_slice(),
        )
        .fetch_one(&env.pool)
        .await?;
    let err = String::from_utf8(err)?;
    assert!(err.contains("dependency a ended dead"), "{err}");
    p.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_what_has_not_finished() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let wf = workflow(&[
        ("quick", String::new(), vec![]),
        ("slow", r#"{"latency_ms":30000}"#.into(), vec![]),
        ("after-slow", String::new(), vec![("slow", OnFailure::Run)]),
        (
            "after-both",
            String::new(),
            vec![("slow", OnFailure::Cancel), ("quick", OnFailure::Cancel)],
        ),
    ]);
    workflows::insert(&env.pool, &wf, Utc::now()).await?;
    let p = start(settings(&env)).await?;
    let quick = TaskId::workflow_node(wf.workflow_id, "quick");
    let slow = TaskId::workflow_node(wf.workflow_id, "slow");
    wait_succeeded(&env, &[quick], Duration::from_secs(30)).await?;
    wait_all(
        &env.pool,
        &[slow],
        TaskState::Running,
        Duration::from_secs(30),
    )
    .await?;
    let asked =
        workflows::request_cancel(&env.pool, "acme", wf.workflow_id, "enough", Utc::now()).await?;
    assert_eq!(asked, CancelRequest::Accepted(3));
    // Another tenant's cancel finds nothing.
    assert_eq!(
        workflows::request_cancel(&env.pool, "globex", wf.workflow_id, "x", Utc::now()).await?,
        CancelRequest::NotFound
    );
    wait_finished(&env.pool, &wf, Duration::from_secs(30)).await?;
    let rows = rows(&env.pool, &wf).await?;
    assert_eq!(
        rows["quick"].0,
        TaskState::Succeeded,
        "a finished node stays as it was"
    );
    for n in ["slow", "after-slow", "after-both"] {
        assert_eq!(rows[n].0, TaskState::Cancelled, "{n}");
    }
    // after-slow's edge says run on failure, but the workflow's cancel reached it first.
    let ran = started(&env.pool).await?;
    assert!(!ran.contains_key(&TaskId::workflow_node(wf.workflow_id, "after-slow")));
    assert_eq!(
        workflows::request_cancel(&env.pool, "acme", wf.workflow_id, "again", Utc::now()).await?,
        CancelRequest::Finished
    );
    let view = workflows::get(&env.pool, wf.workflow_id)
        .await?
        .expect("the workflow");
    assert_eq!(
        view.state,
        dispatch_proto::v1::WorkflowState::Cancelled as i32
    );
    p.stop().await?;
    env.cleanup().await;
    Ok(())
}
