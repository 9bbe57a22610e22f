//! Per-tenant read limits, shared through Redis: a tenant over its limit gets RESOURCE_EXHAUSTED
//! with a retry hint on every read RPC, while another tenant reads on.

use dispatch_core::TaskState;
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{KEY_ACME, KEY_GLOBEX, TaskRow, authed, get, reader_with, stop, store, watch};

fn retry_after_ms(s: &tonic::Status) -> u64 {
    dispatch_runtime::ratelimit::retry_after_ms(s).expect("retry-after-ms")
}

#[tokio::test]
async fn a_tenant_over_its_read_limit_is_refused_and_another_is_not() {
    let env = TestEnv::new().await.expect("env");
    let mine = TaskRow::new("acme", TaskState::Running, 1);
    let (mine2, mine3) = (
        TaskRow::new("acme", TaskState::Running, 1),
        TaskRow::new("acme", TaskState::Running, 1),
    );
    let theirs = TaskRow::new("globex", TaskState::Running, 1);
    store(
        &env,
        &[mine.clone(), mine2.clone(), mine3.clone(), theirs.clone()],
    )
    .await;
    // One read a minute after a burst of 4: nothing refills during the test.
    let r = reader_with(&env, |s| {
        s.limits.tenant_rps = 1;
        s.limits.tenant_burst = 4;
        s.limits.redis_timeout_ms = 1_000;
    })
    .await;
    let mut c = r.client().await.expect("connect");

    // acme: a GetTask and a BatchGetTasks of three ids spend its burst of 4.
    get(&mut c, mine.id, 0, KEY_ACME).await.expect("first read");
    let batch = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: vec![
                    mine.id.to_string(),
                    mine2.id.to_string(),
                    mine3.id.to_string(),
                ],
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect("a batch of 3 ids costs 3");
    assert_eq!(batch.into_inner().tasks.len(), 3);

    let refused = get(&mut c, mine.id, 0, KEY_ACME)
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!((1..=1_000).contains(&retry_after_ms(&refused)));
    let refused = c
        .list_tasks(authed(pb::ListTasksRequest::default(), KEY_ACME))
        .await
        .expect_err("ListTasks is limited too");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let refused = watch(&mut c, mine.id, 0, KEY_ACME)
        .await
        .expect_err("WatchTask is limited too");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let refused = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: vec![mine.id.to_string()],
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect_err("BatchGetTasks is limited too");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // globex is unaffected: its own burst of 4.
    for _ in 0..4 {
        let got = get(&mut c, theirs.id, 0, KEY_GLOBEX)
            .await
            .expect("globex reads on");
        assert_eq!(got.task.expect("task").tenant, "globex");
    }
    let refused = get(&mut c, theirs.id, 0, KEY_GLOBEX)
        .await
        .expect_err("its own limit");
    assert_eq!(refused.code(), Code::ResourceExhausted);

    // Decided in Redis (shared by all replicas) and counted: the five refusals above at least
    // (this binary's other tests run far below the default limits).
    let m = crate::invalid::http_get(r.admin, "/metrics").await;
    let refused_in_redis: f64 = m
        .lines()
        .filter(|l| l.starts_with("dispatch_rate_limit_rejected_total{"))
        .filter(|l| {
            [
                "backend=\"redis\"",
                "scope=\"tenant\"",
                "service=\"reader\"",
            ]
            .iter()
            .all(|p| l.contains(p))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused_in_redis >= 5.0, "{m}");
    stop(r, env).await;
}
