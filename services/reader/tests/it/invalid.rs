//! Malformed requests: INVALID_ARGUMENT with field violations; plus health and reflection.

use dispatch_core::TaskId;
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{KEY_ACME, authed, env_reader_and_client, query_health, reader, stop, watch};

pub fn violated_field(s: &tonic::Status) -> String {
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let details = s.get_error_details();
    let bad = details.bad_request().expect("bad request details");
    bad.field_violations[0].field.clone()
}

#[tokio::test]
async fn invalid_inputs_are_rejected_with_the_field_named() {
    let (env, r, mut c) = env_reader_and_client().await;

    let e = c
        .get_task(authed(
            pb::GetTaskRequest {
                task_id: "not-an-id".into(),
                min_version: 0,
            },
            KEY_ACME,
        ))
        .await
        .expect_err("bad id");
    assert_eq!(violated_field(&e), "task_id");

    let e = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: (0..101).map(|_| TaskId::new().to_string()).collect(),
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect_err("too many");
    assert_eq!(violated_field(&e), "task_ids");
    let e = c
        .batch_get_tasks(authed(pb::BatchGetTasksRequest::default(), KEY_ACME))
        .await
        .expect_err("none");
    assert_eq!(violated_field(&e), "task_ids");
    let e = c
        .batch_get_tasks(authed(
            pb::BatchGetTasksRequest {
                task_ids: vec![TaskId::new().to_string(), "x".into()],
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect_err("bad id");
    assert_eq!(violated_field(&e), "task_ids[1]");

    let e = c
        .list_tasks(authed(
            pb::ListTasksRequest {
                page_token: "garbage!".into(),
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect_err("bad token");
    assert_eq!(violated_field(&e), "page_token");
    let e = c
        .list_tasks(authed(
            pb::ListTasksRequest {
                page_size: 501,
                ..Default::default()
            },
            KEY_ACME,
        ))
        .await
        .expect_err("page too large");
    assert_eq!(violated_field(&e), "page_size");

    let e = watch(&mut c, "", 0, KEY_ACME).await.expect_err("bad id");
    assert_eq!(violated_field(&e), "task_id");
    stop(r, env).await;
}

#[tokio::test]
async fn health_reflection_and_metrics_are_served() {
    let env = TestEnv::new().await.expect("env");
    let r = reader(&env).await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let status = dispatch_testkit::eventually("serving", std::time::Duration::from_secs(5), || {
        let addr = r.addr;
        async move { query_health(addr).await.filter(|s| *s == serving) }
    })
    .await
    .expect("health");
    assert_eq!(status, serving);

    let body = http_get(r.admin, "/metrics").await;
    for name in [
        "dispatch_cache_requests_total{result=\"negative_hit\",tier=\"l2\"}",
        "dispatch_store_queries_total{query=\"batch_get\"}",
        "dispatch_store_queries_total{query=\"workflow\"}",
        "dispatch_events_applied_total{result=\"stale\"}",
        "dispatch_circuit_breaker_open{breaker=\"redis\",service=\"reader\"}",
        "dispatch_watch_streams",
        "dispatch_grpc_requests_total{code=\"OK\",method=\"WatchTask\",service=\"reader\"}",
        "dispatch_grpc_requests_total{code=\"OK\",method=\"GetWorkflow\",service=\"reader\"}",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }
    let ready = http_get(r.admin, "/readyz").await;
    assert!(ready.contains("\"mysql\""), "{ready}");
    stop(r, env).await;
}

/// A minimal HTTP/1.0 GET (the admin server is plain HTTP).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
