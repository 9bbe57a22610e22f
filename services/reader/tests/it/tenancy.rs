//! A tenant sees only its own tasks; others' look exactly like missing ones.

use dispatch_core::TaskState;
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{ACME, GLOBEX, Reader, TaskRow, get, req, store};

#[tokio::test]
async fn other_tenants_tasks_answer_not_found_everywhere() {
    let env = TestEnv::new().await.expect("env");
    let mine = TaskRow::new("acme", TaskState::Running, 1);
    let theirs = TaskRow::new("globex", TaskState::Running, 1);
    store(&env, &[mine.clone(), theirs.clone()]).await;
    let r = Reader::start_with(&env, |s| s.cache.read_your_writes_wait_ms = 200).await;
    let mut c = r.client().await;

    // Cold, then hot (from L1), with and without a version token.
    for min_version in [0, 0, theirs.version(), theirs.version() + 100] {
        let err = get(&mut c, theirs.id, min_version, ACME)
            .await
            .expect_err("not mine");
        assert_eq!(err.code(), Code::NotFound, "min_version {min_version}");
    }
    assert_eq!(
        get(&mut c, theirs.id, 0, GLOBEX)
            .await
            .expect("owner sees it")
            .task
            .expect("task")
            .tenant,
        "globex"
    );

    let batch = c
        .batch_get_tasks(req(
            pb::BatchGetTasksRequest {
                task_ids: vec![mine.id.to_string(), theirs.id.to_string()],
                ..Default::default()
            },
            ACME,
        ))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.tasks.len(), 1);
    assert_eq!(batch.tasks[0].task_id, mine.id.to_string());
    assert_eq!(batch.not_found, vec![theirs.id.to_string()]);

    let err = c
        .watch_task(req(
            pb::WatchTaskRequest {
                task_id: theirs.id.to_string(),
                min_version: 0,
            },
            ACME,
        ))
        .await
        .expect_err("not mine");
    assert_eq!(err.code(), Code::NotFound);

    let list = c
        .list_tasks(req(pb::ListTasksRequest::default(), ACME))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<String> = list.tasks.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(ids, vec![mine.id.to_string()]);

    let err = get(&mut c, mine.id, 0, "no-such-key")
        .await
        .expect_err("auth");
    assert_eq!(err.code(), Code::Unauthenticated);
    r.stop().await;
    env.cleanup().await;
}
