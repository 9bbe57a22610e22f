//! AdminService over gRPC: DLQ list/get/purge/redrive, pauses, stats, the admin key.
//!
//! Over 400 lines because it holds one test per AdminService area (dead letters, pauses, the admin
//! key, concurrent claims, redrives), sharing the handlers and the list and redrive helpers; the
//! dead-letter test alone is about 230 lines, and the pause test would move to a file of its own
//! first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dispatch_core::envelope::header;
use dispatch_core::{Envelope, Priority, TaskId, TaskState, Tenant};
use dispatch_processor::{Handler, HandlerContext, HandlerError, Outcome};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_testkit::{TestEnv, consume_until, eventually};
use parking_lot::Mutex;
use tonic::transport::Channel;

use crate::admin_harness::{Admin, KEY_ACME, admin, with_key};
use crate::harness::{produce, producer, states, task, wait_all, wait_succeeded};

/// Fails permanently in generation 0 (so every task dies once), succeeds after a redrive;
/// records every run as (task, generation).
#[derive(Clone, Default)]
struct DiesOnce {
    runs: Arc<Mutex<Vec<(TaskId, u32)>>>,
}

#[async_trait]
impl Handler for DiesOnce {
    async fn handle(&self, ctx: HandlerContext, task: &Envelope) -> Result<Outcome, HandlerError> {
        self.runs.lock().push((task.task_id, ctx.generation));
        if ctx.generation == 0 {
            return Err(HandlerError::Permanent("dies in generation 0".into()));
        }
        Ok(Outcome::default())
    }
}

impl DiesOnce {
    fn runs_in(&self, generation: u32) -> HashMap<TaskId, usize> {
        let mut m = HashMap::new();
        for (id, g) in self.runs.lock().iter() {
            if *g == generation {
                *m.entry(*id).or_default() += 1;
            }
        }
        m
    }
}

fn filter(tenant: &str, task_type: &str) -> Option<pb::DeadLetterFilter> {
    Some(pb::DeadLetterFilter {
        tenant: tenant.into(),
        task_type: task_type.into(),
        ..Default::default()
    })
}

fn owned(tenant: &str, task_type: &str, key: &str) -> Envelope {
    let mut e = task(task_type, key, &format!("{{\"key\":\"{key}\"}}"));
    e.tenant = Tenant::parse(tenant).expect("tenant");
    e
}

async fn list(
    c: &mut AdminServiceClient<Channel>,
    f: Option<pb::DeadLetterFilter>,
) -> anyhow::Result<pb::ListDeadLettersResponse> {
    Ok(c.list_dead_letters(admin(pb::ListDeadLettersRequest {
        filter: f,
        page_size: 0,
        page_token: String::new(),
    }))
    .await?
    .into_inner())
}

async fn redrive(
    c: &mut AdminServiceClient<Channel>,
    f: Option<pb::DeadLetterFilter>,
    dry_run: bool,
) -> anyhow::Result<pb::RedriveDeadLettersResponse> {
    redrive_at(c, f, dry_run, 1_000).await
}

async fn redrive_at(
    c: &mut AdminServiceClient<Channel>,
    f: Option<pb::DeadLetterFilter>,
    dry_run: bool,
    rate_per_second: u32,
) -> anyhow::Result<pb::RedriveDeadLettersResponse> {
    Ok(c.redrive_dead_letters(admin(pb::RedriveDeadLettersRequest {
        filter: f,
        dry_run,
        max_count: 0,
        rate_per_second,
    }))
    .await?
    .into_inner())
}

