//! GetTask of a task the processor's retention purged: NOT_FOUND saying so.

use chrono::Utc;
use dispatch_core::{TaskId, TaskState};
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{KEY_ACME, KEY_GLOBEX, TaskRow, get, reader_and_client, stop};

/// An id made `days` ago (a UUIDv7 carries its creation time).
fn id_from(days: i64) -> TaskId {
    let secs = (Utc::now() - chrono::Duration::days(days)).timestamp();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, u64::try_from(secs).expect("secs"), 0);
    TaskId::from_slice(uuid::Uuid::new_v7(ts).as_bytes()).expect("id")
}

#[tokio::test]
async fn get_task_of_a_purged_task_says_it_was_purged() {
    let env = TestEnv::new().await.expect("env");
    let three_days_ago = Utc::now() - chrono::Duration::days(3);
    let finished = TaskRow {
        id: id_from(3),
        ..TaskRow::new("acme", TaskState::Succeeded, 1)
    };
    let running = TaskRow {
        id: id_from(3),
        ..TaskRow::new("acme", TaskState::Running, 1)
    };
    let mut writes = vec![finished.write(), running.write()];
    for w in &mut writes {
        w.created_at = three_days_ago;
        w.updated_at = three_days_ago;
    }
    let mut tx = env.pool.begin().await.expect("begin");
    dispatch_store::tasks::upsert_batch(&mut tx, &writes)
        .await
        .expect("upsert");
    tx.commit().await.expect("commit");

    // What the processor's retention leader does for acme with a one-day retention.
    let horizon = Utc::now() - chrono::Duration::days(1);
    let mut conn = env.pool.acquire().await.expect("conn");
    let purged = dispatch_store::retention::purge_tasks_batch(&mut conn, "acme", horizon, 500)
        .await
        .expect("purge");
    assert_eq!(purged.tasks, 1, "the finished one only");
    dispatch_store::retention::record_horizon(&mut conn, "acme", horizon)
        .await
        .expect("horizon");
    drop(conn);

    let (r, mut c) = reader_and_client(&env).await;
    let err = get(&mut c, finished.id, 0, KEY_ACME)
        .await
        .expect_err("purged");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("purged: finished before"),
        "{}",
        err.message()
    );
    // A task as old that is still running is there.
    let found = get(&mut c, running.id, 0, KEY_ACME).await.expect("running");
    assert_eq!(
        found.task.expect("task").state(),
        dispatch_proto::v1::TaskState::Running
    );
    // An id made after the horizon: plainly not found.
    let err = get(&mut c, TaskId::new(), 0, KEY_ACME)
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "task not found");
    // Another tenant with no purge horizon learns nothing.
    let err = get(&mut c, finished.id, 0, KEY_GLOBEX)
        .await
        .expect_err("not theirs");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "task not found");
    stop(r, env).await;
}
