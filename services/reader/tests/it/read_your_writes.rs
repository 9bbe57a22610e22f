//! `min_version`: never answer older than the caller already holds.

use std::time::{Duration, Instant};

use dispatch_core::TaskState;
use dispatch_core::state::ACCEPTED_VERSION;
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{
    Events, KEY_ACME, TaskRow, env_reader_and_client, get, reader_with, stop, store, store_gets,
};

#[tokio::test]
async fn min_version_reads_through_a_stale_cache_entry() {
    let env = TestEnv::new().await.expect("env");
    // Version 3 (running, attempt 0) is cached...
    let v3 = TaskRow::new("acme", TaskState::Running, 0);
    assert_eq!(v3.version(), 3);
    store(&env, std::slice::from_ref(&v3)).await;
    let r = reader_with(&env, |s| s.cache.read_your_writes_wait_ms = 300).await;
    let mut c = r.client().await.expect("connect");
    assert_eq!(
        get(&mut c, v3.id, 0, KEY_ACME)
            .await
            .expect("get")
            .task
            .expect("task")
            .version,
        3
    );
    // ...then MySQL moves to version 11 (retrying, attempt 1) without any event.
    let v11 = v3.at(TaskState::Running, 1);
    assert_eq!(v11.version(), 11);
    store(&env, std::slice::from_ref(&v11)).await;
    let cached = get(&mut c, v3.id, 0, KEY_ACME).await.expect("get");
    assert_eq!(cached.task.expect("task").version, 3, "plain reads may lag");
    let fresh = get(&mut c, v3.id, 11, KEY_ACME)
        .await
        .expect("min_version 11");
    assert_eq!(fresh.served_from(), pb::ServedFrom::Store);
    assert_eq!(fresh.task.expect("task").version, 11);
    // The read-through refreshed the cache for everyone.
    let after = get(&mut c, v3.id, 0, KEY_ACME).await.expect("get");
    assert_eq!(after.served_from(), pb::ServedFrom::L1);
    assert_eq!(after.task.expect("task").version, 11);

    // A version nobody wrote: FAILED_PRECONDITION after the bounded wait.
    let started = Instant::now();
    let err = get(&mut c, v3.id, 1000, KEY_ACME)
        .await
        .expect_err("not visible");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("version 1000 not visible"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited");
    stop(r, env).await;
}

#[tokio::test]
async fn a_submit_version_token_waits_for_the_task_to_appear() {
    let (env, r, mut c) = env_reader_and_client().await;
    // Right after SubmitTask: the gateway returned ACCEPTED_VERSION, the processor has not
    // written the task yet. A plain read says NOT_FOUND (and caches that)...
    let row = TaskRow::new("acme", TaskState::Pending, 0);
    let err = get(&mut c, row.id, 0, KEY_ACME).await.expect_err("not yet");
    assert_eq!(err.code(), Code::NotFound);
    // ...but a read with the token waits for the task: here it arrives through MySQL and the
    // event, 150 ms later.
    let writer = written_later(&env, &row, Duration::from_millis(150));
    let started = Instant::now();
    let got = get(&mut c, row.id, ACCEPTED_VERSION, KEY_ACME)
        .await
        .expect("visible within the wait");
    let waited = started.elapsed();
    assert_eq!(got.task.expect("task").version, row.version());
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    println!("read-your-writes answered {waited:?} after the call (task written at ~150 ms)");
    writer.await.expect("writer");
    stop(r, env).await;
}

/// The lookup that found nothing in MySQL is the wait's first read: a task that is not written
/// yet costs one query, and its event (not a poll) ends the wait.
#[tokio::test]
async fn a_submit_token_reads_mysql_once_and_waits_on_the_event() {
    let env = TestEnv::new().await.expect("env");
    // Polls far apart, so only the event can answer quickly.
    let r = reader_with(&env, |s| {
        s.cache.read_your_writes_wait_ms = 5_000;
        s.cache.read_your_writes_poll_ms = 4_000;
    })
    .await;
    let mut c = r.client().await.expect("connect");
    let row = TaskRow::new("acme", TaskState::Succeeded, 0);
    let before = store_gets(&r);
    let writer = written_later(&env, &row, Duration::from_millis(300));
    let started = Instant::now();
    let got = get(&mut c, row.id, ACCEPTED_VERSION, KEY_ACME)
        .await
        .expect("visible once the event arrives");
    let waited = started.elapsed();
    assert_eq!(got.task.expect("task").version, row.version());
    assert!(
        waited < Duration::from_secs(3),
        "answered by the event: {waited:?}"
    );
    assert_eq!(
        store_gets(&r) - before,
        1,
        "one MySQL read: the miss, not a second read right after it"
    );
    writer.await.expect("writer");
    stop(r, env).await;
}

/// Writes `row` to MySQL `after` from now, then publishes its event: the processor's part.
fn written_later(env: &TestEnv, row: &TaskRow, after: Duration) -> tokio::task::JoinHandle<()> {
    let (pool, events, row) = (env.pool.clone(), Events::new(env), row.clone());
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let mut tx = pool.begin().await.expect("begin");
        dispatch_store::tasks::upsert_batch(&mut tx, &[row.write()])
            .await
            .expect("upsert");
        tx.commit().await.expect("commit");
        events.publish(&row).await;
    })
}
