//! ListTasks: filters and stable keyset pagination.

use std::collections::HashSet;

use dispatch_core::{TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;

use crate::common::{TaskRow, list, list_ids, reader, reader_and_client, stop, store};

#[tokio::test]
async fn pagination_is_stable_while_rows_are_inserted() {
    let env = TestEnv::new().await.expect("env");
    let originals: Vec<TaskRow> = (0..23)
        .map(|_| TaskRow::new("acme", TaskState::Pending, 0))
        .collect();
    store(&env, &originals).await;
    let (r, mut c) = reader_and_client(&env).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &mut c,
            pb::ListTasksRequest {
                page_size: 5,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        pages += 1;
        assert!(page.tasks.len() <= 5);
        seen.extend(page.tasks.iter().map(|t| t.task_id.clone()));
        // New tasks arrive between pages: newer time-ordered ids, and a random (v8,
        // idempotency-derived) one that may sort anywhere.
        let mut fresh = vec![
            TaskRow::new("acme", TaskState::Pending, 0),
            TaskRow::new("acme", TaskState::Pending, 0),
        ];
        fresh[1].id = TaskId::from_idempotency_key("acme", &format!("k{pages}"));
        store(&env, &fresh).await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 100, "pagination terminates");
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no task appears twice");
    for o in &originals {
        assert!(
            seen.contains(&o.id.to_string()),
            "original {} missing",
            o.id
        );
    }
    // Newest first among the originals.
    let positions: Vec<usize> = originals
        .iter()
        .map(|o| {
            seen.iter()
                .position(|s| *s == o.id.to_string())
                .expect("present")
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] > w[1]), "descending ids");
    stop(r, env).await;
}

#[tokio::test]
async fn filters_narrow_the_listing() {
    let env = TestEnv::new().await.expect("env");
    let mut a = TaskRow::new("acme", TaskState::Running, 1);
    a.business_key = "order-7".into();
    let mut b = TaskRow::new("acme", TaskState::Succeeded, 1);
    b.task_type = "http".into();
    let c_row = TaskRow::new("acme", TaskState::Pending, 0);
    store(&env, &[a.clone(), b.clone(), c_row.clone()]).await;
    let r = reader(&env).await;
    let c = r.client().await.expect("connect");
    let list = |f: pb::ListTasksRequest| {
        let mut c = c.clone();
        async move { list_ids(&mut c, f).await }
    };
    let by_key = list(pb::ListTasksRequest {
        business_key: "order-7".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_key, vec![a.id.to_string()]);
    let by_state = list(pb::ListTasksRequest {
        states: vec![
            pb::TaskState::Succeeded as i32,
            pb::TaskState::Pending as i32,
        ],
        ..Default::default()
    })
    .await;
    assert_eq!(by_state, vec![c_row.id.to_string(), b.id.to_string()]);
    let by_type = list(pb::ListTasksRequest {
        task_type: "http".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_type, vec![b.id.to_string()]);
    let future = dispatch_core::time::to_proto(chrono::Utc::now() + chrono::Duration::hours(1));
    let none = list(pb::ListTasksRequest {
        created_after: Some(future),
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());
    let all = list(pb::ListTasksRequest {
        created_before: Some(future),
        ..Default::default()
    })
    .await;
    assert_eq!(all.len(), 3);
    stop(r, env).await;
}
