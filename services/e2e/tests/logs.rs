//! No secret and no payload reaches the logs.
//!
//! Its own test binary, because it owns the process-wide `tracing` subscriber: every log line
//! the three services write while the test drives them (at `trace` for dispatch's own crates,
//! `debug` for sqlx, `info` for the rest) is captured into a buffer through the services' own
//! JSON layer (`telemetry::json_layer`), which carries the event's fields and every enclosing
//! span's, so a value recorded anywhere in a span or event is scanned, and every line is
//! checked as a log pipeline would read it (RFC 3339 timestamp, level, target, message).
//!
//! The test submits tasks whose payloads carry a marker (succeeding, retried, dead, invalid,
//! in a batch), reads them back (Get, BatchGet, List, Watch), calls with a wrong key and with
//! another tenant's key; then it scans the capture for the marker (as text, as a Rust
//! byte-slice `Debug` and as hex), the API keys and the database credentials.
//!
//! Over 400 lines because both tests must live in this binary, which owns the process-wide
//! subscriber, and share the capture and `drive` (every RPC the marker goes through, about 150
//! lines); the audit-log test would be the first to get a binary of its own.

use std::sync::OnceLock;
use std::time::Duration;

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_testkit::auth::{
    KEY_ACME, KEY_ADMIN, KEY_ADMIN_ID, KEY_ADMIN_NEXT, KEY_ADMIN_NEXT_ID, KEY_GLOBEX, authed,
};
use dispatch_testkit::stack::{Stack, StackSettings};
use dispatch_testkit::{LogCapture, TestEnv, eventually};
use secrecy::ExposeSecret;
use tokio_stream::StreamExt;
use tonic::Code;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the capturing subscriber (once; the tests of this binary share it, each looking for
/// its own markers).
fn capture() -> LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let c = LogCapture::default();
            let sink = {
                let c = c.clone();
                move || c.clone()
            };
            let filter = tracing_subscriber::EnvFilter::new(
                "info,dispatch_gateway=trace,dispatch_processor=trace,dispatch_reader=trace,\
                 dispatch_runtime=trace,dispatch_store=trace,dispatch_core=trace,sqlx=debug",
            );
            let _ = tracing_subscriber::registry()
                .with(dispatch_runtime::telemetry::json_layer(sink).with_filter(filter))
                .try_init();
            c
        })
        .clone()
}

