//! Authentication and tenant isolation on every RPC, table-driven from the proto descriptors:
//! an RPC added to a `dispatch.v1` service fails [`every_rpc_rejects_bad_callers_and_hides_other_tenants`]
//! until it has a row in [`call`].
//!
//! Every RPC is called with no key, malformed and wrong keys (UNAUTHENTICATED), and as another
//! tenant: a tenant RPC hides the owner's task (or schedule); an AdminService RPC answers PERMISSION_DENIED to
//! any tenant key (the tenant's own or another's) and UNAUTHENTICATED to the rest, and serves
//! both admin keys of a rotation in progress.
//!
//! Over 400 lines because it is table-driven: `call` has one arm per RPC of every service (about
//! 240 lines), kept in one place so an RPC without a row fails; the owner and other-tenant checks
//! would move out first.

use dispatch_core::TaskId;
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_proto::v1::schedule_service_client::ScheduleServiceClient;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_testkit::auth::{KEY_ACME, KEY_ADMIN, KEY_ADMIN_NEXT, KEY_GLOBEX};
use dispatch_testkit::stack::Stack;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::support::{await_state, await_succeeded, spec};

/// What a caller puts in `authorization`.
#[derive(Debug, Clone)]
enum Auth {
    Missing,
    Header(String),
}

impl Auth {
    fn bearer(key: &str) -> Self {
        Self::Header(format!("Bearer {key}"))
    }
}

fn request<T>(msg: T, auth: &Auth) -> Request<T> {
    let mut r = Request::new(msg);
    if let Auth::Header(v) = auth
        && let Ok(v) = v.parse()
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// `acme`'s finished task that the other callers try to reach.
struct Fixture {
    task_id: String,
    business_key: String,
    idempotency_key: String,
    /// `acme`'s schedule (paused, firing once a year) and its id.
    schedule: String,
    schedule_id: String,
    /// `acme`'s workflow (one noop node), its idempotency key and id.
    workflow_key: String,
    workflow_id: String,
}

/// One client per service.
struct Clients {
    tasks: TaskServiceClient<Channel>,
    queries: TaskQueryServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    schedules: ScheduleServiceClient<Channel>,
}

impl Clients {
    async fn new(stack: &Stack) -> anyhow::Result<Self> {
        Ok(Self {
            tasks: stack.tasks().await?,
            queries: stack.queries().await?,
            admin: AdminServiceClient::new(
                dispatch_testkit::stack::channel(stack.processor.addr).await?,
            ),
            schedules: ScheduleServiceClient::new(
                dispatch_testkit::stack::channel(stack.gateway.addr).await?,
            ),
        })
    }
}

/// What an RPC answered, reduced to what the checks look at.
#[derive(Debug)]
enum Answer {
    Submitted {
        task_id: String,
        duplicate: bool,
    },
    Cancelled,
    Got(String),
    BatchGot {
        found: Vec<String>,
        not_found: Vec<String>,
    },
    Listed(Vec<(String, String)>),
    Watched(Option<String>),
    Admin,
    /// A schedule (its id) or a page of them.
    Schedule(String),
    Schedules(Vec<String>),
    Triggered,
    Deleted,
    /// A workflow's id (SubmitWorkflow, GetWorkflow).
    Workflow {
        workflow_id: String,
        duplicate: bool,
    },
    WorkflowCancelled,
}

/// `name`, paused, firing once a year: a schedule that never fires during the test.
fn schedule_spec(name: &str) -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        name: name.into(),
        timing: Some(pb::schedule_spec::Timing::Cron("0 0 0 1 1 *".into())),
        template: Some(spec("noop", b"")),
        paused: true,
        ..Default::default()
    }
}

fn schedule_id(s: Option<pb::Schedule>) -> Answer {
    Answer::Schedule(s.map(|s| s.schedule_id).unwrap_or_default())
}

