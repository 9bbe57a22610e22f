//! GetWorkflow (read straight from MySQL), and WAITING workflow nodes in the task RPCs.

use chrono::Utc;
use dispatch_core::workflow::OnFailure;
use dispatch_core::{NewTask, TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_store::workflows::{Inserted, NewNode, NewWorkflow};
use dispatch_testkit::TestEnv;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{
    KEY_ACME, KEY_GLOBEX, authed, env_reader_and_client, get, list_ids, next_event,
    reader_and_client, reader_with, stop, watch,
};
use crate::invalid::violated_field;

/// The diamond's nodes in submission order (not the names' order): `fetch` first, `resize` and
/// `thumbnail` after it, `archive` after both.
const NODES: [&str; 4] = ["fetch", "resize", "thumbnail", "archive"];

/// A diamond workflow of `acme`: fetch -> resize, fetch -> thumbnail, {resize, thumbnail} ->
/// archive, where archive runs even if thumbnail fails (the one `run` edge).
fn diamond() -> NewWorkflow {
    let workflow_id = TaskId::workflow_from_idempotency_key("acme", "wf-diamond");
    let node = |name: &str| NewNode {
        name: name.into(),
        task: NewTask {
            task_id: TaskId::workflow_node(workflow_id, name),
            ..dispatch_testkit::new_task(&format!("image.{name}"), &format!("img-{name}"), b"{}")
        },
        root: name == "fetch",
    };
    NewWorkflow {
        workflow_id,
        tenant: "acme".into(),
        idempotency_key: Some("wf-diamond".into()),
        fingerprint: [0; 32],
        nodes: NODES.iter().map(|n| node(n)).collect(),
        edges: vec![
            (1, 0, OnFailure::Cancel),
            (2, 0, OnFailure::Cancel),
            (3, 1, OnFailure::Cancel),
            (3, 2, OnFailure::Run),
        ],
    }
}

async fn insert(env: &TestEnv, wf: &NewWorkflow) {
    let inserted = dispatch_store::workflows::insert(&env.pool, wf, Utc::now())
        .await
        .expect("insert workflow");
    assert_eq!(inserted, Inserted::New);
}

/// A new env with [`diamond`] stored in it.
async fn stored_diamond() -> (TestEnv, NewWorkflow) {
    let env = TestEnv::new().await.expect("env");
    let wf = diamond();
    insert(&env, &wf).await;
    (env, wf)
}

fn node_id(wf: &NewWorkflow, name: &str) -> TaskId {
    TaskId::workflow_node(wf.workflow_id, name)
}

/// Sets the stored state of the node `name` of `wf` (as the processor's writes would).
async fn set_state(env: &TestEnv, wf: &NewWorkflow, name: &str, state: TaskState, error: &str) {
    let attempt = u32::from(!matches!(state, TaskState::Waiting | TaskState::Scheduled));
    let done = sqlx::query(
        "UPDATE tasks SET state = ?, version = ?, attempts = ?, last_error = ?, \
         finished_at = IF(?, NOW(6), NULL), updated_at = NOW(6) WHERE task_id = ?",
    )
    .bind(state.as_str())
    .bind(state.version(0, attempt))
    .bind(attempt)
    .bind(error)
    .bind(state.is_terminal())
    .bind(node_id(wf, name).as_bytes().as_slice())
    .execute(&env.pool)
    .await
    .expect("update task");
    assert_eq!(done.rows_affected(), 1, "{name}");
}

async fn get_workflow(
    c: &mut TaskQueryServiceClient<Channel>,
    id: &str,
    key: &str,
) -> Result<pb::Workflow, tonic::Status> {
    c.get_workflow(authed(
        pb::GetWorkflowRequest {
            workflow_id: id.into(),
        },
        key,
    ))
    .await
    .map(|r| r.into_inner().workflow.expect("a workflow"))
}

fn states(w: &pb::Workflow) -> Vec<pb::TaskState> {
    w.nodes.iter().map(pb::WorkflowNodeStatus::state).collect()
}

fn dep(name: &str, on_failure: pb::DependencyFailure) -> pb::WorkflowDependency {
    pb::WorkflowDependency {
        name: name.into(),
        on_failure: on_failure as i32,
    }
}

#[tokio::test]
async fn get_workflow_shows_every_node_in_order_and_the_state_follows_them() {
    let (env, wf) = stored_diamond().await;
    let (r, mut c) = reader_and_client(&env).await;
    let id = wf.workflow_id.to_string();

    let w = get_workflow(&mut c, &id, KEY_ACME)
        .await
        .expect("owner reads it");
    assert_eq!(w.workflow_id, id);
    assert_eq!(w.tenant, "acme");
    assert_eq!(w.idempotency_key, "wf-diamond");
    assert!(w.created_at.is_some());
    assert!(!w.cancel_requested);
    assert_eq!(w.state(), pb::WorkflowState::Running);
    let names: Vec<&str> = w.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, NODES, "submission order");
    for n in &w.nodes {
        assert_eq!(n.task_id, node_id(&wf, &n.name).to_string(), "{}", n.name);
        assert_eq!(n.task_type, format!("image.{}", n.name));
        assert_eq!(n.business_key, format!("img-{}", n.name));
        assert_eq!(n.attempts, 0);
        assert!(n.finished_at.is_none());
    }
    use pb::TaskState as S;
    assert_eq!(
        states(&w),
        [S::Scheduled, S::Waiting, S::Waiting, S::Waiting],
        "the root is scheduled, the others wait"
    );
    use pb::DependencyFailure as F;
    let deps: Vec<Vec<pb::WorkflowDependency>> =
        w.nodes.iter().map(|n| n.depends_on.clone()).collect();
    assert_eq!(
        deps,
        vec![
            vec![],
            vec![dep("fetch", F::Cancel)],
            vec![dep("fetch", F::Cancel)],
            vec![dep("resize", F::Cancel), dep("thumbnail", F::Run)],
        ]
    );

    // Nothing is cached: a change in MySQL shows on the next call.
    for name in NODES {
        set_state(&env, &wf, name, TaskState::Succeeded, "").await;
    }
    let w = get_workflow(&mut c, &id, KEY_ACME)
        .await
        .expect("succeeded");
    assert_eq!(w.state(), pb::WorkflowState::Succeeded);
    assert_eq!(states(&w), [S::Succeeded; 4]);
    assert!(
        w.nodes
            .iter()
            .all(|n| n.attempts == 1 && n.finished_at.is_some())
    );

    set_state(&env, &wf, "thumbnail", TaskState::Dead, "decoder crashed").await;
    let w = get_workflow(&mut c, &id, KEY_ACME).await.expect("failed");
    assert_eq!(w.state(), pb::WorkflowState::Failed);
    assert_eq!(
        states(&w),
        [S::Succeeded, S::Succeeded, S::Dead, S::Succeeded]
    );
    assert_eq!(w.nodes[2].last_error, "decoder crashed");

    // Every call was a MySQL read.
    assert_eq!(
        dispatch_reader::metrics::Stats::get(&r.handle.stats().store_workflows),
        3
    );
    stop(r, env).await;
}

