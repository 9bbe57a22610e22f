//! AdminService's outbox operations: ListOutbox and RequeueOutbox over gRPC.

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_testkit::TestEnv;
use tonic::transport::Channel;

use crate::admin_harness::{Admin, KEY_ACME, admin, with_key};

/// Inserts an outbox row and puts it in `state`; a pending one is not due for a day.
async fn row(env: &TestEnv, key: &str, state: &str) -> anyhow::Result<u64> {
    let id = env.insert_outbox_row(key).await?;
    sqlx::query(
        "UPDATE outbox SET state = ?, attempts = IF(? = 'dead', 20, 0), \
         last_error = IF(? = 'dead', 'kafka: topic authorization failed', ''), \
         published_at = IF(? = 'published', NOW(6), NULL), \
         next_attempt_at = NOW(6) + INTERVAL 1 DAY WHERE id = ?",
    )
    .bind(state)
    .bind(state)
    .bind(state)
    .bind(state)
    .bind(id)
    .execute(&env.pool)
    .await?;
    Ok(id)
}

async fn list(
    c: &mut AdminServiceClient<Channel>,
    state: &str,
    page_size: u32,
    after_id: u64,
) -> anyhow::Result<pb::ListOutboxResponse> {
    Ok(c.list_outbox(admin(pb::ListOutboxRequest {
        state: state.into(),
        page_size,
        after_id,
    }))
    .await?
    .into_inner())
}

fn ids(r: &pb::ListOutboxResponse) -> Vec<u64> {
    r.rows.iter().map(|o| o.id).collect()
}

#[tokio::test]
async fn operators_list_the_outbox_and_requeue_dead_rows() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut app = Admin::start(&env, |b| b).await?;
    let c = &mut app.client;
    let dead_a = row(&env, "acct-a", "dead").await?;
    let dead_b = row(&env, "acct-b", "dead").await?;
    let pending = row(&env, "acct-c", "pending").await?;
    let published = row(&env, "acct-d", "published").await?;

    // Pending and dead by default, oldest first, with the whole outbox's counts.
    let all = list(c, "", 0, 0).await?;
    assert_eq!(ids(&all), [dead_a, dead_b, pending]);
    assert_eq!((all.pending, all.dead, all.next_after_id), (1, 2, 0));
    let first = &all.rows[0];
    assert_eq!(first.business_key, "acct-a");
    assert_eq!(first.attempts, 20);
    assert!(first.last_error.contains("authorization"));
    assert_eq!(ids(&list(c, "published", 0, 0).await?), [published]);
    // Pages by id.
    let p1 = list(c, "dead", 1, 0).await?;
    assert_eq!((ids(&p1), p1.next_after_id), (vec![dead_a], dead_a));
    let p2 = list(c, "dead", 1, p1.next_after_id).await?;
    assert_eq!((ids(&p2), p2.next_after_id), (vec![dead_b], 0));

    // A dry run counts and changes nothing.
    let dry = c
        .requeue_outbox(admin(pb::RequeueOutboxRequest {
            ids: Vec::new(),
            all: true,
            dry_run: true,
        }))
        .await?
        .into_inner();
    assert_eq!((dry.requeued, dry.dry_run), (2, true));
    assert_eq!(list(c, "dead", 0, 0).await?.rows.len(), 2);

    // By id: only dead rows move (the pending one named here is skipped).
    let one = c
        .requeue_outbox(admin(pb::RequeueOutboxRequest {
            ids: vec![dead_a, pending],
            all: false,
            dry_run: false,
        }))
        .await?
        .into_inner();
    assert_eq!(one.requeued, 1);
    let now_pending = list(c, "pending", 0, 0).await?;
    assert_eq!(ids(&now_pending), [dead_a, pending]);
    let requeued = &now_pending.rows[0];
    assert_eq!(requeued.attempts, 0);
    let due = requeued
        .next_attempt_at
        .as_ref()
        .and_then(dispatch_core::time::from_proto)
        .expect("next attempt");
    assert!(due <= chrono::Utc::now(), "requeued row is due at once");

    // Everything else.
    let rest = c
        .requeue_outbox(admin(pb::RequeueOutboxRequest {
            ids: Vec::new(),
            all: true,
            dry_run: false,
        }))
        .await?
        .into_inner();
    assert_eq!(rest.requeued, 1);
    let after = list(c, "", 0, 0).await?;
    assert_eq!((after.pending, after.dead), (3, 0));
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn outbox_requests_are_checked() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut app = Admin::start(&env, |b| b).await?;
    let c = &mut app.client;
    let bad = [
        (
            "state",
            c.list_outbox(admin(pb::ListOutboxRequest {
                state: "lost".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        ),
        (
            "page_size",
            c.list_outbox(admin(pb::ListOutboxRequest {
                page_size: 1_001,
                ..Default::default()
            }))
            .await
            .map(|_| ()),
        ),
        (
            "ids",
            c.requeue_outbox(admin(pb::RequeueOutboxRequest::default()))
                .await
                .map(|_| ()),
        ),
        (
            "all",
            c.requeue_outbox(admin(pb::RequeueOutboxRequest {
                ids: vec![1],
                all: true,
                dry_run: false,
            }))
            .await
            .map(|_| ()),
        ),
    ];
    for (field, r) in bad {
        let e = r.expect_err(field);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    for (key, code) in [
        (None, tonic::Code::Unauthenticated),
        (Some(KEY_ACME), tonic::Code::PermissionDenied),
    ] {
        let e = c
            .requeue_outbox(with_key(
                pb::RequeueOutboxRequest {
                    all: true,
                    ..Default::default()
                },
                key,
            ))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "key {key:?}");
    }
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
