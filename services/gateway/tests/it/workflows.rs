//! SubmitWorkflow and CancelWorkflow: validation with field paths (nothing stored), the rows of
//! a stored workflow, idempotent resubmits, tenant-scoped cancel.
//!
//! Over 400 lines because every validation rule has its case (each with the field path it must
//! name); they would move to a `workflows_validation` file first.

use dispatch_core::TaskId;
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use sqlx::Row;
use tonic::Code;

use crate::harness::*;

/// A node running `email.send` with the given dependencies (`on_failure` CANCEL).
fn node(name: &str, deps: &[&str]) -> pb::WorkflowNode {
    pb::WorkflowNode {
        name: name.into(),
        task: Some(spec(&format!("wf-{name}"), name.as_bytes())),
        depends_on: deps
            .iter()
            .map(|d| pb::WorkflowDependency {
                name: (*d).into(),
                on_failure: pb::DependencyFailure::Cancel as i32,
            })
            .collect(),
    }
}

fn submit_wf(
    nodes: Vec<pb::WorkflowNode>,
    idempotency_key: &str,
    key: &str,
) -> tonic::Request<pb::SubmitWorkflowRequest> {
    authed(
        pb::SubmitWorkflowRequest {
            nodes,
            idempotency_key: idempotency_key.into(),
        },
        key,
    )
}

fn cancel_wf(workflow_id: &str, key: &str) -> tonic::Request<pb::CancelWorkflowRequest> {
    authed(
        pb::CancelWorkflowRequest {
            workflow_id: workflow_id.into(),
            reason: "no longer needed".into(),
        },
        key,
    )
}

/// Rows of `tenant` in `workflows` and in `tasks`.
async fn rows_of(env: &TestEnv, tenant: &str) -> anyhow::Result<(i64, i64)> {
    let w: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workflows WHERE tenant = ?")
        .bind(tenant)
        .fetch_one(&env.pool)
        .await?;
    let t: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE tenant = ?")
        .bind(tenant)
        .fetch_one(&env.pool)
        .await?;
    Ok((w, t))
}

/// A text column (binary collations decode as bytes).
fn text(r: &sqlx::mysql::MySqlRow, col: &str) -> String {
    String::from_utf8_lossy(&r.get::<Vec<u8>, _>(col)).into_owned()
}