/// Every `service/method` of the `dispatch.v1` package, from the embedded descriptors.
fn rpcs() -> anyhow::Result<Vec<(String, String)>> {
    let set = prost_types::FileDescriptorSet::decode(dispatch_proto::FILE_DESCRIPTOR_SET)?;
    let mut out = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "dispatch.v1") {
        for svc in &file.service {
            for m in &svc.method {
                out.push((
                    format!("{}.{}", file.package(), svc.name()),
                    m.name().to_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// The one-node workflow `acme` submitted with `key` (a repeat is a duplicate).
fn workflow_request(key: &str) -> pb::SubmitWorkflowRequest {
    pb::SubmitWorkflowRequest {
        nodes: vec![pb::WorkflowNode {
            name: "only".into(),
            task: Some(pb::TaskSpec {
                business_key: format!("wf-{key}"),
                ..spec("noop", b"")
            }),
            depends_on: Vec::new(),
        }],
        idempotency_key: key.into(),
    }
}

fn submitted(r: pb::SubmitTaskResponse) -> Answer {
    Answer::Submitted {
        task_id: r.task_id,
        duplicate: r.duplicate,
    }
}

/// Calls `service/method` as `auth` against the fixture. `None`: the table has no row for this
/// RPC (a new RPC that this test must learn about).
async fn call(
    c: &Clients,
    service: &str,
    method: &str,
    auth: &Auth,
    fx: &Fixture,
) -> Option<Result<Answer, Status>> {
    let (mut tasks, mut queries, mut admin) = (c.tasks.clone(), c.queries.clone(), c.admin.clone());
    let mut schedules = c.schedules.clone();
    let name = || fx.schedule.clone();
    let again = || pb::TaskSpec {
        business_key: fx.business_key.clone(),
        idempotency_key: fx.idempotency_key.clone(),
        ..spec("noop", b"")
    };
    let r = match (service, method) {
        ("dispatch.v1.TaskService", "SubmitTask") => tasks
            .submit_task(request(
                pb::SubmitTaskRequest {
                    task: Some(again()),
                },
                auth,
            ))
            .await
            .map(|r| submitted(r.into_inner())),
        ("dispatch.v1.TaskService", "SubmitTasks") => tasks
            .submit_tasks(request(
                pb::SubmitTasksRequest {
                    tasks: vec![again()],
                },
                auth,
            ))
            .await
            .and_then(|r| {
                match r
                    .into_inner()
                    .results
                    .into_iter()
                    .next()
                    .and_then(|r| r.outcome)
                {
                    Some(pb::submit_result::Outcome::Accepted(a)) => Ok(submitted(a)),
                    other => Err(Status::internal(format!("item not accepted: {other:?}"))),
                }
            }),
        ("dispatch.v1.TaskService", "CancelTask") => tasks
            .cancel_task(request(
                pb::CancelTaskRequest {
                    task_id: fx.task_id.clone(),
                    business_key: fx.business_key.clone(),
                    reason: "security test".into(),
                },
                auth,
            ))
            .await
            .map(|_| Answer::Cancelled),
        ("dispatch.v1.TaskService", "SubmitWorkflow") => tasks
            .submit_workflow(request(workflow_request(&fx.workflow_key), auth))
            .await
            .map(|r| {
                let r = r.into_inner();
                Answer::Workflow {
                    workflow_id: r.workflow_id,
                    duplicate: r.duplicate,
                }
            }),
        ("dispatch.v1.TaskService", "CancelWorkflow") => tasks
            .cancel_workflow(request(
                pb::CancelWorkflowRequest {
                    workflow_id: fx.workflow_id.clone(),
                    reason: "security test".into(),
                },
                auth,
            ))
            .await
            .map(|_| Answer::WorkflowCancelled),
        ("dispatch.v1.TaskQueryService", "GetWorkflow") => queries
            .get_workflow(request(
                pb::GetWorkflowRequest {
                    workflow_id: fx.workflow_id.clone(),
                },
                auth,
            ))
            .await
            .map(|r| Answer::Workflow {
                workflow_id: r
                    .into_inner()
                    .workflow
                    .map(|w| w.workflow_id)
                    .unwrap_or_default(),
                duplicate: false,
            }),
        ("dispatch.v1.TaskQueryService", "GetTask") => queries
            .get_task(request(
                pb::GetTaskRequest {
                    task_id: fx.task_id.clone(),
                    min_version: 0,
                },
                auth,
            ))
            .await
            .map(|r| Answer::Got(r.into_inner().task.map(|t| t.task_id).unwrap_or_default())),
        ("dispatch.v1.TaskQueryService", "BatchGetTasks") => queries
            .batch_get_tasks(request(
                pb::BatchGetTasksRequest {
                    task_ids: vec![fx.task_id.clone()],
                    ..Default::default()
                },
                auth,
            ))
            .await
            .map(|r| {
                let r = r.into_inner();
                Answer::BatchGot {
                    found: r.tasks.into_iter().map(|t| t.task_id).collect(),
                    not_found: r.not_found,
                }
            }),
        ("dispatch.v1.TaskQueryService", "ListTasks") => queries
            .list_tasks(request(
                pb::ListTasksRequest {
                    business_key: fx.business_key.clone(),
                    page_size: 500,
                    ..Default::default()
                },
                auth,
            ))
            .await
            .map(|r| {
                Answer::Listed(
                    r.into_inner()
                        .tasks
                        .into_iter()
                        .map(|t| (t.task_id, t.tenant))
                        .collect(),
                )
            }),
        ("dispatch.v1.TaskQueryService", "WatchTask") => {
            match queries
                .watch_task(request(
                    pb::WatchTaskRequest {
                        task_id: fx.task_id.clone(),
                        min_version: 0,
                    },
                    auth,
                ))
                .await
            {
                Ok(r) => r
                    .into_inner()
                    .message()
                    .await
                    .map(|e| Answer::Watched(e.map(|e| e.task_id))),
                Err(s) => Err(s),
            }
        }
        // The caller's own new schedule; every other RPC names acme's.
        ("dispatch.v1.ScheduleService", "CreateSchedule") => schedules
            .create_schedule(request(
                pb::CreateScheduleRequest {
                    schedule: Some(schedule_spec(&format!("{}-new", fx.schedule))),
                },
                auth,
            ))
            .await
            .map(|r| schedule_id(r.into_inner().schedule)),
        ("dispatch.v1.ScheduleService", "GetSchedule") => schedules
            .get_schedule(request(pb::GetScheduleRequest { name: name() }, auth))
            .await
            .map(|r| schedule_id(r.into_inner().schedule)),
        ("dispatch.v1.ScheduleService", "ListSchedules") => schedules
            .list_schedules(request(pb::ListSchedulesRequest::default(), auth))
            .await
            .map(|r| {
                Answer::Schedules(
                    r.into_inner()
                        .schedules
                        .into_iter()
                        .map(|s| s.schedule_id)
                        .collect(),
                )
            }),
        ("dispatch.v1.ScheduleService", "PauseSchedule") => schedules
            .pause_schedule(request(pb::PauseScheduleRequest { name: name() }, auth))
            .await
            .map(|r| schedule_id(r.into_inner().schedule)),
        ("dispatch.v1.ScheduleService", "ResumeSchedule") => schedules
            .resume_schedule(request(pb::ResumeScheduleRequest { name: name() }, auth))
            .await
            .map(|r| schedule_id(r.into_inner().schedule)),
        ("dispatch.v1.ScheduleService", "TriggerSchedule") => schedules
            .trigger_schedule(request(pb::TriggerScheduleRequest { name: name() }, auth))
            .await
            .map(|_| Answer::Triggered),
        ("dispatch.v1.ScheduleService", "DeleteSchedule") => schedules
            .delete_schedule(request(pb::DeleteScheduleRequest { name: name() }, auth))
            .await
            .map(|_| Answer::Deleted),
        ("dispatch.v1.AdminService", m) => {
            let r = match m {
                "ListDeadLetters" => admin
                    .list_dead_letters(request(pb::ListDeadLettersRequest::default(), auth))
                    .await
                    .map(|_| ()),
                "GetDeadLetter" => admin
                    .get_dead_letter(request(
                        pb::GetDeadLetterRequest {
                            task_id: fx.task_id.clone(),
                        },
                        auth,
                    ))
                    .await
                    .map(|_| ()),
                "RedriveDeadLetters" => admin
                    .redrive_dead_letters(request(
                        pb::RedriveDeadLettersRequest {
                            dry_run: true,
                            ..Default::default()
                        },
                        auth,
                    ))
                    .await
                    .map(|_| ()),
                "PurgeDeadLetters" => admin
                    .purge_dead_letters(request(
                        pb::PurgeDeadLettersRequest {
                            dry_run: true,
                            ..Default::default()
                        },
                        auth,
                    ))
                    .await
                    .map(|_| ()),
                "PauseConsumption" | "ResumeConsumption" => {
                    let req = request(
                        pb::PauseRequest {
                            target: Some(pb::pause_request::Target::TaskType(
                                "e2e.never-submitted".into(),
                            )),
                        },
                        auth,
                    );
                    if m == "PauseConsumption" {
                        admin.pause_consumption(req).await.map(|_| ())
                    } else {
                        admin.resume_consumption(req).await.map(|_| ())
                    }
                }
                "GetStats" => admin
                    .get_stats(request(pb::GetStatsRequest::default(), auth))
                    .await
                    .map(|_| ()),
                "ListOutbox" => admin
                    .list_outbox(request(pb::ListOutboxRequest::default(), auth))
                    .await
                    .map(|_| ()),
                "RequeueOutbox" => admin
                    .requeue_outbox(request(
                        pb::RequeueOutboxRequest {
                            all: true,
                            dry_run: true,
                            ..Default::default()
                        },
                        auth,
                    ))
                    .await
                    .map(|_| ()),
                _ => return None,
            };
            r.map(|()| Answer::Admin)
        }
        _ => return None,
    };
    Some(r)
}

/// Whether the processor serves AdminService yet (it is being built): an unimplemented service
/// answers UNIMPLEMENTED whatever the caller.
async fn admin_served(c: &Clients) -> bool {
    let r = c
        .admin
        .clone()
        .get_stats(request(pb::GetStatsRequest::default(), &Auth::Missing))
        .await;
    !matches!(r, Err(s) if s.code() == Code::Unimplemented)
}

/// What `globex` must see when it reaches for `acme`'s task.
fn check_other_tenant(rpc: &str, fx: &Fixture, r: Result<Answer, Status>) -> Result<(), String> {
    let bad = |r: &dyn std::fmt::Debug| Err(format!("{rpc} as another tenant: {r:?}"));
    match (rpc, r) {
        // Idempotency keys are per tenant: the same key names the caller's own task (new, or a
        // duplicate of the caller's earlier submit with that key), never the owner's.
        ("SubmitTask" | "SubmitTasks", Ok(Answer::Submitted { task_id, .. }))
            if task_id != fx.task_id
                && task_id
                    == TaskId::from_idempotency_key("globex", &fx.idempotency_key).to_string() =>
        {
            Ok(())
        }
        ("CancelTask" | "GetTask" | "WatchTask", Err(s)) if s.code() == Code::NotFound => Ok(()),
        // A workflow's idempotency key is per tenant too: another tenant's key names its own.
        ("SubmitWorkflow", Ok(Answer::Workflow { workflow_id, .. }))
            if *workflow_id
                == TaskId::workflow_from_idempotency_key("globex", &fx.workflow_key)
                    .to_string() =>
        {
            Ok(())
        }
        ("CancelWorkflow" | "GetWorkflow", Err(s)) if s.code() == Code::NotFound => Ok(()),
        // A schedule name is per tenant: another tenant creates its own, and never reaches
        // acme's (the owner deleted it before DeleteSchedule's other-tenant call: NOT_FOUND too).
        ("CreateSchedule", Ok(Answer::Schedule(id))) if !id.is_empty() && *id != fx.schedule_id => {
            Ok(())
        }
        (
            "GetSchedule" | "PauseSchedule" | "ResumeSchedule" | "TriggerSchedule"
            | "DeleteSchedule",
            Err(s),
        ) if s.code() == Code::NotFound => Ok(()),
        ("ListSchedules", Ok(Answer::Schedules(ids))) if !ids.contains(&fx.schedule_id) => Ok(()),
        ("BatchGetTasks", Ok(Answer::BatchGot { found, not_found }))
            if found.is_empty() && not_found == vec![fx.task_id.clone()] =>
        {
            Ok(())
        }
        ("ListTasks", Ok(Answer::Listed(tasks)))
            if tasks
                .iter()
                .all(|(id, tenant)| *id != fx.task_id && tenant == "globex") =>
        {
            Ok(())
        }
        (_, r) => bad(&r),
    }
}

/// What the owner sees: the positive control that makes the rejections above meaningful.
fn check_owner(rpc: &str, fx: &Fixture, r: Result<Answer, Status>) -> Result<(), String> {
    let ok = match (rpc, &r) {
        ("SubmitTask" | "SubmitTasks", Ok(Answer::Submitted { task_id, duplicate })) => {
            *duplicate && *task_id == fx.task_id
        }
        ("CancelTask", Ok(Answer::Cancelled)) => true,
        (
            "SubmitWorkflow",
            Ok(Answer::Workflow {
                workflow_id,
                duplicate,
            }),
        ) => *duplicate && *workflow_id == fx.workflow_id,
        ("GetWorkflow", Ok(Answer::Workflow { workflow_id, .. })) => *workflow_id == fx.workflow_id,
        ("CancelWorkflow", Ok(Answer::WorkflowCancelled)) => true,
        ("GetTask", Ok(Answer::Got(id))) => *id == fx.task_id,
        ("WatchTask", Ok(Answer::Watched(id))) => id.as_deref() == Some(fx.task_id.as_str()),
        ("BatchGetTasks", Ok(Answer::BatchGot { found, not_found })) => {
            *found == vec![fx.task_id.clone()] && not_found.is_empty()
        }
        ("ListTasks", Ok(Answer::Listed(tasks))) => tasks.iter().any(|(id, _)| *id == fx.task_id),
        ("CreateSchedule", Ok(Answer::Schedule(id))) => !id.is_empty() && *id != fx.schedule_id,
        ("GetSchedule" | "PauseSchedule" | "ResumeSchedule", Ok(Answer::Schedule(id))) => {
            *id == fx.schedule_id
        }
        ("ListSchedules", Ok(Answer::Schedules(ids))) => ids.contains(&fx.schedule_id),
        ("TriggerSchedule", Ok(Answer::Triggered)) | ("DeleteSchedule", Ok(Answer::Deleted)) => {
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{rpc} as the owner: {r:?}"))
    }
}

#[tokio::test]
async fn every_rpc_rejects_bad_callers_and_hides_other_tenants() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let idempotency_key = format!("idem-{}", uuid::Uuid::now_v7().simple());
    let s = pb::TaskSpec {
        idempotency_key: idempotency_key.clone(),
        ..spec("noop", b"")
    };
    let business_key = s.business_key.clone();
    let accepted = crate::support::submit(&stack, s).await?;
    await_succeeded(&stack, &accepted).await?;
    let clients = Clients::new(&stack).await?;
    let schedule = format!("sec-{}", uuid::Uuid::now_v7().simple());
    let created = clients
        .schedules
        .clone()
        .create_schedule(request(
            pb::CreateScheduleRequest {
                schedule: Some(schedule_spec(&schedule)),
            },
            &Auth::bearer(KEY_ACME),
        ))
        .await?
        .into_inner()
        .schedule
        .map(|s| s.schedule_id)
        .unwrap_or_default();
    let workflow_key = format!("wf-{}", uuid::Uuid::now_v7().simple());
    let workflow_id = clients
        .tasks
        .clone()
        .submit_workflow(request(
            workflow_request(&workflow_key),
            &Auth::bearer(KEY_ACME),
        ))
        .await?
        .into_inner()
        .workflow_id;
    let fx = Fixture {
        task_id: accepted.task_id,
        business_key,
        idempotency_key,
        schedule,
        schedule_id: created,
        workflow_key,
        workflow_id,
    };
    let admin_served = admin_served(&clients).await;
    if !admin_served {
        // AdminService is being added to the processor; until it is served its rows are
        // skipped (they still have to exist in `call`).
        eprintln!("note: the processor does not serve AdminService yet; its rows are skipped");
    }

    let unauthenticated = [
        ("no authorization", Auth::Missing),
        ("an unknown key", Auth::bearer("not-a-real-key")),
        ("an empty bearer", Auth::Header("Bearer ".into())),
        (
            "a tenant key without the scheme",
            Auth::Header(KEY_ACME.into()),
        ),
        (
            "a tenant key as Basic",
            Auth::Header(format!("Basic {KEY_ACME}")),
        ),
    ];
    let mut failures = Vec::new();
    let mut uncovered = Vec::new();
    let mut checked = 0;
    for (service, method) in rpcs()? {
        let is_admin = service == "dispatch.v1.AdminService";
        if is_admin && !admin_served {
            if call(&clients, &service, &method, &Auth::Missing, &fx)
                .await
                .is_none()
            {
                uncovered.push(format!("{service}/{method}"));
            }
            continue;
        }
        let mut cases: Vec<(&str, Auth, Code)> = unauthenticated
            .iter()
            .map(|(what, auth)| (*what, auth.clone(), Code::Unauthenticated))
            .collect();
        if is_admin {
            // A tenant key is a known caller, but not an admin.
            cases.push((
                "a tenant key",
                Auth::bearer(KEY_ACME),
                Code::PermissionDenied,
            ));
            cases.push((
                "another tenant's key",
                Auth::bearer(KEY_GLOBEX),
                Code::PermissionDenied,
            ));
        } else {
            // An admin key is not a tenant key.
            for key in [KEY_ADMIN, KEY_ADMIN_NEXT] {
                cases.push(("an admin key", Auth::bearer(key), Code::Unauthenticated));
            }
        }
        for (what, auth, want) in &cases {
            let Some(r) = call(&clients, &service, &method, auth, &fx).await else {
                uncovered.push(format!("{service}/{method}"));
                break;
            };
            checked += 1;
            match r {
                Err(s) if s.code() == *want => {}
                other => failures.push(format!(
                    "{method} with {what}: want {want:?}, got {other:?}"
                )),
            }
        }
        if is_admin {
            // Both admin keys of an overlapping rotation are served (whatever the RPC answers
            // next, e.g. NOT_FOUND for the fixture's task, it is past authentication).
            for key in [KEY_ADMIN, KEY_ADMIN_NEXT] {
                if let Some(r) = call(&clients, &service, &method, &Auth::bearer(key), &fx).await {
                    checked += 1;
                    if let Err(s) = &r
                        && matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
                    {
                        failures.push(format!("{method} with an admin key: {s:?}"));
                    }
                }
            }
            continue;
        }
        let owner = call(&clients, &service, &method, &Auth::bearer(KEY_ACME), &fx).await;
        let other = call(&clients, &service, &method, &Auth::bearer(KEY_GLOBEX), &fx).await;
        if let (Some(owner), Some(other)) = (owner, other) {
            checked += 2;
            failures.extend(check_owner(&method, &fx, owner).err());
            failures.extend(check_other_tenant(&method, &fx, other).err());
        }
    }
    assert!(
        uncovered.is_empty(),
        "RPCs without a row in the security table: {uncovered:?}"
    );
    assert!(
        failures.is_empty(),
        "security table failures:\n{}",
        failures.join("\n")
    );
    assert!(checked >= 7 * 9 + 9 * 9, "only {checked} calls checked");
    // acme's task is untouched by globex's cancel.
    let after = await_state(&stack, KEY_ACME, &fx.task_id, 0, pb::TaskState::Succeeded).await?;
    assert_eq!(after.tenant, "acme");
    stack.stop().await
}

/// `auth.mode = "none"` stops start-up of every service that has a listener beyond loopback,
/// naming the listener and `auth.allow_unauthenticated`; with `allow_unauthenticated = true` the
/// service starts, serves callers without a key, and exports `dispatch_auth_unauthenticated 1`.
#[tokio::test]
async fn auth_mode_none_refuses_listeners_beyond_loopback() -> anyhow::Result<()> {
    use dispatch_runtime::server::auth::AuthSettings;
    let env = dispatch_testkit::TestEnv::new().await?;
    let s = dispatch_testkit::stack::StackSettings::for_env(&env);
    let none = AuthSettings {
        mode: "none".into(),
        dev_tenant: "acme".into(),
        ..AuthSettings::default()
    };
    let any: std::net::SocketAddr = "0.0.0.0:0".parse()?;
    let mut g = s.gateway.clone();
    g.auth = none.clone();
    g.admin.listen = any;
    let mut p = s.processor.clone();
    p.auth = none.clone();
    p.grpc.listen = any;
    let mut r = s.reader.clone();
    r.auth = none.clone();
    r.admin.listen = any;
    let refused = [
        (
            "gateway",
            "admin.listen",
            dispatch_gateway::App::build(g).await.err(),
        ),
        (
            "processor",
            "grpc.listen",
            dispatch_processor::App::build(p).await.err(),
        ),
        (
            "reader",
            "admin.listen",
            dispatch_reader::App::build(r).await.err(),
        ),
    ];
    for (service, listener, err) in refused {
        let err = format!(
            "{:#}",
            err.ok_or_else(|| anyhow::anyhow!("{service} started"))?
        );
        assert!(
            err.contains(&format!("{listener} = 0.0.0.0:"))
                && err.contains("auth.allow_unauthenticated"),
            "{service}: {err}"
        );
    }

    // Allowed explicitly: it starts and serves without a key, and says so in a gauge.
    let mut g = s.gateway.clone();
    g.auth = AuthSettings {
        allow_unauthenticated: true,
        ..none
    };
    g.grpc.listen = any;
    let gateway = dispatch_testkit::stack::Gateway::start(g).await?;
    let mut tasks = TaskServiceClient::new(
        dispatch_testkit::stack::channel(([127, 0, 0, 1], gateway.addr.port()).into()).await?,
    );
    let r = tasks
        .submit_task(request(
            pb::SubmitTaskRequest {
                task: Some(spec("noop", b"")),
            },
            &Auth::Missing,
        ))
        .await;
    let metrics = dispatch_runtime::metrics::render();
    gateway.stop().await?;
    env.cleanup().await;
    assert!(r.is_ok(), "an unauthenticated submit: {r:?}");
    assert!(
        metrics.contains("dispatch_auth_unauthenticated 1"),
        "the gauge:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("unauthenticated"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}
