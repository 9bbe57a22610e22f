//! Cancellation: a queued task never runs, a running handler's token fires, a finished task is
//! unchanged.

use std::time::Duration;

use dispatch_core::{Envelope, TaskState};
use dispatch_processor::Target;
use dispatch_testkit::{TestEnv, eventually};
use sqlx::Row;

use crate::harness::{
    executions, produce, producer, run_marker, settings, start, states, task, wait_all,
    wait_succeeded,
};

fn cancel_of(e: &Envelope) -> Envelope {
    Envelope::cancel(
        e.task_id,
        e.tenant.clone(),
        e.business_key.clone(),
        e.priority,
        "user asked".into(),
    )
}

#[tokio::test]
async fn cancel_stops_queued_and_running_tasks_and_leaves_finished_ones() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let t = env.topics();

    // Queued: the type is paused, so the submit waits in its lane when the cancel arrives.
    app.control
        .pause(&Target::TaskType("simulate".into()))
        .await?;
    let queued = task("simulate", "c-1", "");
    produce(&p, &t, &queued).await?;
    produce(&p, &t, &cancel_of(&queued)).await?;
    wait_all(
        &env.pool,
        &[queued.task_id],
        TaskState::Cancelled,
        Duration::from_secs(30),
    )
    .await?;
    app.control
        .resume(&Target::TaskType("simulate".into()))
        .await?;
    // A marker behind it on the same key proves the submit was processed (and skipped).
    run_marker(&env, &p, "simulate", "c-1").await?;
    assert!(
        executions(&env.pool)
            .await?
            .iter()
            .all(|x| x.task_id != queued.task_id),
        "never ran"
    );
    let ty: Vec<u8> = sqlx::query("SELECT task_type FROM tasks WHERE task_id = ?")
        .bind(queued.task_id.as_bytes().as_slice())
        .fetch_one(&env.pool)
        .await?
        .try_get(0)?;
    assert_eq!(ty, b"simulate", "the submit filled the placeholder's data");

    // Running: a long handler is cancelled through its token.
    let running = task("simulate", "c-2", r#"{"latency_ms":20000}"#);
    produce(&p, &t, &running).await?;
    wait_all(
        &env.pool,
        &[running.task_id],
        TaskState::Running,
        Duration::from_secs(30),
    )
    .await?;
    let sent = std::time::Instant::now();
    produce(&p, &t, &cancel_of(&running)).await?;
    wait_all(
        &env.pool,
        &[running.task_id],
        TaskState::Cancelled,
        Duration::from_secs(10),
    )
    .await?;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the handler stopped early"
    );
    // The stopped attempt's row comes from the attempt's own end, which may commit a batch
    // after the cancel's state (a fresh-clone run at b2e538e read it in between: no row yet).
    let outcome: String = eventually("the stopped attempt's row", Duration::from_secs(10), || {
        let pool = env.pool.clone();
        let id = running.task_id;
        async move {
            sqlx::query_scalar("SELECT outcome FROM task_attempts WHERE task_id = ?")
                .bind(id.as_bytes().as_slice())
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
        }
    })
    .await?;
    assert_eq!(outcome, "cancelled");
    // The ledger records the stopped execution, and nothing else of it.
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM handler_executions WHERE task_id = ?")
            .bind(running.task_id.as_bytes().as_slice())
            .fetch_all(&env.pool)
            .await?;
    assert!(outcomes.iter().all(|o| o == "cancelled"), "{outcomes:?}");

    // Finished: nothing changes.
    let done = task("noop", "c-3", "");
    produce(&p, &t, &done).await?;
    let before = wait_succeeded(&env, &[done.task_id], Duration::from_secs(30)).await?;
    let (partition, offset) = produce(&p, &t, &cancel_of(&done)).await?;
    let topic = t.tasks(done.priority);
    let c = app.control.clone();
    eventually(
        "cancel consumed and committed",
        Duration::from_secs(30),
        || {
            let (c, topic) = (c.clone(), topic.clone());
            async move {
                let s = c.stats().await.ok()?;
                s.partitions
                    .iter()
                    .any(|x| {
                        x.topic == topic && x.partition == partition && x.committed_offset > offset
                    })
                    .then_some(())
            }
        },
    )
    .await?;
    assert_eq!(
        states(&env.pool, &[done.task_id]).await?[&done.task_id],
        before[&done.task_id]
    );
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