/// The value of a series in `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn bad_workflows_are_invalid_argument_naming_every_field_and_store_nothing()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.limits.max_workflow_nodes = 5;
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;

    let keyed = {
        let mut n = node("b", &["a"]);
        if let Some(t) = n.task.as_mut() {
            t.idempotency_key = "node-key".into();
        }
        n
    };
    let bad_priority = {
        let mut n = node("b", &["a"]);
        if let Some(t) = n.task.as_mut() {
            t.priority = 42;
        }
        n
    };
    let no_task = pb::WorkflowNode {
        task: None,
        ..node("b", &[])
    };
    let cases: Vec<(&str, Vec<pb::WorkflowNode>, Vec<&str>)> = vec![
        (
            "a cycle",
            vec![node("a", &["c"]), node("b", &["a"]), node("c", &["b"])],
            vec!["nodes[0].depends_on"],
        ),
        (
            "a missing dependency",
            vec![node("a", &[]), node("b", &["nope"])],
            vec!["nodes[1].depends_on[0].name"],
        ),
        (
            "a repeated name",
            vec![node("a", &[]), node("a", &[])],
            vec!["nodes[1].name"],
        ),
        (
            "more nodes than limits.max_workflow_nodes",
            (0..6).map(|i| node(&format!("n{i}"), &[])).collect(),
            vec!["nodes"],
        ),
        ("no node", vec![], vec!["nodes"]),
        (
            "a node with an idempotency key",
            vec![node("a", &[]), keyed],
            vec!["nodes[1].task.idempotency_key"],
        ),
        (
            "an invalid TaskSpec field",
            vec![node("a", &[]), bad_priority],
            vec!["nodes[1].task.priority"],
        ),
        (
            "a node without a task",
            vec![node("a", &[]), no_task.clone()],
            vec!["nodes[1].task"],
        ),
        (
            "several problems at once",
            vec![
                node("a", &["zz"]),
                no_task,
                pb::WorkflowNode {
                    task: Some(pb::TaskSpec {
                        task_type: "Bad Type!".into(),
                        ..spec("k", b"x")
                    }),
                    ..node("c", &[])
                },
            ],
            vec![
                "nodes[0].depends_on[0].name",
                "nodes[1].task",
                "nodes[2].task.task_type",
            ],
        ),
    ];
    for (what, nodes, fields) in cases {
        let err = client
            .submit_workflow(submit_wf(nodes, "wf-bad", KEY_ACME))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(bad_fields(&err), fields, "{what}: {}", err.message());
        assert_eq!(
            rows_of(&env, "acme").await?,
            (0, 0),
            "{what}: nothing stored"
        );
    }
    // The request's own idempotency key is checked beside the nodes.
    let err = client
        .submit_workflow(submit_wf(vec![node("a", &[])], "has space", KEY_ACME))
        .await
        .expect_err("bad key");
    assert_eq!(bad_fields(&err), ["idempotency_key"]);
    // The description names the limit.
    let err = client
        .submit_workflow(submit_wf(
            (0..6).map(|i| node(&format!("n{i}"), &[])).collect(),
            "",
            KEY_ACME,
        ))
        .await
        .expect_err("too many");
    assert!(
        err.message()
            .contains("at most 5 (limits.max_workflow_nodes)"),
        "{}",
        err.message()
    );
    assert_eq!(rows_of(&env, "acme").await?, (0, 0));
    let m = gw.metrics().await?;
    assert!(
        metric(&m, "dispatch_workflow_submit_total{outcome=\"invalid\"}") >= 11.0,
        "{m}"
    );

    // Without a key: UNAUTHENTICATED, for both RPCs.
    let err = client
        .submit_workflow(pb::SubmitWorkflowRequest {
            nodes: vec![node("a", &[])],
            idempotency_key: String::new(),
        })
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .cancel_workflow(cancel_wf(&TaskId::new().to_string(), "not-a-key"))
        .await
        .expect_err("wrong key");
    assert_eq!(err.code(), Code::Unauthenticated);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_diamond_stores_its_roots_scheduled_the_rest_waiting_and_every_edge() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let before = gw.metrics().await?;

    // d waits for b (cancel) and c (run); a second root, e, waits for nothing.
    let mut d = node("d", &["b", "c"]);
    d.depends_on[1].on_failure = pb::DependencyFailure::Run as i32;
    let nodes = vec![
        node("a", &[]),
        node("b", &["a"]),
        node("c", &["a"]),
        d,
        node("e", &[]),
    ];
    let r = client
        .submit_workflow(submit_wf(nodes, "", KEY_ACME))
        .await?
        .into_inner();
    assert!(!r.duplicate);
    let wf = id(&r.workflow_id);
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"], "request order");
    for n in &r.nodes {
        assert_eq!(id(&n.task_id), TaskId::workflow_node(wf, &n.name), "{n:?}");
    }

    let rows = sqlx::query(
        "SELECT n.name, n.position, t.state, t.tenant, t.business_key, t.run_at IS NOT NULL AS due, \
         t.idempotency_key FROM workflow_nodes n JOIN tasks t ON t.task_id = n.task_id \
         WHERE n.workflow_id = ? AND t.workflow_id = n.workflow_id ORDER BY n.position",
    )
    .bind(wf.as_bytes().as_slice())
    .fetch_all(&env.pool)
    .await?;
    let got: Vec<(String, u32, String, bool)> = rows
        .iter()
        .map(|r| {
            (
                text(r, "name"),
                r.get::<u32, _>("position"),
                text(r, "state"),
                r.get::<i64, _>("due") == 1,
            )
        })
        .collect();
    let want = [
        ("a", 0, "scheduled", true),
        ("b", 1, "waiting", false),
        ("c", 2, "waiting", false),
        ("d", 3, "waiting", false),
        ("e", 4, "scheduled", true),
    ]
    .map(|(n, p, s, d)| (n.to_owned(), p, s.to_owned(), d));
    assert_eq!(got, want);
    for r in &rows {
        assert_eq!(text(r, "tenant"), "acme");
        assert!(r.get::<Option<Vec<u8>>, _>("idempotency_key").is_none());
    }

    let edges = sqlx::query(
        "SELECT w.name AS node, d.name AS dep, e.on_failure FROM workflow_edges e \
         JOIN workflow_nodes w ON w.task_id = e.task_id \
         JOIN workflow_nodes d ON d.task_id = e.depends_on \
         WHERE e.workflow_id = ? ORDER BY w.position, d.position",
    )
    .bind(wf.as_bytes().as_slice())
    .fetch_all(&env.pool)
    .await?
    .iter()
    .map(|r| {
        format!(
            "{} -> {} ({})",
            text(r, "node"),
            text(r, "dep"),
            text(r, "on_failure")
        )
    })
    .collect::<Vec<_>>();
    assert_eq!(
        edges,
        [
            "b -> a (cancel)",
            "c -> a (cancel)",
            "d -> b (cancel)",
            "d -> c (run)"
        ]
    );
    let (tenant, nodes, key): (Vec<u8>, u32, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT tenant, nodes, idempotency_key FROM workflows WHERE workflow_id = ?",
    )
    .bind(wf.as_bytes().as_slice())
    .fetch_one(&env.pool)
    .await?;
    assert_eq!((tenant.as_slice(), nodes, key), (&b"acme"[..], 5, None));

    let after = gw.metrics().await?;
    let delta = |s: &str| metric(&after, s) - metric(&before, s);
    assert!(delta("dispatch_workflow_submit_total{outcome=\"accepted\"}") >= 1.0);
    assert!(delta("dispatch_workflow_nodes_accepted_total") >= 5.0);
    assert!(
        after.contains(
            "dispatch_grpc_requests_total{code=\"OK\",method=\"SubmitWorkflow\",service=\"gateway\"}"
        ),
        "SubmitWorkflow is measured under its own method label"
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_repeated_submit_answers_the_same_ids_and_other_nodes_already_exist() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let diamond = || {
        vec![
            node("a", &[]),
            node("b", &["a"]),
            node("c", &["a"]),
            node("d", &["b", "c"]),
        ]
    };
    let first = client
        .submit_workflow(submit_wf(diamond(), "nightly-1", KEY_ACME))
        .await?
        .into_inner();
    assert!(!first.duplicate);
    assert_eq!(
        id(&first.workflow_id),
        TaskId::workflow_from_idempotency_key("acme", "nightly-1")
    );

    let again = client
        .submit_workflow(submit_wf(diamond(), "nightly-1", KEY_ACME))
        .await?
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.workflow_id, first.workflow_id);
    assert_eq!(again.nodes, first.nodes);

    // Other nodes under the same key: ALREADY_EXISTS, naming the key and its workflow.
    let mut other = diamond();
    other[3].name = "z".into();
    let err = client
        .submit_workflow(submit_wf(other, "nightly-1", KEY_ACME))
        .await
        .expect_err("other nodes");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("nightly-1") && err.message().contains(&first.workflow_id),
        "{}",
        err.message()
    );
    let err = client
        .submit_workflow(submit_wf(diamond()[..3].to_vec(), "nightly-1", KEY_ACME))
        .await
        .expect_err("fewer nodes");
    assert_eq!(err.code(), Code::AlreadyExists);
    // The same names with another task, or another edge: ALREADY_EXISTS too (the fingerprint).
    let mut other_task = diamond();
    if let Some(t) = other_task[1].task.as_mut() {
        t.payload = b"other".to_vec();
    }
    let mut other_edge = diamond();
    other_edge[3].depends_on[1].on_failure = pb::DependencyFailure::Run as i32;
    for (what, nodes) in [("another task", other_task), ("another edge", other_edge)] {
        let err = client
            .submit_workflow(submit_wf(nodes, "nightly-1", KEY_ACME))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::AlreadyExists, "{what}: {err:?}");
    }
    assert_eq!(rows_of(&env, "acme").await?, (1, 4), "stored once");

    // The same key is another tenant's own workflow.
    let theirs = client
        .submit_workflow(submit_wf(diamond(), "nightly-1", KEY_GLOBEX))
        .await?
        .into_inner();
    assert!(!theirs.duplicate);
    assert_ne!(theirs.workflow_id, first.workflow_id);
    assert_eq!(rows_of(&env, "globex").await?, (1, 4));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn cancel_workflow_is_tenant_scoped_and_records_the_request() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let wf = client
        .submit_workflow(submit_wf(
            vec![node("a", &[]), node("b", &["a"])],
            "",
            KEY_ACME,
        ))
        .await?
        .into_inner();
    let requested = || async {
        let (at, reason): (Option<chrono::DateTime<chrono::Utc>>, Vec<u8>) = sqlx::query_as(
            "SELECT cancel_requested_at, cancel_reason FROM workflows WHERE workflow_id = ?",
        )
        .bind(id(&wf.workflow_id).as_bytes().as_slice())
        .fetch_one(&env.pool)
        .await?;
        anyhow::Ok((at.is_some(), String::from_utf8(reason)?))
    };

    // Another tenant's workflow is not found, and left alone.
    let err = client
        .cancel_workflow(cancel_wf(&wf.workflow_id, KEY_GLOBEX))
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(requested().await?, (false, String::new()));
    let err = client
        .cancel_workflow(cancel_wf(&TaskId::new().to_string(), KEY_ACME))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .cancel_workflow(cancel_wf("not-a-workflow", KEY_ACME))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["workflow_id"]);

    // The owner's: recorded, with its reason.
    let r = client
        .cancel_workflow(cancel_wf(&wf.workflow_id, KEY_ACME))
        .await?
        .into_inner();
    assert!(r.accepted);
    assert_eq!(r.workflow_id, wf.workflow_id);
    assert_eq!(requested().await?, (true, "no longer needed".to_owned()));

    // A workflow whose nodes have all finished has nothing left to cancel.
    let done = client
        .submit_workflow(submit_wf(vec![node("a", &[])], "", KEY_ACME))
        .await?
        .into_inner();
    sqlx::query("UPDATE tasks SET state = 'succeeded' WHERE workflow_id = ?")
        .bind(id(&done.workflow_id).as_bytes().as_slice())
        .execute(&env.pool)
        .await?;
    let r = client
        .cancel_workflow(cancel_wf(&done.workflow_id, KEY_ACME))
        .await?
        .into_inner();
    assert!(!r.accepted);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
