//! A tenant sees only its own tasks; others' look exactly like missing ones.

use dispatch_core::TaskState;
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{KEY_ACME, KEY_GLOBEX, TaskRow, authed, get, reader_with, stop, store, watch};

#[tokio::test]
async fn other_tenants_tasks_answer_not_found_everywhere() {
    let env = TestEnv::new().await.expect("env");
    let mine = TaskRow::new("acme", TaskState::Running, 1);
    let theirs = TaskRow::new("globex", TaskState::Running, 1);
    store(&env, &[mine.clone(), theirs.clone()]).await;
    let r = reader_with(&env, |s| s.cache.read_your_writes_wait_ms = 200).await;
    let mut c = r.client().await.expect("connect");

    // Cold, then hot (from L1), with and without a version token.
    for min_version in [0, 0, theirs.version(), theirs.version() + 100] {
        let err = get(&mut c, theirs.id, min_version, KEY_ACME)
            .await
            .expect_err("not mine");
        assert_eq!(err.code(), Code::NotFound, "min_version {min_version}");
    }
    assert_eq!(
        get(&mut c, theirs.id, 0, KEY_GLOBEX)
            .await
            .expect("owner sees it")
            .task
            .expect("task")
            .tenant,
        "globex"
    );

    let batch = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: vec![mine.id.to_string(), theirs.id.to_string()],
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.tasks.len(), 1);
    assert_eq!(batch.tasks[0].task_id, mine.id.to_string());
    assert_eq!(batch.not_found, vec![theirs.id.to_string()]);

    let err = watch(&mut c, theirs.id, 0, KEY_ACME)
        .await
        .expect_err("not mine");
    assert_eq!(err.code(), Code::NotFound);

    let list = c
        .list_tasks(authed(pb::ListTasksRequest::default(), KEY_ACME))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<String> = list.tasks.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(ids, vec![mine.id.to_string()]);

    let err = get(&mut c, mine.id, 0, "no-such-key")
        .await
        .expect_err("auth");
    assert_eq!(err.code(), Code::Unauthenticated);
    stop(r, env).await;
}
