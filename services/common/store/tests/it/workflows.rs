//! The workflow advancer's queries against MariaDB: what `resolvable` decides, and (ignored, run
//! by hand) what one pass costs with many nodes waiting.

use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::TaskId;
use dispatch_core::workflow::OnFailure;
use dispatch_store::workflows::{self, NewWorkflow, Resolved};
use dispatch_testkit::TestEnv;

/// A fan-out: `root` and `leaves` nodes waiting for it.
fn fan_out(leaves: usize) -> NewWorkflow {
    let leaves: Vec<String> = (0..leaves).map(|i| format!("leaf-{i}")).collect();
    let names: Vec<&str> = std::iter::once("root")
        .chain(leaves.iter().map(String::as_str))
        .collect();
    let edges = (1..names.len())
        .map(|i| (i, 0, OnFailure::Cancel))
        .collect();
    dispatch_testkit::new_workflow("acme", &names, edges)
}

async fn set_state(env: &TestEnv, id: TaskId, state: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET state = ? WHERE task_id = ?")
        .bind(state)
        .bind(id.as_bytes().as_slice())
        .execute(&env.pool)
        .await?;
    Ok(())
}

#[tokio::test]
async fn waiting_nodes_are_decided_only_by_finished_dependencies() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let ok = fan_out(3);
    let failed = fan_out(2);
    for w in [&ok, &failed] {
        workflows::insert(&env.pool, w, Utc::now()).await?;
    }
    let mut conn = env.pool.acquire().await?;
    let resend = Duration::from_secs(30);
    // The roots run: nothing is decided.
    set_state(&env, ok.nodes[0].task.task_id, "running").await?;
    assert!(
        workflows::resolvable(&mut conn, 100, resend, None)
            .await?
            .is_empty()
    );
    set_state(&env, ok.nodes[0].task.task_id, "succeeded").await?;
    set_state(&env, failed.nodes[0].task.task_id, "dead").await?;
    // Scoped to one workflow, only its nodes are decided.
    let scoped = workflows::resolvable(&mut conn, 100, resend, Some(&[failed.workflow_id])).await?;
    assert_eq!(scoped.len(), 2);
    assert!(scoped.iter().all(|d| matches!(d, Resolved::Cancel(_))));
    let decided = workflows::resolvable(&mut conn, 100, resend, None).await?;
    let released: Vec<TaskId> = decided
        .iter()
        .filter_map(|d| match d {
            Resolved::Release(id) => Some(*id),
            Resolved::Cancel(_) => None,
        })
        .collect();
    let cancelled: Vec<TaskId> = decided
        .iter()
        .filter_map(|d| match d {
            Resolved::Cancel(c) => Some(c.task_id),
            Resolved::Release(_) => None,
        })
        .collect();
    let mut want: Vec<TaskId> = ok.nodes[1..].iter().map(|n| n.task.task_id).collect();
    let mut got = released.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(cancelled.len(), 2);
    assert!(
        decided
            .iter()
            .any(|d| matches!(d, Resolved::Cancel(c) if c.reason == "dependency root ended dead"))
    );
    // Released: no longer waiting, so no longer decided; cancels sent are not sent again soon.
    assert_eq!(workflows::release(&env.pool, &released).await?, 3);
    assert_eq!(workflows::release(&env.pool, &released).await?, 0);
    workflows::mark_cancel_sent(&env.pool, &cancelled).await?;
    assert!(
        workflows::resolvable(&mut conn, 100, resend, None)
            .await?
            .is_empty()
    );
    // ... until `resend_after` has passed with the node still waiting.
    assert_eq!(
        workflows::resolvable(&mut conn, 100, Duration::ZERO, None)
            .await?
            .len(),
        2
    );
    // A second send waits twice as long: 1.5 s after it, a 1 s resend_after is not yet up.
    let backdate = |secs: f64| {
        let pool = env.pool.clone();
        let ids = cancelled.clone();
        async move {
            for id in ids {
                sqlx::query(
                    "UPDATE workflow_nodes SET cancel_sent_at = NOW(6) - INTERVAL ? MICROSECOND \
                     WHERE task_id = ?",
                )
                .bind((secs * 1e6) as u64)
                .bind(id.as_bytes().as_slice())
                .execute(&pool)
                .await?;
            }
            anyhow::Ok(())
        }
    };
    let second = Duration::from_secs(1);
    backdate(1.5).await?;
    assert_eq!(
        workflows::resolvable(&mut conn, 100, second, None)
            .await?
            .len(),
        2,
        "first resend due"
    );
    workflows::mark_cancel_sent(&env.pool, &cancelled).await?;
    backdate(1.5).await?;
    assert!(
        workflows::resolvable(&mut conn, 100, second, None)
            .await?
            .is_empty(),
        "the second resend waits 2 s"
    );
    backdate(2.5).await?;
    assert_eq!(
        workflows::resolvable(&mut conn, 100, second, None)
            .await?
            .len(),
        2
    );
    // Marked for a CANCEL, or of a workflow being cancelled: never released, whatever a
    // concurrent pass decided.
    let held = fan_out(2);
    workflows::insert(&env.pool, &held, Utc::now()).await?;
    set_state(&env, held.nodes[0].task.task_id, "succeeded").await?;
    let (one, two) = (held.nodes[1].task.task_id, held.nodes[2].task.task_id);
    workflows::mark_cancel_sent(&env.pool, &[one]).await?;
    assert_eq!(workflows::release(&env.pool, &[one]).await?, 0);
    workflows::request_cancel(&env.pool, "acme", held.workflow_id, "stop", Utc::now()).await?;
    assert_eq!(workflows::release(&env.pool, &[two]).await?, 0);
    drop(conn);
    env.cleanup().await;
    Ok(())
}

