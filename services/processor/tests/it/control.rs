//! Embedding: a handler registered in code, and operator pauses by priority.

use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::{Envelope, Priority};
use dispatch_processor::{App, Handler, HandlerContext, HandlerError, Outcome, Target};
use dispatch_testkit::TestEnv;

use crate::harness::{Running, produce, producer, settings, states, task, wait_succeeded};

struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
        let mut out = b"echo:".to_vec();
        out.extend_from_slice(&task.payload);
        out.extend_from_slice(format!(":{}", ctx.attempt).as_bytes());
        Ok(Outcome { result: Some(out) })
    }
}

/// Answers a result longer than the `result` column holds.
struct Large;

#[async_trait]
impl Handler for Large {
    async fn handle(&self, _: HandlerContext, _: &Envelope) -> Result<Outcome, HandlerError> {
        Ok(Outcome {
            result: Some(vec![b'x'; 70_000]),
        })
    }
}

/// A result of 64 KiB or more once failed its write batch on every retry (the BLOB column holds
/// 65,535 bytes), so the task never finished and its partition stalled behind it.
#[tokio::test]
async fn a_result_longer_than_the_column_is_cut_and_the_task_finishes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = Running::start(App::builder(settings(&env)).handler("custom.large", Large)).await?;
    let p = producer(&env)?;
    let t = task("custom.large", "large-1", "");
    let after = task("noop", "large-1", "");
    produce(&p, &env.topics(), &t).await?;
    produce(&p, &env.topics(), &after).await?;
    wait_succeeded(&env, &[t.task_id, after.task_id], Duration::from_secs(30)).await?;
    let row = dispatch_store::tasks::get(&env.pool, t.task_id)
        .await?
        .expect("stored");
    assert_eq!(row.result.len(), dispatch_store::tasks::RESULT_MAX_BYTES);
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn custom_handlers_run_and_a_paused_priority_waits() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = Running::start(App::builder(settings(&env)).handler("custom.echo", Echo)).await?;
    let paused = app.control.pause(&Target::Priority(Priority::Low)).await?;
    assert_eq!(paused.priorities, vec![Priority::Low]);
    let p = producer(&env)?;
    let mut low = task("custom.echo", "ctl-1", "low");
    low.priority = Priority::Low;
    let mut critical = task("custom.echo", "ctl-2", "hi");
    critical.priority = Priority::Critical;
    produce(&p, &env.topics(), &low).await?;
    produce(&p, &env.topics(), &critical).await?;
    wait_succeeded(&env, &[critical.task_id], Duration::from_secs(30)).await?;
    let row = dispatch_store::tasks::get(&env.pool, critical.task_id)
        .await?
        .expect("row");
    assert_eq!(row.result, b"echo:hi:1");
    // Give the paused topic a chance to (wrongly) deliver.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        states(&env.pool, &[low.task_id]).await?.is_empty(),
        "low is paused"
    );
    assert!(
        app.control
            .resume(&Target::Priority(Priority::Low))
            .await?
            .priorities
            .is_empty()
    );
    wait_succeeded(&env, &[low.task_id], Duration::from_secs(30)).await?;
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
