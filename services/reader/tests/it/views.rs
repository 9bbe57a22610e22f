//! Bounded answers: BatchGetTasks and ListTasks return the BASIC view (no payload, no result)
//! unless FULL is asked for, a FULL answer stays under `query.max_response_bytes`, and an index
//! serves ListTasks' order.

use std::collections::HashSet;

use dispatch_core::TaskState;
use dispatch_proto::v1 as pb;
use dispatch_store::tasks::ListFilter;
use dispatch_testkit::TestEnv;

use crate::common::{KEY_ACME, TaskRow, authed, list, reader_and_client, reader_with, stop};

const PAYLOAD: usize = 200 * 1024;

/// Stores `n` SUCCEEDED tasks of acme with a 200 KiB payload and a result.
async fn store_big(env: &TestEnv, n: usize) -> Vec<String> {
    let rows: Vec<TaskRow> = (0..n)
        .map(|_| TaskRow::new("acme", TaskState::Succeeded, 1))
        .collect();
    let writes: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut w = r.write();
            w.payload = vec![b'p'; PAYLOAD];
            w.result = Some(b"the result".to_vec());
            w
        })
        .collect();
    let mut tx = env.pool.begin().await.expect("begin");
    dispatch_store::tasks::upsert_batch(&mut tx, &writes)
        .await
        .expect("upsert");
    tx.commit().await.expect("commit");
    rows.iter().map(|r| r.id.to_string()).collect()
}

#[tokio::test]
async fn list_and_batch_get_return_the_basic_view_by_default() {
    let env = TestEnv::new().await.expect("env");
    let ids = store_big(&env, 3).await;
    let (r, mut c) = reader_and_client(&env).await;
    for (view, full) in [
        (pb::TaskView::Unspecified, false),
        (pb::TaskView::Basic, false),
        (pb::TaskView::Full, true),
    ] {
        let listed = list(
            &mut c,
            pb::ListTasksRequest {
                view: view as i32,
                ..Default::default()
            },
        )
        .await
        .tasks;
        let got = c
            .batch_get_tasks(authed(
                pb::BatchGetTasksRequest {
                    task_ids: ids.clone(),
                    view: view as i32,
                },
                KEY_ACME,
            ))
            .await
            .expect("batch")
            .into_inner()
            .tasks;
        for (rpc, tasks) in [("ListTasks", &listed), ("BatchGetTasks", &got)] {
            assert_eq!(tasks.len(), 3, "{rpc} {view:?}");
            for t in tasks {
                assert_eq!(
                    t.payload.len(),
                    if full { PAYLOAD } else { 0 },
                    "{rpc} {view:?}"
                );
                assert_eq!(
                    t.result,
                    if full {
                        b"the result".to_vec()
                    } else {
                        Vec::new()
                    },
                    "{rpc} {view:?}"
                );
                assert_eq!(t.tenant, "acme");
                assert_eq!(t.state, pb::TaskState::Succeeded as i32);
            }
        }
    }
    let bad = c
        .list_tasks(authed(
            pb::ListTasksRequest {
                view: 7,
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect_err("not a view");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("view"), "{}", bad.message());
    stop(r, env).await;
}

#[tokio::test]
async fn full_answers_are_bounded_in_size() {
    let env = TestEnv::new().await.expect("env");
    let ids = store_big(&env, 5).await;
    // Room for two 200 KiB tasks, not three.
    let bound = 500 * 1024;
    let r = reader_with(&env, |s| s.query.max_response_bytes = bound).await;
    let mut c = r.client().await.expect("connect");

    // ListTasks: each FULL page stops at the bound and carries on with a page token; every task
    // comes exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &mut c,
            pb::ListTasksRequest {
                view: pb::TaskView::Full as i32,
                page_size: 5,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        assert!(
            prost::Message::encoded_len(&page) <= bound,
            "a page of {} tasks",
            page.tasks.len()
        );
        assert!(!page.tasks.is_empty() && page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(seen.len() <= 10, "pagination terminates");
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.iter().collect::<HashSet<_>>(), ids.iter().collect());

    // BatchGetTasks: what does not fit is named in `omitted`.
    let got = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: ids.clone(),
                view: pb::TaskView::Full as i32,
            },
            KEY_ACME,
        ))
        .await
        .expect("batch")
        .into_inner();
    assert!(prost::Message::encoded_len(&got) <= bound);
    assert_eq!(got.tasks.len(), 2);
    assert_eq!(got.omitted.len(), 3);
    assert!(got.not_found.is_empty());
    let mut all: Vec<String> = got.tasks.into_iter().map(|t| t.task_id).collect();
    all.extend(got.omitted);
    assert_eq!(all, ids, "request order");
    stop(r, env).await;
}

#[tokio::test]
async fn an_index_serves_list_order() {
    let env = TestEnv::new().await.expect("env");
    // Two tenants, so the tenant's rows are a range of the table, not all of it.
    let mut rows: Vec<TaskRow> = (0..200)
        .map(|i| {
            TaskRow::new(
                if i % 2 == 0 { "acme" } else { "globex" },
                TaskState::Pending,
                0,
            )
        })
        .collect();
    for (i, r) in rows.iter_mut().enumerate() {
        r.business_key = format!("order-{i}");
    }
    crate::common::store(&env, &rows).await;
    sqlx::query("ANALYZE TABLE tasks")
        .execute(&env.pool)
        .await
        .expect("analyze");
    let filter = |task_type: Option<&str>| ListFilter {
        tenant: "acme".into(),
        business_key: None,
        states: Vec::new(),
        task_type: task_type.map(str::to_owned),
        created_after: None,
        created_before: None,
        before_id: None,
        limit: 51,
        full: false,
    };
    // Unfiltered: read in order through (tenant, task_id); by type: through it or through
    // (tenant, task_type, task_id), whichever MySQL finds cheaper; never sorted after reading.
    for (f, indexes) in [
        (filter(None), &["ix_tasks_tenant_id"][..]),
        (
            filter(Some("noop")),
            &["ix_tasks_tenant_id", "ix_tasks_tenant_type_id"][..],
        ),
    ] {
        let plan = dispatch_store::tasks::explain_list(&env.pool, &f)
            .await
            .expect("explain");
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(
            indexes
                .iter()
                .any(|i| plan[0].starts_with(&format!("{i} |"))),
            "{plan:?}"
        );
        assert!(
            !plan[0].contains("filesort"),
            "sorted after reading: {plan:?}"
        );
    }
    env.cleanup().await;
}