#[tokio::test]
async fn dead_letters_list_redrive_once_and_purge_only_the_filtered_set() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let h = DiesOnce::default();
    let (ha, hb) = (h.clone(), h.clone());
    let mut app = Admin::start(&env, |b| b.handler("dies.a", ha).handler("dies.b", hb)).await?;
    let c = &mut app.client;
    let p = producer(&env)?;
    let mut tasks = Vec::new();
    for (i, (tenant, ty)) in [
        ("acme", "dies.a"),
        ("acme", "dies.a"),
        ("acme", "dies.a"),
        ("acme", "dies.b"),
        ("acme", "dies.b"),
        ("globex", "dies.a"),
        ("globex", "dies.a"),
    ]
    .into_iter()
    .enumerate()
    {
        let e = owned(tenant, ty, &format!("adm-{i}"));
        produce(&p, &env.topics(), &e).await?;
        tasks.push(e);
    }
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    wait_all(&env.pool, &ids, TaskState::Dead, Duration::from_secs(30)).await?;
    let target: Vec<TaskId> = ids[..3].to_vec();

    // Listing: filters, totals, pages, validation.
    assert_eq!(list(c, None).await?.total, 7);
    assert_eq!(list(c, filter("acme", "")).await?.total, 5);
    let acme_a = list(c, filter("acme", "dies.a")).await?;
    assert_eq!(acme_a.total, 3);
    let mut listed: Vec<TaskId> = acme_a
        .dead_letters
        .iter()
        .map(|d| TaskId::parse(&d.task_id).expect("id"))
        .collect();
    listed.sort();
    let mut want = target.clone();
    want.sort();
    assert_eq!(listed, want);
    assert!(
        acme_a
            .dead_letters
            .iter()
            .all(|d| d.error_class == "permanent"
                && d.attempts == 1
                && d.redrive_id.is_empty()
                && d.dead_at.is_some())
    );
    let by_class = pb::DeadLetterFilter {
        error_class: "permanent".into(),
        ..Default::default()
    };
    assert_eq!(list(c, Some(by_class)).await?.total, 7);
    let past = pb::DeadLetterFilter {
        dead_before: Some(dispatch_core::time::to_proto(
            chrono::Utc::now() - chrono::Duration::hours(1),
        )),
        ..Default::default()
    };
    assert_eq!(list(c, Some(past)).await?.total, 0);
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_dead_letters(admin(pb::ListDeadLettersRequest {
                filter: None,
                page_size: 2,
                page_token: token.clone(),
            }))
            .await?
            .into_inner();
        assert!(r.dead_letters.len() <= 2);
        pages.extend(r.dead_letters.into_iter().map(|d| d.task_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    pages.sort();
    pages.dedup();
    assert_eq!(pages.len(), 7, "pages cover every dead letter once");
    let bad = pb::DeadLetterFilter {
        error_class: "nope".into(),
        ..Default::default()
    };
    let e = c
        .list_dead_letters(admin(pb::ListDeadLettersRequest {
            filter: Some(bad),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .expect_err("unknown class");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Dry run: counts, moves nothing.
    let dry = redrive(c, filter("acme", "dies.a"), true).await?;
    assert_eq!((dry.matched, dry.redriven, dry.dry_run), (3, 0, true));
    assert!(
        list(c, None)
            .await?
            .dead_letters
            .iter()
            .all(|d| d.redrive_id.is_empty())
    );

    // The redrive moves exactly the filtered set, through retry.1 with lineage headers.
    let retry1 = env.consumer(&[env.topics().retry(1)])?;
    let moved = redrive(c, filter("acme", "dies.a"), false).await?;
    assert_eq!(
        (moved.matched, moved.redriven, moved.dry_run),
        (3, 3, false)
    );
    let done = wait_succeeded(&env, &target, Duration::from_secs(30)).await?;
    assert!(done.values().all(|s| s.generation == 1));
    let records = consume_until(&retry1, Duration::from_secs(20), |r| r.len() >= 3).await?;
    let rows = list(c, filter("acme", "dies.a")).await?.dead_letters;
    for r in &records {
        assert_eq!(
            r.headers.get_str(header::REDRIVE_ID),
            Some(moved.redrive_id.as_str())
        );
        let env = Envelope::decode(&r.value)?;
        assert_eq!((env.generation, env.attempt), (1, 1));
        let row = rows
            .iter()
            .find(|d| d.task_id == env.task_id.to_string())
            .expect("a redriven record belongs to the filtered set");
        assert_eq!(
            r.headers.get_i64(header::DLQ_PARTITION),
            Some(i64::from(row.dlq_partition))
        );
        assert_eq!(r.headers.get_i64(header::DLQ_OFFSET), Some(row.dlq_offset));
        assert!(r.headers.get_i64(header::NOT_BEFORE).is_some());
        assert_eq!(row.redrive_id, moved.redrive_id);
    }
    // Everything else is still dead and never ran again.
    let rest = states(&env.pool, &ids[3..]).await?;
    assert!(rest.values().all(|s| s.state == TaskState::Dead));
    let gen1 = h.runs_in(1);
    assert_eq!(gen1.len(), 3);
    assert!(target.iter().all(|id| gen1.get(id) == Some(&1)));

    // A second identical redrive moves nothing.
    let again = redrive(c, filter("acme", "dies.a"), false).await?;
    assert_eq!((again.matched, again.redriven), (0, 0));
    assert_ne!(again.redrive_id, moved.redrive_id);

    // Inspect one: provenance, lineage, payload read back from the DLQ.
    let one = c
        .get_dead_letter(admin(pb::GetDeadLetterRequest {
            task_id: target[0].to_string(),
        }))
        .await?
        .into_inner();
    assert_eq!(one.redrive_id, moved.redrive_id);
    assert_eq!(one.payload, tasks[0].payload);
    assert_eq!(one.original_topic, env.topics().tasks(Priority::Default));
    let missing = c
        .get_dead_letter(admin(pb::GetDeadLetterRequest {
            task_id: TaskId::new().to_string(),
        }))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad_id = c
        .get_dead_letter(admin(pb::GetDeadLetterRequest {
            task_id: "nope".into(),
        }))
        .await
        .expect_err("bad id");
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);

    // Purge only globex: dry run counts, purge marks, the rest stays.
    let purge = |dry_run| {
        admin(pb::PurgeDeadLettersRequest {
            filter: filter("globex", ""),
            dry_run,
        })
    };
    assert_eq!(
        c.purge_dead_letters(purge(true)).await?.into_inner().purged,
        2
    );
    assert_eq!(list(c, filter("globex", "")).await?.total, 2);
    assert_eq!(
        c.purge_dead_letters(purge(false))
            .await?
            .into_inner()
            .purged,
        2
    );
    assert_eq!(
        c.purge_dead_letters(purge(false))
            .await?
            .into_inner()
            .purged,
        0
    );
    assert_eq!(list(c, filter("globex", "")).await?.total, 0);
    assert_eq!(list(c, filter("acme", "")).await?.total, 5);
    let purged_one = c
        .get_dead_letter(admin(pb::GetDeadLetterRequest {
            task_id: ids[5].to_string(),
        }))
        .await?
        .into_inner();
    assert!(purged_one.purged);
    assert_eq!(redrive(c, filter("globex", ""), false).await?.redriven, 0);
    // Open = 7 - 3 redriven - 2 purged.
    let stats = c
        .get_stats(admin(pb::GetStatsRequest {}))
        .await?
        .into_inner();
    assert_eq!(stats.dlq_size, 2);
    assert!(!stats.partitions.is_empty());
    assert_eq!(stats.retry_depths.len(), 3);

    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, _: HandlerContext, _: &Envelope) -> Result<Outcome, HandlerError> {
        Ok(Outcome::default())
    }
}

/// Long enough for a paused topic or type to (wrongly) deliver.
const SETTLE: Duration = Duration::from_millis(1_500);

#[tokio::test]
async fn pausing_a_priority_or_a_type_holds_only_that_and_resume_restarts_it() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let mut app = Admin::start(&env, |b| b.handler("echo.a", Echo).handler("echo.b", Echo)).await?;
    let c = &mut app.client;
    let p = producer(&env)?;
    let pause_low = || {
        admin(pb::PauseRequest {
            target: Some(pb::pause_request::Target::Priority(
                pb::Priority::Low as i32,
            )),
        })
    };
    let r = c.pause_consumption(pause_low()).await?.into_inner();
    assert_eq!(r.paused_priorities, vec!["low"]);
    let mut low = owned("acme", "echo.a", "pause-low");
    low.priority = Priority::Low;
    let normal = owned("acme", "echo.a", "pause-default");
    produce(&p, &env.topics(), &low).await?;
    produce(&p, &env.topics(), &normal).await?;
    wait_succeeded(&env, &[normal.task_id], Duration::from_secs(30)).await?;
    tokio::time::sleep(SETTLE).await;
    assert!(
        states(&env.pool, &[low.task_id]).await?.is_empty(),
        "low is paused"
    );
    let stats = c
        .get_stats(admin(pb::GetStatsRequest {}))
        .await?
        .into_inner();
    assert_eq!(stats.paused_priorities, vec!["low"]);
    let low_lag: i64 = stats
        .partitions
        .iter()
        .filter(|s| s.topic == env.topics().tasks(Priority::Low))
        .map(|s| s.lag)
        .sum();
    assert_eq!(low_lag, 1, "the paused record waits on the low topic");
    let r = c.resume_consumption(pause_low()).await?.into_inner();
    assert!(r.paused_priorities.is_empty());
    wait_succeeded(&env, &[low.task_id], Duration::from_secs(30)).await?;

    // A paused type is held; other types on the same topic flow.
    let pause_b = || {
        admin(pb::PauseRequest {
            target: Some(pb::pause_request::Target::TaskType("echo.b".into())),
        })
    };
    let r = c.pause_consumption(pause_b()).await?.into_inner();
    assert_eq!(r.paused_task_types, vec!["echo.b"]);
    assert_eq!(app.control.paused().task_types, vec!["echo.b".to_string()]);
    let held = owned("acme", "echo.b", "type-b");
    let flows = owned("acme", "echo.a", "type-a");
    produce(&p, &env.topics(), &held).await?;
    produce(&p, &env.topics(), &flows).await?;
    wait_succeeded(&env, &[flows.task_id], Duration::from_secs(30)).await?;
    tokio::time::sleep(SETTLE).await;
    assert!(
        states(&env.pool, &[held.task_id]).await?.is_empty(),
        "echo.b is held"
    );
    let r = c.resume_consumption(pause_b()).await?.into_inner();
    assert!(r.paused_task_types.is_empty());
    wait_succeeded(&env, &[held.task_id], Duration::from_secs(30)).await?;

    let e = c
        .pause_consumption(admin(pb::PauseRequest { target: None }))
        .await
        .expect_err("no target");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn only_the_admin_key_may_call() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut app = Admin::start(&env, |b| b).await?;
    let c = &mut app.client;
    // No key or an unknown one: UNAUTHENTICATED; a tenant key (known, but not an admin):
    // PERMISSION_DENIED.
    for (key, code) in [
        (None, tonic::Code::Unauthenticated),
        (Some(KEY_ACME), tonic::Code::PermissionDenied),
        (Some("wrong"), tonic::Code::Unauthenticated),
    ] {
        let e = c
            .get_stats(with_key(pb::GetStatsRequest {}, key))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "key {key:?}");
        let e = c
            .redrive_dead_letters(with_key(pb::RedriveDeadLettersRequest::default(), key))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "key {key:?}");
    }
    // The admin key is served. GetStats reads the group from Kafka with a 3 s bound, and on a
    // loaded machine may answer its documented UNAVAILABLE ("retry shortly"): retried, since
    // this test is about who may call, not about the cluster query.
    let s = eventually(
        "GetStats with the admin key",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                match c.get_stats(admin(pb::GetStatsRequest {})).await {
                    Ok(r) => Some(Ok(r.into_inner())),
                    Err(e) if e.code() == tonic::Code::Unavailable => None,
                    Err(e) => Some(Err(e)),
                }
            }
        },
    )
    .await??;
    assert_eq!(s.dlq_size, 0);
    assert!(s.paused_priorities.is_empty());
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