#[tokio::test]
async fn another_tenants_workflow_answers_not_found_like_an_unknown_one() {
    let (env, wf) = stored_diamond().await;
    let (r, mut c) = reader_and_client(&env).await;
    let id = wf.workflow_id.to_string();

    let theirs = get_workflow(&mut c, &id, KEY_GLOBEX)
        .await
        .expect_err("not globex's");
    let unknown = get_workflow(&mut c, &TaskId::new().to_string(), KEY_GLOBEX)
        .await
        .expect_err("unknown");
    for s in [&theirs, &unknown] {
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
    }
    assert_eq!(
        theirs.message(),
        unknown.message(),
        "nothing tells them apart"
    );
    assert!(theirs.details().is_empty() && unknown.details().is_empty());

    // A workflow's node ids are task ids of its tenant, not workflow ids.
    let node = get_workflow(&mut c, &node_id(&wf, "fetch").to_string(), KEY_ACME)
        .await
        .expect_err("a task id");
    assert_eq!(node.code(), Code::NotFound);

    // The positive control, and the credentials GetTask asks for.
    assert_eq!(
        get_workflow(&mut c, &id, KEY_ACME)
            .await
            .expect("owner")
            .tenant,
        "acme"
    );
    let no_key = get_workflow(&mut c, &id, "no-such-key")
        .await
        .expect_err("auth");
    assert_eq!(no_key.code(), Code::Unauthenticated);
    stop(r, env).await;
}

#[tokio::test]
async fn get_workflow_names_a_malformed_workflow_id() {
    let (env, r, mut c) = env_reader_and_client().await;
    for bad in ["not-a-workflow", ""] {
        let e = get_workflow(&mut c, bad, KEY_ACME)
            .await
            .expect_err("malformed");
        assert_eq!(violated_field(&e), "workflow_id", "{bad:?}");
    }
    assert_eq!(
        dispatch_reader::metrics::Stats::get(&r.handle.stats().store_workflows),
        0,
        "rejected before any read"
    );
    stop(r, env).await;
}

#[tokio::test]
async fn waiting_nodes_are_listed_read_and_watched_as_not_terminal() {
    let (env, wf) = stored_diamond().await;
    let r = reader_with(&env, |s| s.cache.watch_poll_ms = 200).await;
    let mut c = r.client().await.expect("connect");

    let mut waiting = list_ids(
        &mut c,
        pb::ListTasksRequest {
            states: vec![pb::TaskState::Waiting as i32],
            ..Default::default()
        },
    )
    .await;
    waiting.sort();
    let mut want: Vec<String> = ["resize", "thumbnail", "archive"]
        .iter()
        .map(|n| node_id(&wf, n).to_string())
        .collect();
    want.sort();
    assert_eq!(
        waiting, want,
        "the WAITING filter finds exactly the waiting nodes"
    );

    let resize = node_id(&wf, "resize");
    let got = get(&mut c, resize, 0, KEY_ACME).await.expect("get");
    assert_eq!(
        got.task.expect("task").state(),
        pb::TaskState::Waiting,
        "read as WAITING"
    );

    let mut stream = watch(&mut c, resize, 0, KEY_ACME).await.expect("watch");
    let first = next_event(&mut stream).await.expect("current state");
    assert_eq!(first.state(), pb::TaskState::Waiting);
    // Released (as the advancer does): the stream is still open and shows it.
    set_state(&env, &wf, "resize", TaskState::Scheduled, "").await;
    let released = next_event(&mut stream).await.expect("not ended at WAITING");
    assert_eq!(released.state(), pb::TaskState::Scheduled);
    set_state(
        &env,
        &wf,
        "resize",
        TaskState::Cancelled,
        "dependency fetch ended dead",
    )
    .await;
    let cancelled = next_event(&mut stream).await.expect("the terminal state");
    assert_eq!(cancelled.state(), pb::TaskState::Cancelled);
    assert!(
        next_event(&mut stream).await.is_none(),
        "ends at a terminal state"
    );
    stop(r, env).await;
}
