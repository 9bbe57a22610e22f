//! ScheduleService through a running gateway: every RPC's bad input (field details, nothing
//! stored), a name taken, tenant isolation, and the life of a schedule (create, get, list, pause,
//! resume, trigger, delete), and a store that cannot answer.
//!
//! Over 400 lines because the bad-input test covers every field of every RPC in one table (about
//! 240 lines) and the lifecycle test walks one schedule through every RPC; the bad-input table
//! would move to a file of its own first.

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::schedule_service_client::ScheduleServiceClient;
use dispatch_testkit::TestEnv;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::{Gateway, KEY_ACME, KEY_GLOBEX, authed, bad_fields, mysql_down, settings};

fn spec(name: &str) -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        name: name.into(),
        timing: Some(pb::schedule_spec::Timing::Cron("0 */5 * * * *".into())),
        time_zone: "Europe/Berlin".into(),
        template: Some(pb::TaskSpec {
            business_key: "report".into(),
            task_type: "noop".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn create(s: pb::ScheduleSpec, key: &str) -> tonic::Request<pb::CreateScheduleRequest> {
    authed(pb::CreateScheduleRequest { schedule: Some(s) }, key)
}

/// The request of an RPC that names one schedule, and nothing else.
trait ByName {
    fn named(name: String) -> Self;
}

macro_rules! by_name {
    ($($request:ident),*) => {
        $(impl ByName for pb::$request {
            fn named(name: String) -> Self {
                Self { name }
            }
        })*
    };
}
by_name!(
    GetScheduleRequest,
    PauseScheduleRequest,
    ResumeScheduleRequest,
    TriggerScheduleRequest,
    DeleteScheduleRequest
);

/// The request naming schedule `name`, with `key`; its type is the RPC's it is passed to.
fn named<T: ByName>(name: &str, key: &str) -> tonic::Request<T> {
    authed(T::named(name.into()), key)
}

async fn rows(env: &TestEnv) -> anyhow::Result<(i64, i64)> {
    let s: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schedules")
        .fetch_one(&env.pool)
        .await?;
    let t: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(&env.pool)
        .await?;
    Ok((s, t))
}

async fn client(gw: &Gateway) -> anyhow::Result<ScheduleServiceClient<Channel>> {
    Ok(ScheduleServiceClient::new(gw.channel().await?))
}

#[tokio::test]
async fn bad_input_to_every_rpc_names_the_field_and_stores_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut c = client(&gw).await?;

    // CreateSchedule: (what is wrong, the spec, the fields named).
    let template = |edit: fn(&mut pb::TaskSpec)| {
        let mut s = spec("t");
        if let Some(t) = s.template.as_mut() {
            edit(t);
        }
        s
    };
    let cases: Vec<(&str, pb::ScheduleSpec, Vec<&str>)> = vec![
        (
            "invalid cron",
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Cron("61 * * * * *".into())),
                ..spec("a")
            },
            vec!["schedule.cron"],
        ),
        (
            "cron that never fires",
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::Cron("0 0 0 30 2 *".into())),
                ..spec("a")
            },
            vec!["schedule.cron"],
        ),
        (
            "unknown time zone",
            pb::ScheduleSpec {
                time_zone: "Mars/Olympus".into(),
                ..spec("a")
            },
            vec!["schedule.time_zone"],
        ),
        (
            "no timing",
            pb::ScheduleSpec {
                timing: None,
                ..spec("a")
            },
            vec!["schedule.cron"],
        ),
        (
            "interval below 1 s",
            pb::ScheduleSpec {
                timing: Some(pb::schedule_spec::Timing::IntervalMs(500)),
                ..spec("a")
            },
            vec!["schedule.interval_ms"],
        ),
        ("bad name", spec("not a name"), vec!["schedule.name"]),
        ("empty name", spec(""), vec!["schedule.name"]),
        (
            "catch-up bound",
            pb::ScheduleSpec {
                catchup_policy: pb::CatchupPolicy::All as i32,
                catchup_limit: 1_000,
                ..spec("a")
            },
            vec!["schedule.catchup_limit"],
        ),
        (
            "jitter",
            pb::ScheduleSpec {
                jitter_ms: 3_600_001,
                ..spec("a")
            },
            vec!["schedule.jitter_ms"],
        ),
        (
            "unknown policies",
            pb::ScheduleSpec {
                overlap_policy: 7,
                catchup_policy: 9,
                ..spec("a")
            },
            vec!["schedule.overlap_policy", "schedule.catchup_policy"],
        ),
        (
            "no template",
            pb::ScheduleSpec {
                template: None,
                ..spec("a")
            },
            vec!["schedule.template"],
        ),
        (
            "template fields each fire sets",
            template(|t| {
                t.idempotency_key = "k".into();
                t.run_at = Some(dispatch_proto::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                });
            }),
            vec![
                "schedule.template.run_at",
                "schedule.template.idempotency_key",
            ],
        ),
        (
            "invalid template",
            template(|t| {
                t.task_type = "Bad Type".into();
                t.business_key = String::new();
                t.timeout_ms = u32::MAX;
            }),
            vec![
                "schedule.template.business_key",
                "schedule.template.task_type",
                "schedule.template.timeout_ms",
            ],
        ),
    ];
    for (what, s, fields) in cases {
        let e = c
            .create_schedule(create(s, KEY_ACME))
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert_eq!(bad_fields(&e), fields, "{what}");
    }
    let e = c
        .create_schedule(authed(
            pb::CreateScheduleRequest { schedule: None },
            KEY_ACME,
        ))
        .await
        .expect_err("no schedule");
    assert_eq!(bad_fields(&e), ["schedule"]);
    assert_eq!(rows(&env).await?, (0, 0), "nothing stored");

    // The RPCs by name: a bad name is INVALID_ARGUMENT naming `name`; an unknown one NOT_FOUND.
    for name in ["has space", ""] {
        let errs = [
            c.get_schedule(named(name, KEY_ACME)).await.map(|_| ()),
            c.pause_schedule(named(name, KEY_ACME)).await.map(|_| ()),
            c.resume_schedule(named(name, KEY_ACME)).await.map(|_| ()),
            c.trigger_schedule(named(name, KEY_ACME)).await.map(|_| ()),
            c.delete_schedule(named(name, KEY_ACME)).await.map(|_| ()),
        ];
        for (i, e) in errs.into_iter().enumerate() {
            let e = e.expect_err("bad name");
            assert_eq!(e.code(), Code::InvalidArgument, "rpc {i} {name:?}");
            assert_eq!(bad_fields(&e), ["name"], "rpc {i}");
        }
    }
    let e = c
        .trigger_schedule(named("nope", KEY_ACME))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    // ListSchedules.
    let e = c
        .list_schedules(authed(
            pb::ListSchedulesRequest {
                page_size: 5_000,
                page_token: "has space".into(),
            },
            KEY_ACME,
        ))
        .await
        .expect_err("bad page");
    assert_eq!(bad_fields(&e), ["page_size", "page_token"]);
    // No key.
    let e = c
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .expect_err("no key");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(rows(&env).await?, (0, 0), "nothing stored");

    // A name taken: ALREADY_EXISTS naming schedule.name; the first schedule is unchanged.
    let first = c
        .create_schedule(create(spec("nightly"), KEY_ACME))
        .await?
        .into_inner()
        .schedule
        .expect("schedule");
    let other = pb::ScheduleSpec {
        timing: Some(pb::schedule_spec::Timing::IntervalMs(60_000)),
        ..spec("nightly")
    };
    let e = c
        .create_schedule(create(other, KEY_ACME))
        .await
        .expect_err("taken");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(bad_fields(&e), ["schedule.name"]);
    assert_eq!(
        e.get_details_error_info().map(|i| i.reason),
        Some("SCHEDULE_NAME_TAKEN".to_owned())
    );
    let got = c
        .get_schedule(named("nightly", KEY_ACME))
        .await?
        .into_inner()
        .schedule;
    assert_eq!(got.as_ref(), Some(&first));
    // Another tenant may use the name; it cannot see this one.
    c.create_schedule(create(spec("nightly"), KEY_GLOBEX))
        .await?;
    let theirs = c
        .get_schedule(named("nightly", KEY_GLOBEX))
        .await?
        .into_inner()
        .schedule
        .expect("schedule");
    assert_ne!(theirs.schedule_id, first.schedule_id);
    assert_eq!(rows(&env).await?, (2, 0));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_schedule_is_created_listed_paused_resumed_triggered_and_deleted() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut c = client(&gw).await?;
    for name in ["b-every-minute", "a-nightly", "c-paused"] {
        let mut s = spec(name);
        if name == "b-every-minute" {
            s.timing = Some(pb::schedule_spec::Timing::IntervalMs(60_000));
            s.overlap_policy = pb::OverlapPolicy::Allow as i32;
            s.catchup_policy = pb::CatchupPolicy::All as i32;
            s.catchup_limit = 5;
            s.jitter_ms = 1_000;
        }
        s.paused = name == "c-paused";
        let got = c
            .create_schedule(create(s.clone(), KEY_ACME))
            .await?
            .into_inner()
            .schedule
            .expect("schedule");
        let mut want = s;
        if want.overlap_policy == 0 {
            want.overlap_policy = pb::OverlapPolicy::Skip as i32;
        }
        if want.catchup_policy == 0 {
            want.catchup_policy = pb::CatchupPolicy::One as i32;
            want.catchup_limit = 10;
        }
        assert_eq!(
            got.spec,
            Some(want),
            "{name}: stored as given, defaults filled"
        );
        assert!(got.next_fire_at.is_some());
    }
    // Name order, in pages.
    let page = c
        .list_schedules(authed(
            pb::ListSchedulesRequest {
                page_size: 2,
                page_token: String::new(),
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    let names = |p: &pb::ListSchedulesResponse| {
        p.schedules
            .iter()
            .filter_map(|s| s.spec.as_ref().map(|s| s.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&page), ["a-nightly", "b-every-minute"]);
    let rest = c
        .list_schedules(authed(
            pb::ListSchedulesRequest {
                page_size: 2,
                page_token: page.next_page_token.clone(),
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    assert_eq!(names(&rest), ["c-paused"]);
    assert!(rest.next_page_token.is_empty());
    let theirs = c
        .list_schedules(authed(pb::ListSchedulesRequest::default(), KEY_GLOBEX))
        .await?
        .into_inner();
    assert!(theirs.schedules.is_empty(), "another tenant sees none");

    // Pause and resume.
    let paused = c
        .pause_schedule(named("a-nightly", KEY_ACME))
        .await?
        .into_inner()
        .schedule
        .expect("schedule");
    assert!(paused.spec.as_ref().is_some_and(|s| s.paused));
    let resumed = c
        .resume_schedule(named("c-paused", KEY_ACME))
        .await?
        .into_inner()
        .schedule
        .expect("schedule");
    assert!(resumed.spec.as_ref().is_some_and(|s| !s.paused));
    assert!(resumed.version > 1);

    // Trigger: a SCHEDULED task of the template with the fire's key, also while paused.
    let t = c
        .trigger_schedule(named("a-nightly", KEY_ACME))
        .await?
        .into_inner();
    let (state, key, ty, tenant): (String, String, String, String) = sqlx::query_as(
        "SELECT state, idempotency_key, task_type, tenant FROM tasks WHERE task_id = ?",
    )
    .bind(
        dispatch_core::TaskId::parse(&t.task_id)?
            .as_bytes()
            .as_slice(),
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(
        (state.as_str(), ty.as_str(), tenant.as_str()),
        ("scheduled", "noop", "acme")
    );
    assert!(
        key.starts_with("schedule:") && key.ends_with(":trigger"),
        "{key}"
    );
    let after = c
        .get_schedule(named("a-nightly", KEY_ACME))
        .await?
        .into_inner()
        .schedule
        .expect("schedule");
    assert_eq!(after.last_task_id, t.task_id);
    assert_eq!(after.fires, 1);
    // Another tenant cannot trigger, pause or delete it.
    let e = c
        .trigger_schedule(named("a-nightly", KEY_GLOBEX))
        .await
        .expect_err("not theirs");
    assert_eq!(e.code(), Code::NotFound);

    // Delete: gone; its task stays.
    c.delete_schedule(named("a-nightly", KEY_ACME)).await?;
    let e = c
        .get_schedule(named("a-nightly", KEY_ACME))
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_schedule(named("a-nightly", KEY_ACME))
        .await
        .expect_err("deleted twice");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(rows(&env).await?, (2, 1));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// With MySQL unreachable every RPC that reads or writes the store is UNAVAILABLE with the
/// runtime's generic message: nothing of the driver's error (host, port, pool state) reaches the
/// caller.
#[tokio::test]
async fn a_failing_store_is_unavailable_without_its_detail() -> anyhow::Result<()> {
    use dispatch_runtime::server::status::STORE_UNAVAILABLE;
    let env = TestEnv::new().await?;
    let s = mysql_down(settings(&env));
    let gw = Gateway::spawn(s).await?;
    let mut c = client(&gw).await?;
    let errors = [
        c.create_schedule(create(spec("nightly"), KEY_ACME))
            .await
            .err(),
        c.get_schedule(named("nightly", KEY_ACME)).await.err(),
        c.list_schedules(authed(pb::ListSchedulesRequest::default(), KEY_ACME))
            .await
            .err(),
        c.pause_schedule(named("nightly", KEY_ACME)).await.err(),
        c.trigger_schedule(named("nightly", KEY_ACME)).await.err(),
        c.delete_schedule(named("nightly", KEY_ACME)).await.err(),
    ];
    for (i, e) in errors.into_iter().enumerate() {
        let e = e.unwrap_or_else(|| panic!("call {i} succeeded without a store"));
        assert_eq!(e.code(), Code::Unavailable, "call {i}: {e:?}");
        assert_eq!(e.message(), STORE_UNAVAILABLE, "call {i}: {e:?}");
        assert!(!format!("{e:?}").contains("127.0.0.1"), "call {i}: {e:?}");
    }
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