fn dead_row(i: i64) -> dispatch_store::dead_letters::DeadLetterRow {
    dispatch_store::dead_letters::DeadLetterRow {
        task_type: "dies.a".into(),
        business_key: format!("k{i}"),
        error_class: "permanent".into(),
        error: "boom".into(),
        attempts: 1,
        ..dispatch_testkit::dead_letter("acme", i, chrono::Utc::now())
    }
}

#[tokio::test]
async fn concurrent_claims_never_share_a_dead_letter_nor_block_indexing() -> anyhow::Result<()> {
    use dispatch_store::dead_letters_admin::{DeadLetterFilter, claim, count_redrivable};
    let env = TestEnv::new().await?;
    for i in 0..6 {
        dispatch_store::dead_letters::insert(&env.pool, &dead_row(i)).await?;
    }
    let f = DeadLetterFilter::default();
    let up_to = dispatch_store::dead_letters_admin::last_id(&env.pool).await?;
    let a = claim(&env.pool, &f, (0, up_to), 4).await?;
    let b = claim(&env.pool, &f, (0, up_to), 4).await?;
    assert_eq!(a.rows.len(), 4);
    assert_eq!(
        b.rows.len(),
        2,
        "the rows the first claim holds are skipped"
    );
    assert!(b.rows.iter().all(|r| a.rows.iter().all(|x| x.id != r.id)));
    // The processor can still index new dead letters while claims are held.
    tokio::time::timeout(
        Duration::from_secs(3),
        dispatch_store::dead_letters::insert(&env.pool, &dead_row(100)),
    )
    .await??;
    let a_ids: Vec<u64> = a.rows.iter().map(|r| r.id).collect();
    a.mark(&a_ids[..3], "rd-a").await?;
    b.release().await?;
    // A claim bounded by an earlier last id does not see the newer row.
    let c = claim(&env.pool, &f, (0, up_to), 10).await?;
    assert_eq!(c.rows.len(), 3);
    c.release().await?;
    // 7 rows - 3 marked: the 4th of `a` was released unmarked, `b` rolled back.
    assert_eq!(count_redrivable(&env.pool, &f).await?, 4);
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_redrive_never_chases_its_own_records_when_they_die_again() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut app = Admin::start(&env, |b| b).await?;
    let c = &mut app.client;
    let p = producer(&env)?;
    // No handler: each run dies at once (class unknown_type), also after a redrive.
    let tasks: Vec<Envelope> = (0..3)
        .map(|i| owned("acme", "nobody.handles", &format!("tail-{i}")))
        .collect();
    for t in &tasks {
        produce(&p, &env.topics(), t).await?;
    }
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id).collect();
    wait_all(&env.pool, &ids, TaskState::Dead, Duration::from_secs(30)).await?;
    let f = || filter("acme", "nobody.handles");
    for generation in 1..=2u32 {
        // Rate 2/s: batches of 2, a second apart, so the first batch's records die again
        // while the redrive is still claiming.
        let r = redrive_at(c, f(), false, 2).await?;
        assert_eq!((r.matched, r.redriven), (3, 3), "generation {generation}");
        let (pool, ids, client) = (&env.pool, &ids, c.clone());
        eventually(
            "the redriven tasks died again",
            Duration::from_secs(30),
            || {
                let mut client = client.clone();
                async move {
                    let s = states(pool, ids).await.ok()?;
                    let l = list(&mut client, f()).await.ok()?;
                    (s.values()
                        .all(|v| v.state == TaskState::Dead && v.generation == generation)
                        && l.total == 3 * (u64::from(generation) + 1))
                        .then_some(())
                }
            },
        )
        .await?;
    }
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