/// Drives every path that handles a payload or a key.
async fn drive(stack: &Stack, marker: &str, wrong_key: &str) -> anyhow::Result<()> {
    let mut tasks = stack.tasks().await?;
    let mut queries = stack.queries().await?;
    let spec = |task_type: &str, payload: String| pb::TaskSpec {
        business_key: format!("order-{marker}"),
        task_type: task_type.into(),
        payload: payload.into_bytes(),
        retry_policy: Some(pb::RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 50,
            max_backoff_ms: 100,
        }),
        ..Default::default()
    };
    let plan = |extra: &str| format!("{{\"note\": \"{marker}\"{extra}}}");
    let specs = [
        spec("noop", marker.to_owned()),
        spec("simulate", plan(", \"fail_attempts\": 1")),
        spec(
            "simulate",
            plan(", \"fail_attempts\": 1, \"permanent\": true"),
        ),
        // Not a plan: the simulate handler fails it permanently, quoting its parse error.
        spec("simulate", format!("not json {marker}")),
    ];
    let mut ids = Vec::new();
    for s in specs {
        let r = tasks
            .submit_task(authed(pb::SubmitTaskRequest { task: Some(s) }, KEY_ACME))
            .await?
            .into_inner();
        ids.push(r.task_id);
    }
    let batch = tasks
        .submit_tasks(authed(
            pb::SubmitTasksRequest {
                tasks: vec![spec("noop", marker.to_owned()), spec("", marker.to_owned())],
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    assert_eq!(batch.results.len(), 2);
    for r in batch.results {
        if let Some(pb::submit_result::Outcome::Accepted(a)) = r.outcome {
            ids.push(a.task_id);
        }
    }
    // Invalid, unauthenticated, another tenant's.
    let invalid = tasks
        .submit_task(authed(
            pb::SubmitTaskRequest {
                task: Some(spec("bad type with spaces", marker.to_owned())),
            },
            KEY_ACME,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let unauthenticated = tasks
        .submit_task(authed(
            pb::SubmitTaskRequest {
                task: Some(spec("noop", marker.to_owned())),
            },
            wrong_key,
        ))
        .await
        .expect_err("unauthenticated");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let hidden = queries
        .get_task(authed(
            pb::GetTaskRequest {
                task_id: ids[0].clone(),
                min_version: 0,
            },
            KEY_GLOBEX,
        ))
        .await
        .expect_err("another tenant's");
    assert_eq!(hidden.code(), Code::NotFound);

    // Every task finishes; reading them back returns the payloads (which must not be logged).
    let q = queries.clone();
    let finished = eventually("all tasks terminal", Duration::from_secs(45), || {
        let (mut q, ids) = (q.clone(), ids.clone());
        async move {
            let r = q
                .batch_get_tasks(authed(
                    pb::BatchGetTasksRequest {
                        task_ids: ids,
                        view: pb::TaskView::Full as i32,
                    },
                    KEY_ACME,
                ))
                .await
                .ok()?
                .into_inner();
            let done = r.tasks.iter().all(|t| {
                [pb::TaskState::Succeeded, pb::TaskState::Dead]
                    .iter()
                    .any(|s| *s as i32 == t.state)
            });
            (r.not_found.is_empty() && done).then_some(r.tasks)
        }
    })
    .await?;
    assert!(
        finished
            .iter()
            .any(|t| t.state == pb::TaskState::Dead as i32)
    );
    assert!(finished.iter().all(|t| {
        t.payload
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    }));
    queries
        .list_tasks(authed(
            pb::ListTasksRequest {
                business_key: format!("order-{marker}"),
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await?;
    let mut watch = queries
        .watch_task(authed(
            pb::WatchTaskRequest {
                task_id: ids[0].clone(),
                min_version: 0,
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    while watch.next().await.transpose()?.is_some() {}
    // Dead letters (with their payloads) through AdminService, where the processor serves it.
    let mut admin =
        AdminServiceClient::new(dispatch_testkit::stack::channel(stack.processor.addr).await?);
    let _ = admin
        .list_dead_letters(authed(pb::ListDeadLettersRequest::default(), KEY_ADMIN))
        .await;
    let _ = admin
        .list_dead_letters(authed(pb::ListDeadLettersRequest::default(), KEY_ACME))
        .await;
    Ok(())
}

#[tokio::test]
async fn logs_carry_no_secrets_and_no_payloads() -> anyhow::Result<()> {
    let capture = capture();
    let env = TestEnv::new().await?;
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let marker = format!("PAYLOADMARKER{}", &unique[16..]);
    let wrong_key = format!("wrongkey-{}", &unique[12..]);
    // The local stack's password is `dispatch`, a word in every target name, so the test
    // looks for the URL's credentials (`user:password@`) and the whole URL instead. (The test
    // user cannot make a MySQL user with a password of its own: it may not GRANT.)
    let db_url = env.db.url.expose_secret().to_owned();
    let credentials = db_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| format!("{userinfo}@"))
        .ok_or_else(|| anyhow::anyhow!("the test database url has no credentials"))?;

    let settings = StackSettings::for_env(&env);
    let stack = Stack::start_on(env, settings).await?;
    let driven = drive(&stack, &marker, &wrong_key).await;
    let stopped = stack.stop().await;
    driven?;
    stopped?;

    let text = capture.text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() > 10,
        "too little was logged to judge: {} lines",
        lines.len()
    );
    let mut targets = std::collections::BTreeSet::new();
    let mut with_message = 0;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {line}"))?;
        assert!(
            v.get("level").is_some_and(|l| l.is_string()),
            "no level: {line}"
        );
        let timestamp = v["timestamp"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
            "timestamp is not RFC 3339: {line}"
        );
        with_message += usize::from(v["fields"]["message"].is_string());
        if let Some(t) = v.get("target").and_then(|t| t.as_str()) {
            targets.insert(t.split("::").next().unwrap_or(t).to_owned());
        }
    }
    assert!(with_message > 0, "no line has a message");
    for service in ["dispatch_gateway", "dispatch_processor", "dispatch_reader"] {
        assert!(
            targets.contains(service),
            "nothing from {service}: {targets:?}"
        );
    }

    let debug_bytes = format!("{:?}", marker.as_bytes());
    let debug_bytes = debug_bytes.trim_start_matches('[').trim_end_matches(']');
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    let forbidden = [
        ("the payload marker", marker.as_str()),
        ("the payload marker as Debug bytes", debug_bytes),
        ("the payload marker as hex", hex.as_str()),
        ("acme's api key", KEY_ACME),
        ("globex's api key", KEY_GLOBEX),
        ("the admin key", KEY_ADMIN),
        ("the next admin key", KEY_ADMIN_NEXT),
        ("the wrong api key", wrong_key.as_str()),
        ("the database credentials", credentials.as_str()),
        ("the database url", db_url.as_str()),
    ];
    for (what, needle) in forbidden {
        let hits: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains(needle))
            .take(3)
            .collect();
        assert!(hits.is_empty(), "{what} appears in the logs:\n{hits:#?}");
    }
    Ok(())
}

/// Every AdminService action that changes something is logged (target `dispatch_audit`) with
/// the id of the admin key that made it (never the key) and the filters it used; two admin keys
/// of an overlapping rotation each log under their own id.
#[tokio::test]
async fn admin_actions_are_audited_with_key_id_and_filters() -> anyhow::Result<()> {
    let capture = capture();
    let env = TestEnv::new().await?;
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let task_type = format!("audit.t{}", &unique[20..]);
    let settings = StackSettings::for_env(&env);
    let stack = Stack::start_on(env, settings).await?;
    let driven = async {
        let mut admin =
            AdminServiceClient::new(dispatch_testkit::stack::channel(stack.processor.addr).await?);
        let filter = || {
            Some(pb::DeadLetterFilter {
                task_type: task_type.clone(),
                ..Default::default()
            })
        };
        admin
            .redrive_dead_letters(authed(
                pb::RedriveDeadLettersRequest {
                    filter: filter(),
                    dry_run: true,
                    ..Default::default()
                },
                KEY_ADMIN,
            ))
            .await?;
        admin
            .purge_dead_letters(authed(
                pb::PurgeDeadLettersRequest {
                    filter: filter(),
                    dry_run: true,
                },
                KEY_ADMIN_NEXT,
            ))
            .await?;
        let target = || pb::PauseRequest {
            target: Some(pb::pause_request::Target::TaskType(task_type.clone())),
        };
        admin.pause_consumption(authed(target(), KEY_ADMIN)).await?;
        admin
            .resume_consumption(authed(target(), KEY_ADMIN_NEXT))
            .await?;
        admin
            .requeue_outbox(authed(
                pb::RequeueOutboxRequest {
                    ids: vec![4_242_424_242],
                    dry_run: true,
                    ..Default::default()
                },
                KEY_ADMIN,
            ))
            .await?;
        anyhow::Ok(())
    }
    .await;
    let stopped = stack.stop().await;
    driven?;
    stopped?;

    let audit: Vec<serde_json::Value> = capture
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "dispatch_audit")
        .collect();
    let find = |action: &str, needle: &str| {
        audit.iter().find(|v| {
            v["fields"]["action"] == action
                && v["fields"]["filters"]
                    .as_str()
                    .is_some_and(|f| f.contains(needle))
        })
    };
    for (action, needle, key_id) in [
        ("RedriveDeadLetters", task_type.as_str(), KEY_ADMIN_ID),
        ("PurgeDeadLetters", task_type.as_str(), KEY_ADMIN_NEXT_ID),
        ("PauseConsumption", task_type.as_str(), KEY_ADMIN_ID),
        ("ResumeConsumption", task_type.as_str(), KEY_ADMIN_NEXT_ID),
        ("RequeueOutbox", "4242424242", KEY_ADMIN_ID),
    ] {
        let Some(line) = find(action, needle) else {
            panic!("no audit line for {action} with {needle:?}:\n{audit:#?}");
        };
        assert_eq!(line["fields"]["key_id"], key_id, "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["fields"]["outcome"].is_string(), "{line}");
        let text = line.to_string();
        for key in [KEY_ADMIN, KEY_ADMIN_NEXT] {
            assert!(!text.contains(key), "an admin key is logged: {line}");
        }
    }
    Ok(())
}
