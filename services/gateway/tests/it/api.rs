//! Auth, validation, rate limits, health, reflection, metrics.
//!
//! Over 400 lines because it holds the gateway's API-surface tests (auth, validation, limits,
//! health, reflection), each short but for validation; the two validation tests (every field's
//! error, the per-task limits: about 240 lines) would move to a `validation.rs` first.

use std::time::Duration;

use chrono::Utc;
use dispatch_core::time::to_proto;
use dispatch_gateway::settings::LimitSettings;
use dispatch_proto::v1 as pb;
use dispatch_runtime::ratelimit::retry_after_ms;
use dispatch_testkit::{TestEnv, eventually};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn missing_or_wrong_keys_are_unauthenticated() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let err = client
        .submit_task(pb::SubmitTaskRequest {
            task: Some(spec("k", b"x")),
        })
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .submit_task(submit(spec("k", b"x"), "not-a-key"))
        .await
        .expect_err("wrong key");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .submit_tasks(authed(
            pb::SubmitTasksRequest {
                tasks: vec![spec("k", b"x")],
            },
            "not-a-key",
        ))
        .await
        .expect_err("wrong key");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .cancel_task(pb::CancelTaskRequest {
            task_id: dispatch_core::TaskId::new().to_string(),
            ..Default::default()
        })
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn every_validation_error_names_its_field() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let now = Utc::now();
    type Edit = Box<dyn Fn(&mut pb::TaskSpec)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("task.business_key", Box::new(|s| s.business_key.clear())),
        (
            "task.business_key",
            Box::new(|s| s.business_key = "k".repeat(257)),
        ),
        (
            "task.business_key",
            Box::new(|s| s.business_key = "a\u{7}b".into()),
        ),
        (
            "task.task_type",
            Box::new(|s| s.task_type = "Email Send!".into()),
        ),
        ("task.task_type", Box::new(|s| s.task_type.clear())),
        (
            "task.payload",
            Box::new(|s| s.payload = vec![0; 256 * 1024 + 1]),
        ),
        ("task.priority", Box::new(|s| s.priority = 42)),
        (
            "task.idempotency_key",
            Box::new(|s| s.idempotency_key = "has space".into()),
        ),
        (
            "task.run_at",
            Box::new(move |s| s.run_at = Some(to_proto(now - chrono::Duration::hours(1)))),
        ),
        (
            "task.deadline",
            Box::new(move |s| {
                s.run_at = Some(to_proto(now + chrono::Duration::hours(2)));
                s.deadline = Some(to_proto(now + chrono::Duration::hours(1)));
            }),
        ),
        (
            "task.retry_policy.max_attempts",
            Box::new(|s| {
                s.retry_policy = Some(pb::RetryPolicy {
                    max_attempts: 99,
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, edit) in cases {
        let mut s = spec("k", b"x");
        edit(&mut s);
        let err = client
            .submit_task(submit(s, KEY_ACME))
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert_eq!(bad_fields(&err), [field], "{}", err.message());
    }
    let err = client
        .submit_task(authed(pb::SubmitTaskRequest { task: None }, KEY_ACME))
        .await
        .expect_err("missing task");
    assert_eq!(bad_fields(&err), ["task"]);
    for n in [0, 1001] {
        let err = client
            .submit_tasks(authed(
                pb::SubmitTasksRequest {
                    tasks: vec![spec("k", b"x"); n],
                },
                KEY_ACME,
            ))
            .await
            .expect_err("batch size");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), ["tasks"], "{n} items");
    }
    // Several problems at once are all reported.
    let bad = pb::TaskSpec {
        priority: 9,
        ..Default::default()
    };
    let err = client
        .submit_task(submit(bad, KEY_ACME))
        .await
        .expect_err("many");
    assert_eq!(
        bad_fields(&err),
        ["task.business_key", "task.task_type", "task.priority"]
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// The BadRequest violations of a status, as (field, description).
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_per_task_timeout_or_retry_delay_beyond_its_limit_is_invalid_argument_naming_both()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.limits.max_task_timeout_ms = 60_000;
    s.limits
        .task_type_max_timeout_ms
        .insert("report.build".into(), 600_000);
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    let with = |ty: &str, timeout_ms: u32| pb::TaskSpec {
        task_type: ty.into(),
        timeout_ms,
        ..spec("k", b"x")
    };

    // Above the gateway's maximum: the field and the limit are named.
    let err = client
        .submit_task(submit(with("email.send", 60_001), KEY_ACME))
        .await
        .expect_err("above limits.max_task_timeout_ms");
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "task.timeout_ms");
    assert!(v[0].1.contains("at most 60000 ms"), "{}", v[0].1);
    assert!(
        err.message().contains("task.timeout_ms"),
        "{}",
        err.message()
    );
    // A type with its own maximum: above it is refused naming the type; at it is accepted.
    let err = client
        .submit_task(submit(with("report.build", 600_001), KEY_ACME))
        .await
        .expect_err("above the type's maximum");
    let v = violations(&err);
    assert_eq!(v[0].0, "task.timeout_ms");
    assert!(
        v[0].1.contains("at most 600000 ms") && v[0].1.contains("report.build"),
        "{}",
        v[0].1
    );
    let ok = client
        .submit_task(submit(with("report.build", 600_000), KEY_ACME))
        .await?
        .into_inner();
    // At the maximum it is accepted and travels in the envelope.
    let ok2 = client
        .submit_task(submit(with("email.send", 60_000), KEY_ACME))
        .await?
        .into_inner();

    // In a batch only the offending item fails, with its own path.
    let r = client
        .submit_tasks(authed(
            pb::SubmitTasksRequest {
                tasks: vec![with("email.send", 300), with("email.send", 3_600_000)],
            },
            KEY_ACME,
        ))
        .await?
        .into_inner()
        .results;
    assert!(accepted(&r[0]).is_some(), "{:?}", r[0]);
    match &r[1].outcome {
        Some(pb::submit_result::Outcome::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            let fields: Vec<&str> = e.violations.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(fields, ["tasks[1].timeout_ms"]);
            assert!(e.violations[0].description.contains("at most 60000 ms"));
        }
        o => panic!("item 1: {o:?}"),
    }

    // Retry delays beyond the supported range name the field and the limit.
    for (policy, field, limit) in [
        (
            pb::RetryPolicy {
                initial_backoff_ms: 3_600_001,
                max_backoff_ms: 86_400_000,
                ..Default::default()
            },
            "task.retry_policy.initial_backoff_ms",
            "at most 3600000 ms (1 h)",
        ),
        (
            pb::RetryPolicy {
                max_backoff_ms: 86_400_001,
                ..Default::default()
            },
            "task.retry_policy.max_backoff_ms",
            "at most 86400000 ms (24 h)",
        ),
    ] {
        let s = pb::TaskSpec {
            retry_policy: Some(policy),
            ..spec("k", b"x")
        };
        let err = client
            .submit_task(submit(s, KEY_ACME))
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, field);
        assert!(v[0].1.contains(limit), "{field}: {}", v[0].1);
    }

    // What was accepted carries its timeout to the processor.
    let topic = env.topics().tasks(dispatch_core::Priority::Default);
    let consumer = env.consumer(std::slice::from_ref(&topic))?;
    let records =
        dispatch_testkit::consume_until(&consumer, Duration::from_secs(20), |r| r.len() >= 3)
            .await?;
    let timeout_of = |id: &str| {
        records
            .iter()
            .map(envelope)
            .find(|e| e.task_id.to_string() == id)
            .map(|e| e.timeout_ms)
    };
    assert_eq!(timeout_of(&ok.task_id), Some(Some(600_000)));
    assert_eq!(timeout_of(&ok2.task_id), Some(Some(60_000)));
    assert_eq!(
        timeout_of(&accepted(&r[0]).expect("accepted").task_id),
        Some(Some(300))
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn rate_limits_answer_resource_exhausted_with_a_retry_hint() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.limits = LimitSettings {
        tenant_rps: 1,
        tenant_burst: 3,
        global_rps: 0,
        global_burst: 0,
        ..LimitSettings::default()
    };
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    let resp = client
        .submit_tasks(authed(
            pb::SubmitTasksRequest {
                tasks: vec![spec("k", b"1"), spec("k", b"2")],
            },
            KEY_ACME,
        ))
        .await?;
    assert_eq!(
        resp.into_inner().results.len(),
        2,
        "a batch spends one token per item"
    );
    client
        .submit_task(submit(spec("k", b"3"), KEY_ACME))
        .await?;
    let err = client
        .submit_task(submit(spec("k", b"4"), KEY_ACME))
        .await
        .expect_err("limited");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let hint = retry_after_ms(&err).expect("retry-after-ms");
    assert!((1..=1_000).contains(&hint), "{hint}");
    // Tenants do not share a bucket.
    client
        .submit_task(submit(spec("k", b"b"), KEY_GLOBEX))
        .await?;
    let m = gw.metrics().await?;
    assert!(m.contains("dispatch_rate_limited_total{scope=\"tenant\"}"));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// Every dispatch service the gateway serves turns SERVING with it: a client (or a k8s gRPC
/// probe) that checks `dispatch.v1.ScheduleService` by name must not read NOT_SERVING from a
/// gateway that serves it.
#[tokio::test]
async fn schedule_service_health_turns_serving_with_the_gateway() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let health = HealthClient::new(gw.channel().await?);
    let status = |service: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
        }
    };
    eventually("the gateway SERVING", Duration::from_secs(20), || async {
        (status("").await? == ServingStatus::Serving as i32).then_some(())
    })
    .await?;
    // Set right after "" by the same call; a few probe periods are plenty.
    let schedules = "dispatch.v1.ScheduleService";
    let r = eventually(
        "ScheduleService SERVING",
        Duration::from_secs(3),
        || async { (status(schedules).await? == ServingStatus::Serving as i32).then_some(()) },
    )
    .await;
    let last = status(schedules).await;
    assert!(
        r.is_ok(),
        "{schedules} reports {last:?} while the gateway serves (SERVING = {})",
        ServingStatus::Serving as i32
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn health_turns_serving_and_reflection_lists_the_service() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let down = Gateway::spawn(kafka_down(&env)).await?;
    let health = HealthClient::new(gw.channel().await?);
    for service in ["", "dispatch.v1.TaskService"] {
        eventually("SERVING", Duration::from_secs(20), || {
            let mut h = health.clone();
            async move {
                let r = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .ok()?;
                (r.into_inner().status == ServingStatus::Serving as i32).then_some(())
            }
        })
        .await?;
    }
    let ready = eventually("ready", Duration::from_secs(20), || async {
        let r = gw.readyz().await.ok()?;
        (r["status"] == "ready").then_some(r)
    })
    .await?;
    assert_eq!(ready["components"]["kafka"]["status"], "up");

    // Without Kafka: probed (the mysql component is up), Kafka degraded, still NOT_SERVING.
    let r = eventually("kafka probed", Duration::from_secs(20), || async {
        let r = down.readyz().await.ok()?;
        (r["components"]["mysql"]["status"] == "up").then_some(r)
    })
    .await?;
    assert_eq!(r["components"]["kafka"]["status"], "degraded", "{r}");
    let mut h = HealthClient::new(down.channel().await?);
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status;
    assert_eq!(st, ServingStatus::NotServing as i32);

    // Reflection, as `grpcurl -plaintext ADDR list` uses it.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(gw.channel().await?);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let msg = stream.message().await?.expect("a reflection response");
    let names: Vec<String> = match msg.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    assert!(
        names.contains(&"dispatch.v1.TaskService".to_string()),
        "{names:?}"
    );

    // Metrics are exported before traffic.
    let m = gw.metrics().await?;
    for series in [
        "dispatch_submit_total{outcome=\"outbox\"}",
        "dispatch_outbox_backlog_records{state=\"dead\"}",
        "dispatch_grpc_requests_total{code=\"OK\",method=\"SubmitTask\",service=\"gateway\"}",
        "dispatch_circuit_breaker_open{breaker=\"redis\",service=\"gateway\"}",
    ] {
        assert!(m.contains(series), "{series} missing");
    }
    down.stop().await?;
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
