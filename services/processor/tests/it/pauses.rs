//! Operator pauses are shared: a pause made through one instance holds on every instance (and on
//! one that starts later), and a resume through another releases it everywhere.

use std::time::Duration;

use dispatch_core::{Envelope, Priority, TaskId};
use dispatch_processor::{App, Control, Paused, Target};
use dispatch_testkit::{TestEnv, eventually};
use rdkafka::producer::FutureProducer;

use crate::harness::{
    produce, producer, run_marker, settings, start, states, task, wait_succeeded,
};

/// Long enough for a paused topic or type to (wrongly) deliver.
const SETTLE: Duration = Duration::from_millis(1_500);

async fn sees(c: &Control, what: &str, want: Paused) -> anyhow::Result<()> {
    let c = c.clone();
    eventually(what, Duration::from_secs(10), || {
        let (c, want) = (c.clone(), want.clone());
        async move { (c.paused() == want).then_some(()) }
    })
    .await
}

/// Produces `tasks` and then a noop marker on key `marker_key`; once the marker has run, waits
/// long enough for the tasks to (wrongly) run too. Returns whether none of them did.
async fn only_the_marker_runs(
    env: &TestEnv,
    p: &FutureProducer,
    tasks: &[Envelope],
    marker_key: &str,
) -> anyhow::Result<bool> {
    let t = env.topics();
    for e in tasks {
        produce(p, &t, e).await?;
    }
    run_marker(env, p, "noop", marker_key).await?;
    tokio::time::sleep(SETTLE).await;
    let ids: Vec<TaskId> = tasks.iter().map(|e| e.task_id).collect();
    Ok(states(&env.pool, &ids).await?.is_empty())
}

#[tokio::test]
async fn a_pause_through_one_instance_holds_on_every_instance() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(4).await?;
    let a = start(settings(&env)).await?;
    let b = start(settings(&env)).await?;
    let (ca, cb) = (a.control.clone(), b.control.clone());
    eventually("both instances own partitions", Duration::from_secs(30), || {
        let (ca, cb) = (ca.clone(), cb.clone());
        async move { (ca.assigned_partitions() > 0 && cb.assigned_partitions() > 0).then_some(()) }
    })
    .await?;
    let p = producer(&env)?;

    // Priority: paused through a, held on both (the keys spread over every partition).
    let low = Paused {
        priorities: vec![Priority::Low],
        task_types: vec![],
    };
    assert_eq!(
        a.control.pause(&Target::Priority(Priority::Low)).await?,
        low
    );
    sees(&b.control, "b follows the pause of low", low).await?;
    let low_tasks: Vec<Envelope> = (0..24)
        .map(|i| {
            let mut e = task("noop", &format!("pl-{i}"), "");
            e.priority = Priority::Low;
            e
        })
        .collect();
    let held = only_the_marker_runs(&env, &p, &low_tasks, "pl-marker").await?;
    assert!(held, "low is paused on both instances");
    let held: Vec<TaskId> = low_tasks.iter().map(|e| e.task_id).collect();
    // Resumed through b, released on both.
    assert_eq!(
        b.control.resume(&Target::Priority(Priority::Low)).await?,
        Paused::default()
    );
    sees(&a.control, "a follows the resume of low", Paused::default()).await?;
    wait_succeeded(&env, &held, Duration::from_secs(30)).await?;

    // Task type: paused through b, held on both, and by an instance built while it is paused.
    let simulate = Paused {
        priorities: vec![],
        task_types: vec!["simulate".into()],
    };
    b.control
        .pause(&Target::TaskType("simulate".into()))
        .await?;
    sees(
        &a.control,
        "a follows the pause of simulate",
        simulate.clone(),
    )
    .await?;
    let late = App::build(settings(&env)).await?;
    assert_eq!(
        late.control().paused(),
        simulate,
        "a new instance starts paused"
    );
    drop(late);
    let sim_tasks: Vec<Envelope> = (0..24)
        .map(|i| task("simulate", &format!("pt-{i}"), ""))
        .collect();
    let held = only_the_marker_runs(&env, &p, &sim_tasks, "pt-marker").await?;
    assert!(held, "simulate is held on both instances");
    let held: Vec<TaskId> = sim_tasks.iter().map(|e| e.task_id).collect();
    a.control
        .resume(&Target::TaskType("simulate".into()))
        .await?;
    sees(
        &b.control,
        "b follows the resume of simulate",
        Paused::default(),
    )
    .await?;
    wait_succeeded(&env, &held, Duration::from_secs(30)).await?;
    assert!(dispatch_store::pauses::list(&env.pool).await?.is_empty());

    a.stop().await?;
    b.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn pausing_twice_keeps_one_pause_and_resuming_what_is_not_paused_changes_nothing()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let target = dispatch_store::pauses::PauseTarget::TaskType("simulate".into());
    let first = chrono::Utc::now();
    dispatch_store::pauses::pause(&env.pool, &target, first).await?;
    dispatch_store::pauses::pause(&env.pool, &target, first + chrono::Duration::hours(1)).await?;
    let stored = dispatch_store::pauses::list(&env.pool).await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].target, target);
    assert!(
        (stored[0].paused_at - first).num_milliseconds().abs() < 1,
        "the first pause time stays"
    );
    assert!(dispatch_store::pauses::resume(&env.pool, &target).await?);
    assert!(!dispatch_store::pauses::resume(&env.pool, &target).await?);
    assert!(dispatch_store::pauses::list(&env.pool).await?.is_empty());
    env.cleanup().await;
    Ok(())
}