/// A CancelTask of a node's id before its workflow was submitted leaves a placeholder row: another
/// tenant's is replaced by the node, the owner's own keeps the node CANCELLED; the insert
/// succeeds either way (it failed on the primary key for ever).
#[tokio::test]
async fn placeholders_of_early_cancels_do_not_block_the_submit() -> anyhow::Result<()> {
    use dispatch_core::TaskState;
    use dispatch_store::tasks::{self, TaskWrite};
    let env = TestEnv::new().await?;
    let wf = fan_out(2);
    let placeholder = |id, tenant: &str| TaskWrite {
        task_type: String::new(),
        payload: Vec::new(),
        version: TaskState::Cancelled.version(0, 0),
        ..dispatch_testkit::task_write(id, tenant, TaskState::Cancelled, 0)
    };
    let (root, leaf) = (wf.nodes[0].task.task_id, wf.nodes[1].task.task_id);
    let mut conn = env.pool.acquire().await?;
    tasks::upsert_batch(
        &mut conn,
        &[placeholder(root, "globex"), placeholder(leaf, "acme")],
    )
    .await?;
    drop(conn);
    assert_eq!(
        workflows::insert(&env.pool, &wf, Utc::now()).await?,
        workflows::Inserted::New
    );
    let states = tasks::states(&env.pool, &[root, leaf]).await?;
    let of = |id| {
        states
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| s.clone())
            .expect("row")
    };
    assert_eq!(
        of(root).state,
        TaskState::Scheduled,
        "another tenant's placeholder is replaced"
    );
    assert!(of(root).owned_by("acme"));
    assert_eq!(
        of(leaf).state,
        TaskState::Cancelled,
        "the owner's own cancel holds"
    );
    assert!(!of(leaf).placeholder, "and the node's data is filled in");
    env.cleanup().await;
    Ok(())
}

/// Run by hand: `cargo test -p dispatch-store --test it workflows:: -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement: prints what a pass's query costs with many nodes waiting"]
async fn measure_a_pass_with_many_nodes_waiting() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut conn = env.pool.acquire().await?;
    let small = fan_out(3);
    workflows::insert(&env.pool, &small, Utc::now()).await?;
    for round in 1..=5 {
        let w = fan_out(2_000);
        workflows::insert(&env.pool, &w, Utc::now()).await?;
        let n = 20;
        for (what, scope) in [
            ("every workflow", None),
            ("the small one only", Some(vec![small.workflow_id])),
        ] {
            let started = Instant::now();
            for _ in 0..n {
                assert!(
                    workflows::resolvable(
                        &mut conn,
                        500,
                        Duration::from_secs(30),
                        scope.as_deref()
                    )
                    .await?
                    .is_empty()
                );
            }
            println!(
                "{} nodes waiting, {what}: {:.1} ms per pass (nothing decided)",
                round * 2_000,
                started.elapsed().as_secs_f64() * 1e3 / f64::from(n)
            );
        }
    }
    drop(conn);
    env.cleanup().await;
    Ok(())
}
